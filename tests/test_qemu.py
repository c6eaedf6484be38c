"""On-target bit-exactness: generated C built with arm-none-eabi-gcc runs on QEMU MPS2 boards
(Cortex-M3 plain C, M4, M7, M33) and equals the interpreter bit for bit."""
from __future__ import annotations

import pytest
import torch

import qcompile
from qcompile.backends.qemu import CPUS, toolchain_available
from zoo_models import ZOO, build

pytestmark = [pytest.mark.qemu,
              pytest.mark.skipif(not toolchain_available(), reason="needs arm-none-eabi-gcc and qemu-system-arm")]


@pytest.fixture(scope="module", params=sorted(ZOO))
def compiled(request):
    model, shape = build(request.param)
    torch.manual_seed(11)
    calib = torch.randn(64, *shape)
    return shape, qcompile.compile(model, (calib[:1],), calib=calib, name=request.param, progress=False)


def test_cortex_m4_bit_exact_with_instruction_counts(compiled):
    shape, art = compiled
    torch.manual_seed(12)
    xs = torch.cat([torch.randn(6, *shape), 4 * torch.randn(2, *shape)])
    art.verify(xs, on="qemu", cpu="cortex-m4")
    run = art.last_qemu_run
    assert len(run.instructions) == 8 and min(run.instructions) > 0
    assert run.text_bytes > 0 and run.bss_bytes >= art.arena_size


@pytest.mark.parametrize("cpu", ["cortex-m0plus", "cortex-m7", "cortex-m33"])
def test_other_cores_bit_exact(cpu):
    model, shape = build("residual")
    calib = torch.randn(32, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, name="residual", progress=False)
    art.verify(torch.randn(4, *shape), on="qemu", cpu=cpu)


def test_instruction_counts_are_deterministic():
    model, shape = build("squeeze_excite")
    calib = torch.randn(32, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, name="se", progress=False)
    x = calib[:1].repeat(3, *([1] * len(shape)))
    art.verify(x, on="qemu", cpu="cortex-m4")
    first = art.last_qemu_run.instructions
    art.verify(x, on="qemu", cpu="cortex-m4")
    assert art.last_qemu_run.instructions == first and len(set(first)) == 1


def test_unknown_cpu_is_config_error():
    model, shape = build("mlp")
    calib = torch.randn(8, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, progress=False)
    with pytest.raises(qcompile.ConfigError, match="cortex-m55"):
        art.verify(calib[:1], on="qemu", cpu="cortex-m55")
    assert "cortex-m4" in CPUS


def test_saved_harness_builds_and_runs_with_make(tmp_path):
    import subprocess

    import numpy as np

    model, shape = build("conv1d")
    calib = torch.randn(32, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, name="kws", progress=False)
    art.save(tmp_path, harness=True, cpu="cortex-m33")
    xq = art.quantize_input(calib[:5])
    (tmp_path / "in.bin").write_bytes(xq.tobytes())
    r = subprocess.run(["make", "-s", "icount", "IN=in.bin", "OUT=out.bin"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.int8).reshape(5, *art.program.output.shape)
    np.testing.assert_array_equal(got, art.run_int(xq))
    assert r.stdout.count("icount region") == 5


def test_measure_puts_instruction_counts_and_footprint_in_the_report(tmp_path):
    import json

    model, shape = build("residual")
    calib = torch.randn(32, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, name="res", progress=False)
    mcu = art.measure(cpu="cortex-m4")
    per_op = mcu["instructions_per_op"]
    kernels = {op.name for op in art.program.ops if type(op).__name__ != "Reshape"}
    assert kernels <= set(per_op) and all(v > 0 for v in per_op.values())
    # the kernels are the whole inference but for the run() call overhead
    assert 0 < mcu["instructions_per_inference"] - sum(per_op.values()) < 0.02 * mcu["instructions_per_inference"]
    assert mcu["static_ram_bytes"] >= art.arena_size and mcu["flash_bytes"] > 0
    text = art.report()
    assert "instr (cortex-m4)" in text and f"{mcu['instructions_per_inference']:,} instructions per inference" in text
    art.save(tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["mcu"]["instructions_per_op"] == per_op
    assert art.measure(cpu="cortex-m4")["instructions_per_op"] == per_op  # deterministic
