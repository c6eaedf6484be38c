"""Build generated C for Cortex-M with arm-none-eabi-gcc and run it on QEMU's MPS2 boards.

The harness (``backends/harness``: vector table, semihosting I/O, linker script, a main that
runs every input between instruction-count markers) is the recipe of
``shared/mcu-qemu/README.md``, carried by the project. Instruction counts come from a small
QEMU TCG plugin (``icount_plugin.c``) built with the host compiler on first use; they are
exact and deterministic (instructions, not cycles).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.backends import ir
from qcompile.backends.memory_plan import MemoryPlan
from qcompile.errors import BuildError, ConfigError

__all__ = ["CPUS", "Cpu", "QemuRun", "build_firmware", "run_c_qemu", "toolchain_available", "HARNESS_DIR"]

HARNESS_DIR = Path(__file__).parent / "harness"
HARNESS_FILES = ("startup.c", "semihost.c", "semihost.h", "mps2.ld")
CFLAGS = ("-mthumb", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-ffunction-sections",
          "-fdata-sections")


@dataclass(frozen=True)
class Cpu:
    """A QEMU board and the flags that build for its core."""

    name: str
    board: str
    flags: tuple[str, ...]
    rom: int
    ram: int


CPUS: dict[str, Cpu] = {c.name: c for c in (
    # plain C, no DSP extension: the Cortex-M0+-compatible build runs on the M3 board
    Cpu("cortex-m3", "mps2-an385", ("-mcpu=cortex-m3", "-mfloat-abi=soft"), 0x00000000, 0x20000000),
    Cpu("cortex-m4", "mps2-an386", ("-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), 0x0, 0x20000000),
    Cpu("cortex-m7", "mps2-an500", ("-mcpu=cortex-m7", "-mfloat-abi=hard", "-mfpu=fpv5-d16"), 0x0, 0x20000000),
    Cpu("cortex-m33", "mps2-an505", ("-mcpu=cortex-m33", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
        0x10000000, 0x38000000),
)}
CPUS["cortex-m0plus"] = CPUS["cortex-m3"]


@dataclass
class QemuRun:
    """Outputs of a firmware run plus what the emulator measured."""

    outputs: np.ndarray
    instructions: list[int]          # per inference (one marker region each)
    text_bytes: int
    data_bytes: int
    bss_bytes: int


def toolchain_available() -> bool:
    return all(shutil.which(t) for t in ("arm-none-eabi-gcc", "qemu-system-arm", "arm-none-eabi-size"))


def _cpu(cpu: str) -> Cpu:
    if cpu not in CPUS:
        raise ConfigError(f"cpu={cpu!r}: choose one of {', '.join(sorted(CPUS))}")
    return CPUS[cpu]


def _run(cmd: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: {cmd[0]} not found (apt-get install gcc-arm-none-eabi "
                         "libnewlib-arm-none-eabi qemu-system-arm)") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what}: timed out after {timeout} s") from exc
    return r


def plugin_path(workdir: Path) -> Path:
    """Build the instruction-count plugin (host gcc) into ``workdir``."""
    so = workdir / "mcu_icount.so"
    if not so.exists():
        r = _run(["gcc", "-shared", "-fPIC", "-O2", "-std=c99", "-o", str(so), str(HARNESS_DIR / "icount_plugin.c")],
                 workdir, 120, "building the icount plugin")
        if r.returncode != 0:
            raise BuildError(f"building the icount plugin failed:\n{r.stderr}")
    return so


def write_harness(directory: Path, name: str) -> list[str]:
    """Copy the bare-metal harness into ``directory``; returns the C files to compile."""
    for f in HARNESS_FILES:
        shutil.copyfile(HARNESS_DIR / f, directory / f)
    main = (HARNESS_DIR / "qc_main.c.in").read_text().replace("@name@", name).replace("@NAME@", name.upper())
    (directory / "qc_main.c").write_text(main)
    return ["startup.c", "semihost.c", "qc_main.c"]


def build_firmware(sources: dict[str, str], name: str, cpu: str, directory: Path, opt: str = "-O2") -> Path:
    """Write the emitted files plus the harness to ``directory`` and link ``prog.elf``."""
    c = _cpu(cpu)
    for fname, text in sources.items():
        (directory / fname).write_text(text)
    srcs = write_harness(directory, name) + sorted(f for f in sources if f.endswith(".c"))
    elf = directory / "prog.elf"
    cmd = ["arm-none-eabi-gcc", *CFLAGS, *c.flags, opt, "-T", "mps2.ld",
           f"-Wl,--defsym=ROM_ORIGIN={c.rom:#x},--defsym=RAM_ORIGIN={c.ram:#x}",
           "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections", *srcs, "-o", str(elf)]
    r = _run(cmd, directory, 300, "arm-none-eabi-gcc")
    if r.returncode != 0:
        raise BuildError(f"arm-none-eabi-gcc failed for {cpu}:\n{' '.join(cmd)}\n{r.stderr}")
    return elf


def _size(elf: Path) -> tuple[int, int, int]:
    r = _run(["arm-none-eabi-size", str(elf)], elf.parent, 60, "arm-none-eabi-size")
    text, data, bss = (int(v) for v in r.stdout.splitlines()[1].split()[:3])
    return text, data, bss


def run_elf(elf: Path, cpu: str, inputs: bytes, *, count: bool = True, timeout: float = 600) -> tuple[bytes, list[int]]:
    """Run ``elf`` on QEMU with ``inputs`` as the input file; returns (output bytes, region counts)."""
    c = _cpu(cpu)
    d = elf.parent
    (d / "in.bin").write_bytes(inputs)
    cmd = ["qemu-system-arm", "-M", c.board, "-display", "none", "-monitor", "none", "-serial", "null",
           "-semihosting-config", "enable=on,target=native,arg=prog,arg=in.bin,arg=out.bin", "-kernel", elf.name]
    if count:
        cmd += ["-plugin", str(plugin_path(d)), "-d", "plugin", "-D", "icount.log"]
    r = _run(cmd, d, timeout, "qemu-system-arm")
    if r.returncode != 0:
        meaning = {2: "host I/O error", 3: "bad arguments", 4: "model returned an error"}.get(
            r.returncode, f"CPU exception {r.returncode - 100}" if r.returncode >= 100 else "failure")
        raise BuildError(f"firmware on {c.board} exited with {r.returncode} ({meaning}):\n{r.stdout}\n{r.stderr}")
    counts: list[int] = []
    if count:
        counts = [int(m) for m in re.findall(r"icount region \d+: (\d+)", (d / "icount.log").read_text())]
    return (d / "out.bin").read_bytes(), counts


def run_c_qemu(program: ir.Program, plan: MemoryPlan, xs: np.ndarray, *, name: str, cpu: str = "cortex-m4",
               opt: str = "-O2", workdir: str | Path | None = None, sources: dict[str, str] | None = None) -> QemuRun:
    """Emit C for ``program``, build it for ``cpu``, run every sample of ``xs`` (int8, batch first) on QEMU."""
    from qcompile.backends.c_emitter import emit_c

    sources = sources if sources is not None else emit_c(program, plan, name)
    xs = np.ascontiguousarray(xs, dtype=np.int8)
    with tempfile.TemporaryDirectory(prefix="qc_qemu_") as tmp:
        d = Path(workdir) if workdir is not None else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        elf = build_firmware(sources, name, cpu, d, opt)
        out, counts = run_elf(elf, cpu, xs.tobytes())
        text, data, bss = _size(elf)
    n = len(xs)
    outputs = np.frombuffer(out, dtype=np.int8).reshape(n, *program.output.shape)
    return QemuRun(outputs, counts, text, data, bss)
