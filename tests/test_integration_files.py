"""Integration files: `qcompile init-example` writes a folder whose main.c builds and runs with the
host cc (Makefile and CMake, via the qcompile_model.cmake INTERFACE library) and reproduces the
interpreter's output bit for bit; it builds with arm-none-eabi-gcc too when that is installed."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from qcompile.cli import main

torch.set_num_threads(1)


def _sh(cmd: list[str], cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    d = tmp_path_factory.mktemp("ex") / "demo_fw"
    assert main(["init-example", str(d), "--name", "demo", "--json"]) == 0
    return d


def test_example_folder_contents(example):
    files = {p.relative_to(example).as_posix() for p in example.rglob("*") if p.is_file()}
    assert {"main.c", "example_data.h", "Makefile", "CMakeLists.txt", "arm-none-eabi.cmake", "README.md",
            "model/demo.c", "model/demo.h", "model/demo.mk", "model/qcompile_model.cmake",
            "model/report.html"} <= files
    cmake = (example / "model" / "qcompile_model.cmake").read_text()
    assert "add_library(qcompile_demo INTERFACE)" in cmake and "qcompile::demo ALIAS" in cmake
    for src in (example / "model").glob("*.c"):
        assert f"${{QC_DEMO_DIR}}/{src.name}" in cmake
    main_c = (example / "main.c").read_text()
    for macro in ("DEMO_INPUT_SIZE", "DEMO_OUTPUT_SIZE", "DEMO_INPUT_SCALE", "DEMO_INPUT_ZERO_POINT",
                  "DEMO_OUTPUT_SCALE", "DEMO_OUTPUT_ZERO_POINT", "demo_run("):
        assert macro in main_c
    # init-example replaces its own folder but refuses anything else
    assert main(["init-example", str(example), "--name", "demo"]) == 0
    other = example.parent / "not_ours"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["init-example", str(other)]) == 2 and (other / "keep.txt").is_file()


def test_make_host_build_is_bit_exact_and_detects_a_mismatch(example, tmp_path):
    r = _sh(["make", "-s"], example)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 of 10 outputs differ from the interpreter" in r.stdout
    # the check can fail: corrupt one expected value and the app exits 1
    broken = tmp_path / "broken"
    shutil.copytree(example, broken)
    h = broken / "example_data.h"
    text = h.read_text()
    head, tail = text.split("qc_example_output[DEMO_OUTPUT_SIZE] = {\n    ", 1)
    first, rest = tail.split(",", 1)
    h.write_text(head + "qc_example_output[DEMO_OUTPUT_SIZE] = {\n    " + str((int(first) + 1 + 128) % 256 - 128)
                 + "," + rest)
    r = _sh(["make", "-s", "-B"], broken)
    assert r.returncode != 0 and "1 of 10 outputs differ" in r.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed (Debian: apt-get install cmake)")
def test_cmake_host_build_through_the_interface_library(example):
    r = _sh(["cmake", "-S", ".", "-B", "build-host", "-DQC_EXAMPLE_HOSTED=ON"], example)
    assert r.returncode == 0, r.stderr
    r = _sh(["cmake", "--build", "build-host"], example)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _sh(["./build-host/app"], example)
    assert r.returncode == 0 and "0 of 10 outputs differ" in r.stdout


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
def test_arm_builds(example):
    r = _sh(["make", "-s", "arm"], example)
    assert r.returncode == 0, r.stdout + r.stderr
    text = int(r.stdout.split("\n")[1].split()[0])
    assert text > 1000  # model + kernels + main linked
    if shutil.which("cmake"):
        r = _sh(["cmake", "-S", ".", "-B", "build-arm", "-DCMAKE_TOOLCHAIN_FILE=arm-none-eabi.cmake"], example)
        assert r.returncode == 0, r.stderr
        r = _sh(["cmake", "--build", "build-arm"], example)
        assert r.returncode == 0, r.stdout + r.stderr
        elf = (example / "build-arm" / "app").read_bytes()
        assert elf[:4] == b"\x7fELF" and elf[18] == 40  # e_machine EM_ARM


def test_init_example_from_a_factory(tmp_path, capsys):
    factory = tmp_path / "net.py"
    factory.write_text("import torch, torch.nn as nn\n"
                       "class TwoHeads(nn.Module):  # a tuple return: main.c reads the first output\n"
                       "    def __init__(self):\n"
                       "        super().__init__()\n"
                       "        self.body = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten())\n"
                       "        self.cls, self.reg = nn.Linear(4 * 14, 6), nn.Linear(4 * 14, 2)\n"
                       "    def forward(self, x):\n"
                       "        h = self.body(x)\n"
                       "        return self.cls(h), self.reg(h)\n"
                       "def make():\n"
                       "    torch.manual_seed(0)\n"
                       "    c = torch.randn(32, 2, 16)\n"
                       "    return TwoHeads().eval(), (c[:1],), c\n")
    capsys.readouterr()
    assert main(["init-example", str(tmp_path / "fw"), f"{factory}:make", "--name", "kws", "--json"]) == 0
    assert "model/kws.c" in json.loads(capsys.readouterr().out)["files"]
    r = _sh(["make", "-s"], tmp_path / "fw")
    assert r.returncode == 0 and "0 of 8 outputs differ" in r.stdout, r.stdout + r.stderr
