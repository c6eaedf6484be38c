"""Static analysis of generated C with cppcheck (Debian package ``cppcheck``).

:func:`run_cppcheck` checks a build folder (``<name>.c`` and the kernel library) with the
``warning``, ``style``, ``performance`` and ``portability`` checks and returns the findings as
``file:line:id:message`` lines; an empty list means clean. Two checks are switched off for a
reason each, in :data:`CPPCHECK_SUPPRESSIONS`; everything else must be clean.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from qcompile.errors import BuildError

__all__ = ["CPPCHECK_SUPPRESSIONS", "cppcheck_available", "run_cppcheck"]

CPPCHECK_SUPPRESSIONS: dict[str, str] = {
    # `v >> 31` on a negative int32 is implementation-defined in C99; the kernels (like CMSIS-NN)
    # need it arithmetic and qc_kernels.h stops the build with #error on a compiler where it is not.
    "shiftTooManyBitsSigned": "arithmetic right shift is required and checked by qc_kernels.h",
    # The arena is `static union { int8_t data[N]; int64_t align; }`: `align` is only there to
    # give the arena 8-byte alignment in plain C99, so it is never read on purpose.
    "unusedStructMember": "the arena union's alignment member is never used by design",
}

_CHECKS = "warning,style,performance,portability"
_TEMPLATE = "{file}:{line}:{id}:{message}"


def cppcheck_available() -> bool:
    return shutil.which("cppcheck") is not None


def run_cppcheck(directory: str | Path, files: list[str] | None = None, *, defines: tuple[str, ...] = (),
                 timeout: float = 300.0) -> list[str]:
    """cppcheck findings for ``files`` (default: every ``.c`` file) in ``directory``.

    ``defines`` (e.g. ``("QC_DSP=1",)``) picks one preprocessor configuration, which is much
    faster than letting cppcheck try them all.
    """
    d = Path(directory)
    sources = files if files is not None else sorted(p.name for p in d.glob("*.c"))
    cmd = ["cppcheck", f"--enable={_CHECKS}", "--std=c99", "--inline-suppr", "--quiet", f"--template={_TEMPLATE}",
           "-I.", *(f"--suppress={s}" for s in sorted(CPPCHECK_SUPPRESSIONS)), *(f"-D{x}" for x in defines),
           *sources]
    try:
        r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"cppcheck failed to run: {exc}\n{' '.join(cmd)}") from exc
    # with --quiet, cppcheck writes findings (and only findings) to stderr
    return [line for line in r.stderr.splitlines() if line.strip()]
