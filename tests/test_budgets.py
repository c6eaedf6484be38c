"""Memory budgets: qcompile.Target(cpu, flash=..., ram=...) and part presets; a model that does not
fit fails in compile() (before anything can be written) with required vs available bytes and the
largest layers/tensors; the estimate is an upper bound on what arm-none-eabi-gcc really emits."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.backends.host_build import write_sources
from qcompile.errors import ConfigError, MemoryBudgetError
from qcompile.target import PRESETS, memory_estimate
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


@pytest.mark.skipif(shutil.which("arm-none-eabi-size") is None, reason="arm-none-eabi-gcc/binutils not installed")
@pytest.mark.parametrize("zoo", ["plain_cnn", "lut"])
def test_flash_estimate_bounds_the_compiled_objects(zoo, tmp_path):
    """text + data of every object file (all kernels, nothing garbage-collected) <= the estimate."""
    model, shape = build(zoo)
    x = torch.randn(16, *shape)
    art = qcompile.compile(model, (x[:1],), calib=x, target="nrf52840", progress=False)
    write_sources(art.c_sources(), tmp_path)
    objs = []
    for src in sorted(p.name for p in tmp_path.glob("*.c")):
        obj = src[:-2] + ".o"
        subprocess.run(["arm-none-eabi-gcc", "-mthumb", "-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                        "-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-I.", "-c", src, "-o", obj],
                       cwd=tmp_path, check=True, timeout=300)
        objs.append(obj)
    sizes = subprocess.run(["arm-none-eabi-size", *objs], cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.splitlines()[1:]
    flash = sum(int(line.split()[0]) + int(line.split()[1]) for line in sizes)
    ram = sum(int(line.split()[1]) + int(line.split()[2]) for line in sizes)
    est = memory_estimate(art.program, art.plan, "cortex-m4")
    assert flash <= est["flash"]["total"], (flash, est["flash"])
    assert ram <= est["ram"]["total"], (ram, est["ram"])
