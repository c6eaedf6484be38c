"""Static and dynamic checks of the generated C for the test zoo (int8, and W4 / W2 / PWLQ low-bit
variants): no warning under -Wall -Wextra -Wconversion -Wshadow (and the rest of
STRICT_WARNING_CFLAGS) with the host gcc and arm-none-eabi-gcc (Cortex-M4 with DSP, Cortex-M0+
plain C), nothing from cppcheck, and a host run under AddressSanitizer + UBSan that matches the
interpreter. The kernel library is the same for every model, so it is checked (and, for the
sanitizer runs, compiled) once."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import qcompile
from qcompile.backends.c_emitter import RUNTIME_DIR, RUNTIME_FILES
from qcompile.backends.host_build import HOST_CFLAGS, STRICT_WARNING_CFLAGS, write_sources
from qcompile.backends.static_check import CPPCHECK_SUPPRESSIONS, cppcheck_available, run_cppcheck
from zoo_models import ZOO, build

torch.set_num_threads(1)

STRICT = (*HOST_CFLAGS, *STRICT_WARNING_CFLAGS)
ARM = {
    "cortex-m4": ("-mthumb", "-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
    "cortex-m0plus": ("-mthumb", "-mcpu=cortex-m0plus"),
}
VARIANTS = {**{name: (name, {}) for name in ZOO},
            "depthwise_separable_w4": ("depthwise_separable", {"weight_bits": 4}),
            "residual_w2": ("residual", {"weight_bits": 2}),
            "conv1d_pwlq": ("conv1d", {"weight_bits": 4, "weight_quantizer": "pwlq", "pwlq_layers": "all"})}
needs_cppcheck = pytest.mark.skipif(not cppcheck_available(), reason="cppcheck not installed (Debian package cppcheck)")


def _compilers() -> list[tuple[str, tuple[str, ...]]]:
    out = [("cc", STRICT)] if shutil.which("cc") else []
    if shutil.which("arm-none-eabi-gcc"):
        out += [("arm-none-eabi-gcc", (*flags, *STRICT)) for flags in ARM.values()]
    return out


def _compile_clean(directory: Path, source: str) -> None:
    compilers = _compilers()
    if not compilers:
        pytest.skip("no C compiler")
    for cc, flags in compilers:
        r = subprocess.run([cc, *flags, "-I.", "-c", source, "-o", "/dev/null"], cwd=directory, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0 and not r.stderr.strip(), f"{cc} {' '.join(flags)} {source}:\n{r.stderr}"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def model_dir(request, tmp_path_factory) -> Path:
    zoo, cfg = VARIANTS[request.param]
    model, shape = build(zoo)
    calib = torch.randn(24, *shape, generator=torch.Generator().manual_seed(0))
    art = qcompile.compile(model, (calib[:1],), calib=calib, config=qcompile.QuantConfig(**cfg), name=zoo,
                           progress=False)
    d = tmp_path_factory.mktemp(request.param)
    write_sources(art.c_sources(), d)
    ARTIFACTS[d] = art
    return d


ARTIFACTS: dict[Path, qcompile.Artifact] = {}


@pytest.fixture(scope="module")
def sanitized_runner(tmp_path_factory):
    from qcompile.backends.host_build import SANITIZE_CFLAGS
    from test_fuzz_graphs import HostRunner

    try:
        return HostRunner(tmp_path_factory.mktemp("asan"), (*STRICT, *SANITIZE_CFLAGS))
    except subprocess.CalledProcessError:
        pytest.skip("the host compiler cannot build with -fsanitize=address,undefined")


def _model_source(d: Path) -> str:
    (src,) = [p.name for p in d.glob("*.c") if not p.name.startswith("qc_")]
    return src


def test_generated_model_compiles_without_warnings(model_dir):
    _compile_clean(model_dir, _model_source(model_dir))


@needs_cppcheck
def test_generated_model_is_cppcheck_clean(model_dir):
    assert run_cppcheck(model_dir, [_model_source(model_dir)]) == []


def test_runtime_compiles_without_warnings(tmp_path):
    write_sources({f: (RUNTIME_DIR / f).read_text() for f in RUNTIME_FILES}, tmp_path)
    for f in RUNTIME_FILES:
        if f.endswith(".c"):
            _compile_clean(tmp_path, f)


@needs_cppcheck
def test_runtime_is_cppcheck_clean(tmp_path):
    """Every preprocessor configuration (plain C and DSP paths) of the kernel library."""
    write_sources({f: (RUNTIME_DIR / f).read_text() for f in RUNTIME_FILES}, tmp_path)
    assert run_cppcheck(tmp_path) == []


@needs_cppcheck
def test_cppcheck_finds_real_problems(tmp_path):
    """The check is live: an out-of-bounds write is reported,
    and the two suppressions are documented."""
    (tmp_path / "bad.c").write_text("int f(int i);\nint f(int i)\n{\n    int a[4];\n    a[4] = i;\n    return a[0];\n}\n")
    found = run_cppcheck(tmp_path)
    assert any("arrayIndexOutOfBounds" in line for line in found), found
    assert all(reason for reason in CPPCHECK_SUPPRESSIONS.values())


def test_generated_model_runs_clean_under_sanitizers(model_dir, sanitized_runner):
    art = ARTIFACTS[model_dir]
    rng = np.random.default_rng(0)
    xs = np.concatenate([art.sample_input, rng.integers(-128, 128, (5, *art.program.input.shape), dtype=np.int8),
                         np.full((1, *art.program.input.shape), 127, np.int8),
                         np.full((1, *art.program.input.shape), -128, np.int8)])
    np.testing.assert_array_equal(sanitized_runner.run(art, xs), art.run_int(xs))
