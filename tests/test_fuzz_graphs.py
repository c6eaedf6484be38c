"""Fuzzing the whole compiler: random traceable models -> compile -> C == interpreter, bit for bit.

Extends ``test_property_graphs.py`` (int8 only, groups 1 or depthwise) with what it leaves out:
weight bits 2..8 (uniform, and PWLQ codebooks 3..8), general groups, dilation, strides larger
than kernels, 1x1 maps (global pool then 1x1 convs), Conv1d models, channel counts that are not
multiples of 4, Linear heads, LUT and PReLU activations.

``QC_FUZZ_EXAMPLES`` sets the number of examples (default 100, about 45 s on one core);
``benchmarks/fuzz.py`` runs the release profile (>= 2,000) and records it. The kernel library is
compiled once per session; each example compiles only its ``<name>.c`` and the driver.
A sample of examples also runs on QEMU Cortex-M4 (``test_fuzz_qemu_cortex_m4``).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.backends.c_emitter import RUNTIME_FILES, runtime_sources
from qcompile.backends.host_build import HOST_CFLAGS, host_driver_source, run_host_runner, write_sources

torch.set_num_threads(1)

EXAMPLES = int(os.environ.get("QC_FUZZ_EXAMPLES", "100"))
QEMU_EXAMPLES = int(os.environ.get("QC_FUZZ_QEMU_EXAMPLES", "4"))
ACTS = ("relu", "relu6", "none", "hardswish", "leaky", "tanh", "prelu")


@dataclass
class Spec:
    """A random model: rank (1 or 2), input channels and size, a plan of blocks, a head, a config."""

    rank: int
    c: int
    size: int
    plan: list = field(default_factory=list)
    head: tuple = ("mean",)
    weight_bits: int = 8
    quantizer: str = "uniform"
    seed: int = 0


class FuzzNet(nn.Module):
    def __init__(self, s: Spec):
        super().__init__()
        self.spec = s
        conv = nn.Conv1d if s.rank == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if s.rank == 1 else nn.BatchNorm2d
        self.layers = nn.ModuleList()
        self.acts = nn.ModuleList()
        c = s.c
        for kind, p in s.plan:
            if kind == "conv":
                mods = [conv(c, p["cout"], p["k"], stride=p["stride"], padding=p["pad"], dilation=p["dil"],
                             groups=p["groups"], bias=p["bias"])]
                if p["bn"]:
                    mods.append(bn(p["cout"]))
                self.layers.append(nn.Sequential(*mods))
                self.acts.append(nn.PReLU(p["cout"]) if p["act"] == "prelu" else nn.Identity())
                c = p["cout"]
            elif kind == "residual":
                self.layers.append(conv(c, c, 3, padding=1))
                self.acts.append(nn.Identity())
            elif kind == "cat":
                self.layers.append(conv(c, p["cout"], 1))
                self.acts.append(nn.Identity())
                c += p["cout"]
            elif kind == "gap_conv":
                self.layers.append(conv(c, p["cout"], 1))
                self.acts.append(nn.Identity())
                c = p["cout"]
            else:
                self.layers.append(nn.Identity())
                self.acts.append(nn.Identity())
        self.head = nn.Linear(c * s.head[1], s.head[2]) if s.head[0] == "linear" else nn.Identity()

    def forward(self, x):
        one_d = self.spec.rank == 1
        for (kind, p), layer, act in zip(self.spec.plan, self.layers, self.acts):
            if kind == "conv":
                x = layer(x)
                x = {"relu": F.relu, "relu6": F.relu6, "none": lambda v: v, "hardswish": F.hardswish,
                     "leaky": lambda v: F.leaky_relu(v, 0.1), "tanh": torch.tanh, "prelu": act}[p["act"]](x)
            elif kind == "residual":
                x = F.relu(x + layer(x))
            elif kind == "cat":
                x = torch.cat([x, layer(x)], dim=1)
            elif kind == "gap_conv":
                x = layer(F.adaptive_avg_pool1d(x, 1) if one_d else F.adaptive_avg_pool2d(x, 1))
            elif kind == "maxpool":
                x = (F.max_pool1d if one_d else F.max_pool2d)(x, p["k"], stride=p["stride"])
            elif kind == "avgpool":
                x = (F.avg_pool1d if one_d else F.avg_pool2d)(x, p["k"], stride=p["stride"])
        if self.spec.head[0] == "linear":
            return self.head(torch.flatten(x, 1))
        return x.mean(-1) if one_d else x.mean([2, 3])


def _out(size: int, k: int, stride: int, pad: int, dil: int = 1) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


@st.composite
def fuzz_spec(draw) -> Spec:
    rank = draw(st.sampled_from([1, 2, 2]))
    c = c0 = draw(st.integers(1, 7))
    size = size0 = draw(st.integers(1, 14 if rank == 2 else 40))
    plan = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "conv", "residual", "cat", "gap_conv", "maxpool", "avgpool"]))
        if kind == "conv":
            dil = draw(st.sampled_from([1, 1, 2]))
            pad_drawn, k = draw(st.integers(0, 2)), draw(st.integers(1, 5))
            while k > 1 and dil * (k - 1) + 1 > size + 2 * min(pad_drawn, k // 2):
                k -= 1
            pad = min(pad_drawn, k // 2)
            groups = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
            cout = groups * draw(st.integers(1, max(1, 13 // groups)))
            p = dict(k=k, stride=draw(st.integers(1, 4)), pad=pad, dil=dil,
                     groups=groups, cout=cout, bias=draw(st.booleans()), bn=draw(st.booleans()),
                     act=draw(st.sampled_from(ACTS)))
            size, c = _out(size, k, p["stride"], p["pad"], dil), cout
        elif kind in ("maxpool", "avgpool"):
            k = draw(st.integers(1, min(3, size)))
            p = dict(k=k, stride=draw(st.integers(1, 4)))
            size = _out(size, k, p["stride"], 0)
        elif kind == "cat":
            p = dict(cout=draw(st.integers(1, 6)))
            c += p["cout"]
        elif kind == "gap_conv":
            p = dict(cout=draw(st.integers(1, 11)))
            size, c = 1, p["cout"]
        else:
            p = {}
        plan.append((kind, p))
    flat = size if rank == 1 else size * size
    head = ("linear", flat, draw(st.integers(1, 11))) if draw(st.booleans()) else ("mean",)
    bits = draw(st.sampled_from([8, 4, 2, 3, 5, 6, 7]))
    quantizer = draw(st.sampled_from(["uniform", "pwlq"])) if bits >= 3 else "uniform"
    return Spec(rank, c=c0, size=size0, plan=plan, head=head, weight_bits=bits, quantizer=quantizer,
                seed=draw(st.integers(0, 10_000)))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and PReLU slopes (both start at trivial values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.6 - 0.2)
    return model.eval()


def build_model(s: Spec) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(s.seed)
    shape = (s.c, s.size) if s.rank == 1 else (s.c, s.size, s.size)
    return randomize(FuzzNet(s), s.seed), shape


class HostRunner:
    """Builds each model's ``<name>.c`` against kernel objects compiled once (``-O2``, strict warnings)."""

    def __init__(self, directory: Path, cflags: tuple[str, ...] = HOST_CFLAGS):
        self.dir, self.cflags = directory, cflags
        write_sources(runtime_sources(), directory)
        self.objects = []
        for f in RUNTIME_FILES:
            if f.endswith(".c"):
                obj = f[:-2] + ".o"
                subprocess.run(["cc", *cflags, "-I.", "-c", f, "-o", obj], cwd=directory, check=True, timeout=300)
                self.objects.append(obj)

    def run(self, art: qcompile.Artifact, xs: np.ndarray) -> np.ndarray:
        return self.run_program(art.program, art.plan, art.name, xs)

    def run_program(self, program, plan, name: str, xs: np.ndarray) -> np.ndarray:
        from qcompile.backends.c_emitter import emit_c

        files = {k: v for k, v in emit_c(program, plan, name).items()
                 if k not in RUNTIME_FILES and not k.endswith(".mk")}
        files["main.c"] = host_driver_source(name)
        write_sources(files, self.dir)
        exe = f"{name}_host"
        r = subprocess.run(["cc", *self.cflags, "-I.", f"{name}.c", "main.c", *self.objects, "-o", exe],
                           cwd=self.dir, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return run_host_runner(self.dir / exe, program, xs)


def compile_spec(s: Spec) -> tuple[qcompile.Artifact, np.ndarray]:
    """Compile ``s`` and return the artifact and int8 test inputs (calibration-like, wide, random int8)."""
    model, shape = build_model(s)
    g = torch.Generator().manual_seed(s.seed)
    calib = torch.randn(16, *shape, generator=g)
    cfg = qcompile.QuantConfig(weight_bits=s.weight_bits, weight_quantizer=s.quantizer, pwlq_layers="all")
    art = qcompile.compile(model, (calib[:1],), calib=calib, config=cfg, name="fuzz", progress=False)
    xs = np.concatenate([art.quantize_input(torch.randn(4, *shape, generator=g) * 2),
                         np.random.default_rng(s.seed).integers(-128, 128, (3, *shape), dtype=np.int8)])
    return art, xs


def check_spec(s: Spec, runner: HostRunner) -> None:
    art, xs = compile_spec(s)
    expected = art.run_int(xs)
    got = runner.run(art, xs)
    assert got.shape == expected.shape and np.array_equal(got, expected), \
        f"C != interpreter on {int((got != expected).sum())} elements for {s}"


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> HostRunner:
    return HostRunner(tmp_path_factory.mktemp("fuzz_host"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(fuzz_spec())
def test_fuzz_c_host_equals_interpreter(runner, spec):
    check_spec(spec, runner)


@pytest.mark.qemu
@settings(max_examples=max(QEMU_EXAMPLES, 1), deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(fuzz_spec())
def test_fuzz_qemu_cortex_m4(spec):
    from qcompile.backends.qemu import toolchain_available

    if not toolchain_available() or QEMU_EXAMPLES == 0:
        pytest.skip("arm-none-eabi-gcc / qemu-system-arm not installed, or QC_FUZZ_QEMU_EXAMPLES=0")
    art, xs = compile_spec(spec)
    art.verify(xs, on="qemu", cpu="cortex-m4")
