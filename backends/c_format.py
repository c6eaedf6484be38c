"""C text of the generated model: literals, comments, ``static const`` arrays and parameter blocks."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qcompile.errors import IRVerificationError

__all__ = ["c_array", "c_float", "c_int", "c_macro_int", "c_params", "comment_text", "rq_array", "shape_text",
           "spatial", "words_array"]

_INT8_PER_LINE = 16
_INT16_PER_LINE = 12
_INT32_PER_LINE = 10
_MAX_IDENT_BASE = 40


def c_int(v: int) -> str:
    """A signed C integer literal valid for int32 (``INT32_MIN`` cannot be written directly)."""
    v = int(v)
    if v == -(1 << 31):
        return "(-2147483647 - 1)"
    return str(v)


def c_macro_int(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


def c_float(x: float) -> str:
    """A float literal that round-trips ``x`` through ``repr`` (shortest exact decimal)."""
    text = repr(float(x))
    if not any(ch in text for ch in ".eE"):
        text += ".0"
    return text + "f"


def comment_text(text: str) -> str:
    """Printable ASCII that cannot end or nest a C comment."""
    text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))
    return text.replace("*/", "* /").replace("/*", "/ *")


def shape_text(shape: Sequence[int]) -> str:
    """Python tuple notation: ``(8, 4, 4)``, ``(10,)``."""
    return str(tuple(int(d) for d in shape))


_CTYPES = {
    "int8_t": (-(1 << 7), (1 << 7) - 1, _INT8_PER_LINE),
    "uint8_t": (0, (1 << 8) - 1, _INT8_PER_LINE),
    "int16_t": (-(1 << 15), (1 << 15) - 1, _INT16_PER_LINE),
    "int32_t": (-(1 << 31), (1 << 31) - 1, _INT32_PER_LINE),
    "uint32_t": (0, (1 << 32) - 1, _INT32_PER_LINE),
}


def c_array(ctype: str, ident: str, values: np.ndarray, comment: str) -> str:
    """A ``static const`` array definition, numbers right-aligned, several per line."""
    lo, hi, per_line = _CTYPES[ctype]
    flat = [int(v) for v in np.asarray(values).ravel().tolist()]
    if not flat:
        raise IRVerificationError(f"array '{ident}' is empty")
    if min(flat) < lo or max(flat) > hi:
        raise IRVerificationError(f"array '{ident}' has values outside {ctype}")
    suffix = "u" if ctype == "uint32_t" else ""
    items = [c_int(v) + suffix for v in flat]
    width = max(len(s) for s in items)
    lines = [
        "    " + ", ".join(s.rjust(width) for s in items[i:i + per_line]) + ","
        for i in range(0, len(items), per_line)
    ]
    return (f"/* {comment_text(comment)} */\n"
            f"static const {ctype} {ident}[{len(items)}] = {{\n" + "\n".join(lines) + "\n};\n")


def c_params(ctype: str, ident: str, groups: Sequence[Sequence[tuple[str, object]]]) -> str:
    """A ``static const`` parameter block with designated initializers, one line per group."""
    lines = []
    for group in groups:
        parts = [f".{key} = {value if isinstance(value, str) else c_int(value)}" for key, value in group]
        lines.append("    " + ", ".join(parts) + ",")
    return f"static const {ctype} {ident} = {{\n" + "\n".join(lines) + "\n};\n"


def spatial(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of a ``(C, L)`` (``H = 1``) or ``(C, H, W)`` shape."""
    if len(shape) == 2:
        return int(shape[0]), 1, int(shape[1])
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    raise IRVerificationError(f"expected a (C, L) or (C, H, W) tensor, got shape {tuple(shape)}")


def rq_array(ident: str, rq: np.ndarray, comment: str) -> str:
    rows = [f"    {{{c_int(m)}, {c_int(s)}, {c_int(r)}}}," for m, s, r in rq.tolist()]
    return f"/* {comment_text(comment)} */\nstatic const qc_rq {ident}[{len(rows)}] = {{\n" + "\n".join(rows) + "\n};\n"


def words_array(ident: str, words: np.ndarray, comment: str) -> str:
    return c_array("uint32_t", ident, words, comment)
