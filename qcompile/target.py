"""Compilation targets with memory budgets: does the model fit the part's flash and RAM?

``qcompile.compile(..., target=qcompile.Target("cortex-m4", flash=512 * 1024, ram=128 * 1024))``
or a preset, ``target=qcompile.Target.preset("stm32f446re")`` (or just ``target="stm32f446re"``).
The plain family strings (``"cortex-m"``, ``"generic"``) keep meaning "no budget".

The check runs in ``compile`` right after memory planning, so a model that does not fit fails
before any file is written. The estimate (:func:`memory_estimate`) is

* flash = the constants the C backend emits (weights as stored, biases, requantization records,
  tables: :func:`qcompile.report.op_param_bytes`) + the kernel library's code + a per-op call cost;
* RAM = the activation arena including kernel scratch (``c_layout.analyze``) + the caller's input
  and output buffers + a stack reserve.

The code terms are upper bounds, rounded up from the runtime (``backends/runtime/*.c``,
arm-none-eabi-gcc 12.2, ``-mthumb -O2 -ffunction-sections``, ``text + data`` of the objects,
re-measured 2026-11-24 at cbb4448). The kernel library without the threshold layers' routines:
21,714 B for Cortex-M4 (M7 21,912 B, M33 21,748 B), 16,292 B for Cortex-M3, 18,554 B for
Cortex-M0+. The threshold routines are counted per model, as the emitter names them per layer
(:func:`qcompile.backends.c_lowbit.threshold_routines`): each output store (54-94 B unrolled,
260-284 B for the general one) and, on DSP cores, each fused pixel-pair routine (418-726 B) the
model's layers may name. Linking with ``--gc-sections`` drops the kernels a model does not call,
so the real figure is smaller (``tests/test_budgets.py`` checks the bound against the compiled
objects less the threshold routines the model does not name).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qcompile.backends import ir
from qcompile.backends.memory_plan import MemoryPlan
from qcompile.errors import ConfigError, MemoryBudgetError

__all__ = ["Target", "PRESETS", "CPUS", "resolve_target", "memory_estimate", "check_fits"]

FAMILIES = ("cortex-m", "generic")  # the string targets (no budget), as in qcompile.config.TARGETS
CPUS = ("cortex-m0plus", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33")

# Upper bounds for the kernel library's code (see the module docstring for how they were measured).
RUNTIME_CODE_BYTES = {"cortex-m0plus": 19_500, "cortex-m3": 17_000, "cortex-m4": 23_000, "cortex-m7": 23_000,
                      "cortex-m33": 23_000}
# The threshold layers' routines, counted per model: an unrolled store (qc_threshold_store<B>_<L>),
# the general one (qc_threshold_store<B>), a fused pixel-pair routine (DSP cores only).
THRESHOLD_STORE_CODE_BYTES = 128
THRESHOLD_STORE_ANY_CODE_BYTES = 320
THRESHOLD_PAIR_CODE_BYTES = 800
DSP_CPUS = ("cortex-m4", "cortex-m7", "cortex-m33")
# Code in <name>.c per op: the kernel call, plus the compile-time specialized kernels some ops get
# (depthwise 3x3: ~1.1 KB each). Measured on the test zoo at -O2 (M4): at most 318 B per op.
OP_CODE_BYTES = 384
STACK_RESERVE_BYTES = 1024  # deepest kernel frame plus <name>_run's, with margin

KB = 1024


@dataclass(frozen=True)
class Target:
    """A CPU and, optionally, the flash and RAM (bytes) the model may use on it.

    ``flash``/``ram`` are what is available *to the model* (leave room for the rest of the
    firmware by passing less than the part has). ``None`` means unlimited.
    """

    cpu: str = "cortex-m4"
    flash: int | None = None
    ram: int | None = None
    part: str | None = None  # a human name for messages, e.g. "STM32F446RE"

    def __post_init__(self) -> None:
        if self.cpu not in CPUS:
            raise ConfigError(f"Target cpu={self.cpu!r}: choose one of {', '.join(CPUS)}")
        for field_name in ("flash", "ram"):
            v = getattr(self, field_name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"Target {field_name}={v!r} must be a positive number of bytes or None")

    @classmethod
    def preset(cls, part: str) -> "Target":
        """The whole flash and RAM of a known part (see :data:`PRESETS`)."""
        key = part.lower().replace("-", "").replace("_", "")
        if key not in PRESETS:
            raise ConfigError(f"unknown part {part!r}: presets are {', '.join(sorted(PRESETS))}; "
                              "or give Target(cpu, flash=..., ram=...)")
        return PRESETS[key]

    @property
    def family(self) -> str:
        return "cortex-m"

    def describe(self) -> str:
        return f"{self.part} ({self.cpu})" if self.part else self.cpu

    def as_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "flash": self.flash, "ram": self.ram, "part": self.part}


# Whole on-chip flash / SRAM from each part's datasheet (KB = 1024 bytes).
PRESETS: dict[str, Target] = {
    # STM32F446xC/E datasheet (DS10693): Cortex-M4F, up to 512 KB flash, 128 KB SRAM.
    "stm32f446re": Target("cortex-m4", flash=512 * KB, ram=128 * KB, part="STM32F446RE"),
    # STM32L4R5xx datasheet (DS12023): Cortex-M4F, 2 MB flash, 640 KB SRAM.
    "stm32l4r5zi": Target("cortex-m4", flash=2048 * KB, ram=640 * KB, part="STM32L4R5ZI"),
    # nRF52840 Product Specification v1.7: Cortex-M4F, 1 MB flash, 256 KB RAM (Arduino Nano 33 BLE).
    "nrf52840": Target("cortex-m4", flash=1024 * KB, ram=256 * KB, part="nRF52840"),
    # STM32F746xx datasheet (DS10916): Cortex-M7, 1 MB flash, 320 KB SRAM (incl. 64 KB DTCM).
    "stm32f746ng": Target("cortex-m7", flash=1024 * KB, ram=320 * KB, part="STM32F746NG"),
    # nRF5340 Product Specification v1.x: application core Cortex-M33, 1 MB flash, 512 KB RAM.
    "nrf5340": Target("cortex-m33", flash=1024 * KB, ram=512 * KB, part="nRF5340"),
    # RP2040 datasheet: dual Cortex-M0+, 264 KB SRAM, no on-chip flash; the Raspberry Pi Pico
    # board carries 2 MB of QSPI flash (W25Q16JV), executed in place.
    "rp2040": Target("cortex-m0plus", flash=2048 * KB, ram=264 * KB, part="RP2040 (Pico, 2 MB flash)"),
    # SAM D21 family datasheet (DS40001882): ATSAMD21G18A, Cortex-M0+, 256 KB flash, 32 KB SRAM.
    "atsamd21g18": Target("cortex-m0plus", flash=256 * KB, ram=32 * KB, part="ATSAMD21G18"),
}


def resolve_target(target: Any) -> Target | str:
    """A family string stays a string (no budget); a :class:`Target` or a preset name gives a Target."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if target in FAMILIES:
            return target
        key = target.lower().replace("-", "").replace("_", "")
        if key in PRESETS:
            return PRESETS[key]
    raise ConfigError(f"target={target!r}: choose one of {', '.join(FAMILIES)}, a part preset "
                      f"({', '.join(sorted(PRESETS))}) or qcompile.Target(cpu, flash=..., ram=...)")


def threshold_code_bytes(program: ir.Program, cpu: str) -> int:
    """Upper bound of the code of the threshold routines ``program``'s layers name on ``cpu``."""
    from qcompile.backends.c_lowbit import threshold_routines

    stores, pairs = threshold_routines(program)
    code = sum(THRESHOLD_STORE_CODE_BYTES if unrolled else THRESHOLD_STORE_ANY_CODE_BYTES
               for unrolled in stores.values())
    if cpu in DSP_CPUS:
        code += THRESHOLD_PAIR_CODE_BYTES * sum(pairs.values())
    return code


def memory_estimate(program: ir.Program, plan: MemoryPlan, cpu: str = "cortex-m4") -> dict[str, Any]:
    """Flash and RAM the compiled model needs on ``cpu`` (bytes), with the terms and the largest items."""
    from qcompile.backends.c_layout import analyze
    from qcompile.report import op_param_bytes

    constants = {op.name: (type(op).__name__, op_param_bytes(op)) for op in program.ops}
    const_total = sum(b for _, b in constants.values())
    code = RUNTIME_CODE_BYTES[cpu] + OP_CODE_BYTES * len(program.ops) + threshold_code_bytes(program, cpu)
    layout = analyze(program, plan)
    arena = layout.arena_size
    io = program.input_size + program.output_size  # the whole I/O buffers (several inputs/outputs)
    producer = {op.output: op for op in program.ops}
    tensors = sorted(((t.size, t.name, type(producer[t.id]).__name__ if t.id in producer else "input")
                      for t in program.tensors), reverse=True)
    return {
        "flash": {"total": const_total + code, "constants": const_total, "code_estimate": code},
        "ram": {"total": arena + io + STACK_RESERVE_BYTES, "arena": arena, "scratch": arena - plan.arena_size,
                "io_buffers": io, "stack_reserve": STACK_RESERVE_BYTES},
        "largest_constants": [(name, kind, b) for name, (kind, b) in
                              sorted(constants.items(), key=lambda kv: (-kv[1][1], kv[0]))[:3] if b > 0],
        "largest_tensors": [(name, kind, size) for size, name, kind in tensors[:3]],
    }


def check_fits(program: ir.Program, plan: MemoryPlan, target: Target | str, name: str) -> dict[str, Any] | None:
    """Raise :class:`MemoryBudgetError` if the model exceeds ``target``'s flash or RAM; return the
    estimate with the budgets (``None`` for a family string, which has no budget)."""
    if not isinstance(target, Target):
        return None
    est = memory_estimate(program, plan, target.cpu)
    problems = []
    f, r = est["flash"], est["ram"]
    if target.flash is not None and f["total"] > target.flash:
        big = ", ".join(f"{n} ({k}) {b:,} B" for n, k, b in est["largest_constants"])
        problems.append(
            f"flash: needs {f['total']:,} B ({f['constants']:,} B weights and constants + {f['code_estimate']:,} B "
            f"kernel code, an upper bound), available {target.flash:,} B (over by {f['total'] - target.flash:,} B); "
            f"largest layers: {big}. Fix: fewer weight bits (QuantConfig(weight_bits=4) packs two per byte, "
            "or per layer {'<name>': 4}), a smaller model, or a part with more flash")
    if target.ram is not None and r["total"] > target.ram:
        big = ", ".join(f"{n} (from {k}) {b:,} B" for n, k, b in est["largest_tensors"])
        problems.append(
            f"RAM: needs {r['total']:,} B (arena {r['arena']:,} B incl. {r['scratch']:,} B kernel scratch + "
            f"{r['io_buffers']:,} B input/output buffers + {r['stack_reserve']:,} B stack), available "
            f"{target.ram:,} B (over by {r['total'] - target.ram:,} B); largest tensors: {big}. Fix: a smaller "
            "input resolution or fewer channels in the early layers, or a part with more RAM")
    if problems:
        raise MemoryBudgetError(f"model '{name}' does not fit {target.describe()}:\n  - " + "\n  - ".join(problems),
                                estimate=est)
    return {**est, "target": target.as_dict()}
