"""Compile-time decisions of the C backend that are not C text: memory layouts, fusions, scratch.

* **Layouts.** Inside the arena, ``(C, H, W)`` / ``(C, L)`` tensors are stored channels-last
  ("HWC") so that the reduction dimension of a convolution is contiguous (SMLAD on 4 channels
  per word). The graph input and output keep PyTorch order ("CHW"), which the C contract fixes.
  Kernels address tensors through ``(c_stride, p_stride)``, so convolutions, pools, pads and
  concats read one layout and write another for free. Ops whose operands must share a layout
  (element-wise Add/Lut/Mul/PRelu, which may also run in place, and reshapes that keep the
  channel count) tie their tensors together (union-find); a group touching the graph I/O or a
  softmax over a non-trivial row is CHW, every other group HWC. A flatten of an HWC tensor
  feeding only Dense ops stays HWC: the Dense weight columns are permuted at compile time
  (:meth:`Layout.storage_perm`). Tensors with one channel or one pixel are the same in both
  layouts ("neutral").
* **Pad fusion.** A zero-point ``Pad`` whose output only feeds convolutions becomes extra
  convolution padding (no copy), when the plan keeps the Pad's input intact until the last of
  those convolutions has run.
* **Scratch.** Convolutions through the GEMM kernel need a small int16 buffer (im2col of 2
  output pixels, plus one compact row when the receptive field is gathered element by element;
  Dense reads its int8 input directly and needs none), and a large fast Add its two 256-entry int32 tables
  (``qc_add_table_s8``). It goes into a gap of the arena that is free while the op runs, or past
  the planned arena (which then grows by that much).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompile.backends import ir
from qcompile.backends.memory_plan import MemoryPlan

__all__ = ["Layout", "analyze", "add_uses_tables", "conv_k_pad", "conv_k_seq", "scratch_bytes", "strides"]

_ALIGN = 8


def _spatial(shape) -> tuple[int, int, int] | None:
    if len(shape) == 2:
        return int(shape[0]), 1, int(shape[1])
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    return None


def strides(shape, channels_last: bool) -> tuple[int, int]:
    """``(c_stride, p_stride)`` of a tensor of ``shape`` viewed as ``(C, H*W)`` (rank other than 2
    or 3: ``(size, 1, 1)``), stored channels-last or not."""
    c, h, w = _spatial(shape) or (int(np.prod(shape)), 1, 1)
    return (1, c) if channels_last else (h * w, 1)


def neutral(shape) -> bool:
    """Whether CHW and HWC storage coincide (rank 1, one channel or one pixel)."""
    s = _spatial(shape)
    return s is None or s[0] == 1 or s[1] * s[2] == 1


def conv_k_pad(op: ir.Conv2D) -> int:
    cig, kh, kw = (int(d) for d in op.weight.shape[1:])
    return (cig * kh * kw + 3) // 4 * 4


def conv_k_seq(op: ir.Conv2D, src: int, program: ir.Program, hwc: frozenset[int]) -> bool:
    """Whether qc_conv_s8 gathers the receptive field element by element in plain k order (k_seq = 1
    in the emitted parameters): unless the input ``src`` (a fused Pad's input, else the conv's) has
    channel stride 1 and cin_group % 4 == 0, or each window row is one contiguous run of a multiple
    of 4 bytes (one input channel, or channels-last with cin_group = C; dilation_w = 1)."""
    s = _spatial(program.tensors[src].shape)
    cig, kw = int(op.weight.shape[1]), int(op.weight.shape[3])
    unit_cs = src in hwc or (s is not None and s[1] * s[2] == 1)
    if unit_cs and cig % 4 == 0:
        return False
    # a window row is one contiguous run of whole words (e.g. a 1-channel input with kernel_w % 4 == 0):
    # qc_im2col expands interior pixels a word at a time, in the SXTAB16 pairing
    row_contiguous = s is not None and (s[0] == 1 or (src in hwc and s[0] == cig))
    return not (row_contiguous and op.dilation[1] == 1 and (kw * cig) % 4 == 0)


def scratch_bytes(op: ir.Op, program: ir.Program, hwc: frozenset[int] | None = None,
                  fused: dict[str, ir.Pad] | None = None) -> int:
    """Bytes of scratch the op's kernel needs (0 for none). ``hwc``/``fused``: the layout decisions
    (computed when not given; a fused Pad changes which tensor a convolution reads)."""
    if isinstance(op, (ir.Conv2D, ir.Dense)):
        from qcompile.backends.c_lowbit import is_lowbit, lowbit_scratch  # the emitter owns the plan
        if is_lowbit(op):
            hwc = _layouts(program) if hwc is None else hwc
            pad = (fused or {}).get(op.name)
            src = pad.input if pad is not None else op.input
            return lowbit_scratch(op, program, src, hwc)
    if isinstance(op, ir.Conv2D) and not op.depthwise:
        # 2 pixels x k_pad int16, + k_pad int16 for the element-wise im2col's compact row
        hwc = _layouts(program) if hwc is None else hwc
        pad = (fused or {}).get(op.name)
        src = pad.input if pad is not None else op.input
        return (6 if conv_k_seq(op, src, program, hwc) else 4) * conv_k_pad(op)
    if isinstance(op, ir.Add) and add_uses_tables(op, program):
        return ADD_TABLE_BYTES
    return 0


ADD_TABLE_BYTES = 2 * 256 * 4   # qc_add_table_s8: one int32 table per input
ADD_TABLE_MIN_SIZE = 1024       # below this, building the tables costs more than it saves


def add_uses_tables(op: ir.Add, program: ir.Program) -> bool:
    """Whether an Add runs through qc_add_table_s8 (fast form proved, large enough)."""
    from qcompile.backends.c_ops import add_fast_fields  # the Add emitter owns the exactness proof

    return program.tensors[op.output].size >= ADD_TABLE_MIN_SIZE and add_fast_fields(op)[0][1] == 1


@dataclass
class Layout:
    """Per-tensor storage decisions and per-op emission facts for one program + plan."""

    program: ir.Program
    hwc_tensors: frozenset[int]
    fused_pads: dict[str, ir.Pad]                  # conv op name -> the Pad op folded into it
    skipped: frozenset[str]                         # names of ops that emit no kernel (fused pads)
    scratch: dict[str, int] = field(default_factory=dict)   # op name -> arena byte offset
    arena_size: int = 0                              # plan arena + scratch growth

    def hwc(self, tid: int) -> bool:
        return tid in self.hwc_tensors

    def source_of(self, tid: int) -> int:
        """The tensor whose storage ``tid`` shares through flatten reshapes (itself otherwise)."""
        producers = self.program.producers()
        while tid in producers and isinstance(producers[tid], ir.Reshape) and not self.hwc(tid) \
                and self.hwc(producers[tid].input):
            tid = producers[tid].input
        return tid

    def storage_perm(self, tid: int) -> np.ndarray | None:
        """For a tensor read as a flat vector: ``perm[s]`` = logical index stored at position ``s``
        (``None`` when storage is logical order)."""
        src = self.source_of(tid)
        if not self.hwc(src):
            return None
        c, h, w = _spatial(self.program.tensors[src].shape)
        return np.arange(c * h * w).reshape(c, h * w).T.ravel()


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, *ts: int) -> None:
        roots = sorted({self.find(t) for t in ts})
        for r in roots[1:]:
            self.parent[r] = roots[0]


def _layouts(program: ir.Program) -> frozenset[int]:
    t = program.tensors
    uf = _UnionFind()
    pinned: set[int] = {*program.inputs, *program.outputs}
    consumers: dict[int, list[ir.Op]] = {}
    for op in program.ops:
        for tid in op.inputs:
            consumers.setdefault(tid, []).append(op)

    def tie(*ts: int) -> None:
        live = [x for x in ts if not neutral(t[x].shape)]
        if live:
            uf.union(*live)

    for op in program.ops:
        out = op.output
        if isinstance(op, (ir.Add, ir.MinMax)):
            tie(op.input1, op.input2, out)
        elif isinstance(op, (ir.Lut, ir.PRelu)):
            tie(op.input, out)
        elif isinstance(op, ir.Mul):
            tie(op.input1, out, *((op.input2,) if t[op.input2].shape == t[out].shape else ()))
        elif isinstance(op, ir.Softmax):
            pinned.update(x for x in (op.input, out) if not neutral(t[x].shape))
        elif isinstance(op, ir.Reshape):
            si, so = t[op.input].shape, t[out].shape
            if neutral(si) and neutral(so):
                continue
            if not neutral(si) and not neutral(so) and si[0] == so[0]:
                tie(op.input, out)  # merges/splits spatial dims: identical channels-last storage
            elif not neutral(si) and neutral(so) and out not in program.outputs and consumers.get(out) \
                    and all(isinstance(c, ir.Dense) for c in consumers[out]):
                continue  # flatten into Dense only: weight columns follow the storage
            else:
                pinned.update(x for x in (op.input, out) if not neutral(t[x].shape))
    pinned_roots = {uf.find(x) for x in pinned if not neutral(t[x].shape)}
    hwc = set()
    for tensor in t:
        if not neutral(tensor.shape) and uf.find(tensor.id) not in pinned_roots:
            hwc.add(tensor.id)
    return frozenset(hwc)


def _fusable_pads(program: ir.Program, plan: MemoryPlan) -> dict[str, ir.Pad]:
    """Conv op name -> Pad op, for zero-point pads that only feed convolutions (see module doc)."""
    t = program.tensors
    index = {op.name: i for i, op in enumerate(program.ops)}
    fused: dict[str, ir.Pad] = {}
    for i, op in enumerate(program.ops):
        if not isinstance(op, ir.Pad) or op.interior != (0, 0) or op.output in (*program.inputs, *program.outputs):
            continue
        readers = [c for c in program.ops if op.output in c.inputs]
        if not readers or not all(isinstance(c, ir.Conv2D) and c.input_offset == -op.value for c in readers):
            continue
        last = max(index[c.name] for c in readers)
        src = op.input
        if src in plan.offsets:  # the source's bytes must survive until the last reader
            lo, hi = plan.offsets[src], plan.offsets[src] + t[src].size
            clobbered = False
            for later in program.ops[i + 1:last + 1]:
                o = later.output
                if o in plan.offsets and plan.offsets[o] < hi and lo < plan.offsets[o] + t[o].size:
                    clobbered = True
                    break
            if clobbered:
                continue
        for c in readers:
            fused[c.name] = op
    return fused


def _place_scratch(program: ir.Program, plan: MemoryPlan, fused: dict[str, ir.Pad],
                   hwc: frozenset[int]) -> tuple[dict[str, int], int]:
    t = program.tensors
    index = {op.name: i for i, op in enumerate(program.ops)}
    life = dict(plan.lifetimes)
    for conv_name, pad in fused.items():  # fused pads keep their source alive until the conv
        if pad.input in life:
            a, b = life[pad.input]
            life[pad.input] = (a, max(b, index[conv_name]))
    offsets: dict[str, int] = {}
    arena = plan.arena_size
    for i, op in enumerate(program.ops):
        size = scratch_bytes(op, program, hwc, fused)
        if size == 0:
            continue
        busy = sorted((plan.offsets[tid], plan.offsets[tid] + t[tid].size)
                      for tid, (a, b) in life.items() if a <= i <= b and tid in plan.offsets)
        offset = 0
        for lo, hi in busy:
            if offset + size <= lo:
                break
            offset = max(offset, (hi + _ALIGN - 1) // _ALIGN * _ALIGN)
        offsets[op.name] = offset
        arena = max(arena, offset + size)
    return offsets, arena


def analyze(program: ir.Program, plan: MemoryPlan) -> Layout:
    """Layouts, pad fusions and scratch placement for emitting ``program`` with ``plan``."""
    fused = _fusable_pads(program, plan)
    hwc = _layouts(program)
    scratch, arena = _place_scratch(program, plan, fused, hwc)
    skipped = frozenset(p.name for p in fused.values())
    return Layout(program, hwc, fused, skipped, scratch, arena)
