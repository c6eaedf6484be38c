"""Memory budgets: qcompile.Target(cpu, flash=..., ram=...) and part presets; a model that does not
fit fails in compile() (before anything can be written) with required vs available bytes and the
largest layers/tensors; the estimate is an upper bound on what arm-none-eabi-gcc really emits."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.backends.c_emitter import emit_c
from qcompile.backends.host_build import compile_objects
from qcompile.backends.memory_plan import plan_memory
from qcompile.errors import ConfigError, MemoryBudgetError
from qcompile.target import PRESETS, memory_estimate, threshold_code_bytes
from zoo_models import build

torch.set_num_threads(1)


def _big_weights() -> tuple[nn.Module, torch.Tensor]:
    """~300 KB of dense weights, small activations."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 384), nn.ReLU(), nn.Linear(384, 10)).eval(), \
        torch.randn(16, 3, 16, 16)


def _big_activations() -> tuple[nn.Module, torch.Tensor]:
    """A few hundred weights, 64 KB activation tensors."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval(), \
        torch.randn(8, 1, 64, 64)


def test_presets_are_real_parts():
    kb = 1024
    assert PRESETS["stm32f446re"] == qcompile.Target("cortex-m4", flash=512 * kb, ram=128 * kb, part="STM32F446RE")
    assert (PRESETS["nrf52840"].flash, PRESETS["nrf52840"].ram) == (1024 * kb, 256 * kb)
    assert (PRESETS["stm32l4r5zi"].flash, PRESETS["stm32l4r5zi"].ram) == (2048 * kb, 640 * kb)
    assert PRESETS["rp2040"].cpu == "cortex-m0plus" and PRESETS["rp2040"].ram == 264 * kb
    assert qcompile.Target.preset("STM32F446RE") is PRESETS["stm32f446re"]


@pytest.mark.parametrize("kwargs, match", [
    ({"cpu": "cortex-a53"}, "cpu"),
    ({"cpu": "cortex-m4", "flash": -1}, "flash"),
    ({"cpu": "cortex-m4", "ram": 1.5}, "ram"),
])
def test_target_validates(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        qcompile.Target(**kwargs)


def test_unknown_target_string_lists_the_choices():
    with pytest.raises(ConfigError, match="cortex-m.*stm32f446re.*Target"):
        qcompile.compile(nn.Linear(4, 2), (torch.randn(1, 4),), calib=torch.randn(4, 4), target="stm32")


def test_flash_overflow_names_bytes_and_largest_layers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, x = _big_weights()
    with pytest.raises(MemoryBudgetError) as e:
        qcompile.compile(model, (x[:1],), calib=x, target="atsamd21g18", progress=False)
    msg = str(e.value)
    assert "does not fit ATSAMD21G18 (cortex-m0plus)" in msg and "available 262,144 B" in msg
    assert "flash: needs" in msg and "RAM" not in msg
    assert "largest layers: _1 (Dense)" in msg and "weight_bits=4" in msg
    est = e.value.estimate
    assert est["flash"]["total"] > 262_144 >= est["ram"]["total"]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_ram_overflow_names_bytes_and_largest_tensors():
    model, x = _big_activations()
    with pytest.raises(MemoryBudgetError) as e:
        qcompile.compile(model, (x[:1],), calib=x, target=qcompile.Target("cortex-m4", ram=64 * 1024), progress=False)
    msg = str(e.value)
    assert "RAM: needs" in msg and "available 65,536 B" in msg and "flash" not in msg
    assert "largest tensors: _1 (from Conv2D) 65,536 B, _2 (from Conv2D) 16,384 B" in msg


def test_fitting_model_records_its_budget(tmp_path):
    model, x = _big_weights()
    art = qcompile.compile(model, (x[:1],), calib=x, target="stm32f446re", progress=False)
    assert art.budget["flash"]["total"] <= 512 * 1024 and art.budget["target"]["part"] == "STM32F446RE"
    data = json.loads((art.save(tmp_path / "b") / "report.json").read_text())
    assert data["target"]["cpu"] == "cortex-m4" and data["budget"]["ram"]["total"] == art.budget["ram"]["total"]
    assert "memory budget (STM32F446RE): flash" in (tmp_path / "b" / "report.md").read_text()


def test_family_string_targets_are_unchanged():
    model, x = _big_weights()
    for t in ("cortex-m", "generic"):
        art = qcompile.compile(model, (x[:1],), calib=x, target=t, progress=False)
        assert art.target == t and art.budget is None and art.report_data()["target"] == t


CPU_FLAGS = {"cortex-m4": ("-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
             "cortex-m3": ("-mcpu=cortex-m3",)}
THRESHOLD_ROUTINE = re.compile(r"qc_(threshold_store\w*|w[48]_pair_thr\w+)")


def _named_threshold_routines(src: str) -> set[str]:
    """The threshold stores and fused pixel-pair routines the emitted model source names."""
    named = set(re.findall(r"\b(qc_threshold_store\w+)", src))
    return named | {f"qc_{w}_pair_thr{b}_{n}" for w, b, n in re.findall(r"QC_THR_PAIR\((w[48]), (\d+), (\d+)\)", src)}


def _compiled_bytes(sources: dict[str, str], name: str, cpu: str, workdir) -> tuple[int, int, dict[str, int]]:
    """flash (text + data) and RAM (data + bss) of every object file -- all kernels, nothing
    garbage-collected, except the threshold routines the model does not name (the estimate counts
    those per model) -- and the sizes of the ones it names."""
    compile_objects(sources, cc="arm-none-eabi-gcc", workdir=workdir,
                    cflags=("-mthumb", *CPU_FLAGS[cpu], "-std=c99", "-O2", "-ffunction-sections", "-fdata-sections"))
    objs = [f[:-2] + ".o" for f in sorted(sources) if f.endswith(".c")]
    sizes = subprocess.run(["arm-none-eabi-size", *objs], cwd=workdir, capture_output=True, text=True,
                           check=True).stdout.splitlines()[1:]
    flash = sum(int(line.split()[0]) + int(line.split()[1]) for line in sizes)
    ram = sum(int(line.split()[1]) + int(line.split()[2]) for line in sizes)
    named_src = _named_threshold_routines(sources[f"{name}.c"])
    symbols = subprocess.run(["arm-none-eabi-nm", "-S", *objs], cwd=workdir, capture_output=True, text=True,
                             check=True).stdout
    named = {}
    for size, sym in re.findall(r"^[0-9a-f]+ ([0-9a-f]+) [Tt] (\S+)$", symbols, flags=re.M):
        if THRESHOLD_ROUTINE.fullmatch(sym):
            if sym in named_src:
                named[sym] = int(size, 16)
            else:
                flash -= int(size, 16)
    return flash, ram, named


@pytest.mark.skipif(shutil.which("arm-none-eabi-size") is None, reason="arm-none-eabi-gcc/binutils not installed")
@pytest.mark.parametrize("zoo", ["plain_cnn", "lut"])
def test_flash_estimate_bounds_the_compiled_objects(zoo, tmp_path):
    """text + data of every object file (all kernels, nothing garbage-collected) <= the estimate."""
    model, shape = build(zoo)
    x = torch.randn(16, *shape)
    art = qcompile.compile(model, (x[:1],), calib=x, target="nrf52840", progress=False)
    flash, ram, named = _compiled_bytes(art.c_sources(), art.name, "cortex-m4", tmp_path)
    est = memory_estimate(art.program, art.plan, "cortex-m4")
    assert not named and threshold_code_bytes(art.program, "cortex-m4") == 0
    assert flash <= est["flash"]["total"], (flash, est["flash"])
    assert ram <= est["ram"]["total"], (ram, est["ram"])


@pytest.mark.skipif(shutil.which("arm-none-eabi-size") is None, reason="arm-none-eabi-gcc/binutils not installed")
@pytest.mark.parametrize("cpu", sorted(CPU_FLAGS))
@pytest.mark.parametrize("program_name", ["gemm", "depthwise", "pairs"])
def test_flash_estimate_counts_the_threshold_routines_a_model_names(program_name, cpu, tmp_path):
    """Low-bit programs with threshold layers of every kind (tests/test_lowbit_c.py): the per-model
    term bounds the threshold routines the emitted source names, and the whole estimate the objects."""
    from test_lowbit_c import PROGRAMS

    program = PROGRAMS[program_name]()
    plan = plan_memory(program)
    flash, ram, named = _compiled_bytes(emit_c(program, plan, "m"), "m", cpu, tmp_path)
    assert named and any("_pair_thr" in n for n in named) == (cpu == "cortex-m4" and program_name == "pairs")
    assert sum(named.values()) <= threshold_code_bytes(program, cpu), named
    est = memory_estimate(program, plan, cpu)
    assert flash <= est["flash"]["total"], (flash, est["flash"])
    assert ram <= est["ram"]["total"], (ram, est["ram"])
