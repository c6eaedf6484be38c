"""Low-bit weights, codebooks and threshold output stages in the generated C (the "lb" kernels of
qc_kernels.h), bit-exact against the interpreter on the host (plain C) and on QEMU (Cortex-M3 plain C,
M4/M7/M33 DSP): packed 4-/3-bit channel pairs (W4), 2-bit and codebook fields expanded per channel
chunk (DECODE), 5..8-bit layers with thresholds (W8), depthwise and dense variants, odd channel
counts and odd reduction lengths (fields straddle rows), padding, stride, groups, chunked
expansion, exact and fast requantization, and thresholds with accumulators exactly on a threshold.
"""
from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import pytest

from qcompile import report
from qcompile.backends import interpreter, ir
from qcompile.backends.c_emitter import emit_c
from qcompile.backends.c_lowbit import pack_fields, pack_w4, threshold_table
from qcompile.backends.interpreter import interpret
from qcompile.backends.memory_plan import plan_memory
from qcompile.backends.qemu import toolchain_available
from test_c_backend import assert_qemu_matches, Builder, assert_c_matches, random_input

needs_qemu = pytest.mark.skipif(not toolchain_available(), reason="needs arm-none-eabi-gcc and qemu-system-arm")


def _codebook(b: Builder, bits: int, wide: bool = False, shared: int = 0) -> None:
    """Give the last conv/dense a codebook of ``bits``-bit codes: random int8 levels per channel, or
    with ``shared`` > 0 that many random tables, each channel using one of them (stored once, with a
    row index per channel)."""
    op = b.ops[-1]
    co = op.weight.shape[0]
    rows = shared or co
    if wide:  # extreme levels: the int8 channel pairs' bound fails, the expansion keeps int16 pairs
        levels = np.sort(b.rng.choice([-127, 127], (rows, 1 << bits)), axis=1).astype(np.int8)
    else:
        levels = np.sort(b.rng.integers(-40, 41, (rows, 1 << bits)), axis=1).astype(np.int8)
    if shared:
        levels = levels[b.rng.integers(0, shared, co)]
        assert cb_rows(levels) <= shared
    codes = b.rng.integers(0, 1 << bits, op.weight.shape).astype(np.uint8)
    cb = ir.Codebook(codes, levels, bits)
    weight = cb.decode()
    b.ops[-1] = dataclasses.replace(op, weight=weight, codebook=cb, w_bits=bits)


def cb_rows(levels: np.ndarray) -> int:
    return len(np.unique(levels, axis=0))


def _accumulators(program: ir.Program, op_name: str, xs: np.ndarray) -> np.ndarray:
    """The int32 accumulators of one conv/dense (channels last), captured from the interpreter."""
    seen = {}
    original = interpreter._output_stage

    def capture(op, acc):
        if op.name == op_name:
            seen["acc"] = np.array(acc)
        return original(op, acc)

    interpreter._output_stage = capture
    try:
        interpret(program, xs)
    finally:
        interpreter._output_stage = original
    return seen["acc"]


def _thresholds(b: Builder, levels: int, xs_seed: int = 5, clamp_top: int | None = None,
                bias_shift: int = 0, sentinels: bool = False) -> None:
    """Give the last conv/dense a threshold stage of ``levels`` thresholds per channel, drawn from its
    own accumulators on the test inputs (so some accumulators sit exactly on a threshold), with ties.
    ``clamp_top``: act_max = offset + clamp_top, below the top level (the clamped output stage).
    ``bias_shift`` is added to the bias first (thresholds beyond int16: an int32 table);
    ``sentinels`` makes the first threshold INT32_MIN and the last INT32_MAX (as the lowering writes
    levels a clamp removes; the emitter clips them to the reachable range)."""
    if bias_shift:
        b.ops[-1] = dataclasses.replace(b.ops[-1], bias=(b.ops[-1].bias + bias_shift).astype(np.int32))
    op = b.ops[-1]
    prog = b.build()
    xs = random_input(prog, 3, seed=xs_seed)
    acc = _accumulators(prog, op.name, xs)
    co = op.weight.shape[0]
    acc = acc.reshape(-1, co)
    rows = []
    for c in range(co):
        picks = b.rng.choice(acc[:, c], size=levels) + b.rng.integers(-1, 2, levels) * (b.rng.random(levels) < 0.3)
        rows.append(np.sort(picks))
    t = np.stack(rows).astype(np.int32)
    if levels > 2:
        t[:, 1] = t[:, 2]  # a tie
    if sentinels:
        t[:, 0], t[:, -1] = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    offset = min(op.output_offset, 127 - levels)
    b.ops[-1] = dataclasses.replace(op, thresholds=t, output_offset=offset, act_min=max(op.act_min, -128),
                                    act_max=127 if clamp_top is None else offset + clamp_top)


def gemm_program() -> ir.Program:
    b = Builder(501, (5, 9, 11))
    x = b.input
    outs = []
    t = b.conv(x, 7, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4)          # odd Co, odd K=45, k_seq
    outs.append(t)
    t2 = b.conv(t, 9, kernel=(3, 3), stride=(2, 2), padding=(1, 0, 1, 1), w_bits=3)  # HWC, cig 7 (k_seq)
    outs.append(t2)
    t3 = b.conv(t2, 8, kernel=(1, 1), w_bits=2)                              # 2-bit DECODE, K=9
    outs.append(t3)
    t4 = b.conv(t3, 12, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4)       # cig 8: word im2col, W4
    outs.append(t4)
    t5 = b.conv(t4, 6, kernel=(2, 2), groups=2, w_bits=4)                    # grouped W4
    outs.append(t5)
    t6 = b.conv(t4, 10, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4)
    _codebook(b, 4, shared=3)                                                # PWLQ-style shared tables
    outs.append(t6)
    t7 = b.conv(t4, 5, kernel=(1, 3), padding=(0, 1, 0, 1), w_bits=5)       # 5-bit: int8 kernels
    outs.append(t7)
    t8 = b.conv(t4, 6, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=6)
    _thresholds(b, 7)                                                        # W8 + thresholds
    outs.append(t8)
    t9 = b.conv(t4, 7, kernel=(3, 3), w_bits=4)
    _thresholds(b, 40)                                                       # W4 + thresholds
    outs.append(t9)
    t10 = b.conv(t4, 4, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=3)
    _codebook(b, 3)
    _thresholds(b, 3)                                                        # codebook + thresholds
    outs.append(t10)
    # the unrolled threshold counts (1, 3, 7, 15 levels: 1..4-bit outputs), and a clamped stage
    for levels, clamp_top in ((15, None), (1, None), (15, 9)):
        outs.append(b.conv(t4, 6, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4))
        _thresholds(b, levels, clamp_top=clamp_top, sentinels=levels == 15)  # clipped sentinels, int16
    # channels-last W4 outputs (they only feed convolutions): the fused pixel-pair routines, full and clamped
    f1 = b.conv(t4, 8, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4, act=(-128, 127))
    f2 = b.conv(t4, 10, kernel=(1, 1), w_bits=4, act=(-50, 90))
    f3 = b.conv(t4, 8, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4, act=(-128, 127))
    _codebook(b, 4, shared=2)                                                # fused int8 routine on decoded codes
    f4 = b.conv(t4, 6, kernel=(1, 1), w_bits=2, act=(-70, 100))
    for f in (f1, f2, f3, f4):
        outs.append(b.conv(f, 3, kernel=(1, 1), w_bits=8))
    flats = [b.reshape(o, (b.size(o),)) for o in outs]
    d1 = b.dense(flats[3], 11, w_bits=4)                                     # dense W4 (channels-last perm)
    d2 = b.dense(flats[2], 5, w_bits=2)                                      # dense 2-bit, fi odd
    d3 = b.dense(flats[4], 6, w_bits=4)
    _codebook(b, 4)
    d4 = b.dense(flats[1], 9, w_bits=8)
    _thresholds(b, 255)                                                      # 255 levels, offset -128
    return b.build(b.concat([*flats, d1, d2, d3, d4], reals=list(1.0 + 0.05 * b.rng.random(len(flats) + 4))))


def depthwise_program() -> ir.Program:
    b = Builder(502, (6, 8, 9))
    x = b.conv(b.input, 10, kernel=(1, 1), w_bits=8)                         # HWC for the depthwise layers
    outs = []
    outs.append(b.conv(x, 10, kernel=(3, 3), groups=10, padding=(1, 1, 1, 1), w_bits=4))
    outs.append(b.conv(x, 10, kernel=(3, 3), groups=10, stride=(2, 2), padding=(1, 1, 1, 1), w_bits=2))
    outs.append(b.conv(x, 10, kernel=(5, 3), groups=10, padding=(2, 0, 2, 1), w_bits=3))
    _codebook(b, 3)
    outs.append(b.conv(x, 10, kernel=(3, 3), groups=10, w_bits=4))
    _thresholds(b, 9)
    outs.append(b.conv(b.input, 6, kernel=(3, 3), groups=6, padding=(1, 1, 1, 1), w_bits=4))  # CHW input
    z = b.conv(x, 12, kernel=(1, 1), w_bits=8, act=(-128, 127))
    outs.append(b.conv(z, 12, kernel=(3, 3), groups=12, padding=(1, 1, 1, 1), w_bits=4))  # expand + qc_dw3x3_s8
    outs.append(b.conv(z, 12, kernel=(3, 3), groups=12, stride=(2, 2), padding=(1, 1, 1, 1), w_bits=4))
    _codebook(b, 4, shared=3)
    # thresholds on the specialized 3x3 kernel (qc_dw3x3_thr_s8: whole window, border rows and
    # columns), 4- and 2-bit outputs, int16 and int32 (bias_shift) tables; clamped levels take the
    # general kernel
    for stride, w_bits, levels, clamp_top, shift in ((1, 4, 15, None, 0), (2, 2, 3, None, 0), (1, 4, 15, 12, 0),
                                                     (1, 4, 7, None, 100_000), (1, 4, 7, 5, 100_000)):
        outs.append(b.conv(z, 12, kernel=(3, 3), groups=12, stride=(stride, stride), padding=(1, 1, 1, 1),
                           w_bits=w_bits))
        _thresholds(b, levels, clamp_top=clamp_top, bias_shift=shift, sentinels=stride == 1)
    y = b.conv(x, 30, kernel=(1, 1), w_bits=8)
    outs.append(b.conv(y, 30, kernel=(9, 9), groups=30, padding=(4, 4, 4, 4), w_bits=4))  # 2 expansion chunks
    _codebook(b, 4)
    flats = [b.reshape(o, (b.size(o),)) for o in outs]
    return b.build(b.concat(flats, reals=list(1.0 + 0.05 * b.rng.random(len(flats)))))


def chunk_program() -> ir.Program:
    """Expansion in several chunks (K = 576 codebook weights, 2-bit with large K), exact requantization,
    and a codebook whose int8 pairs cannot be proved exact (int16 expansion)."""
    b = Builder(503, (64, 5, 4))
    outs = [b.conv(b.input, 30, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4)]
    _codebook(b, 4)
    outs.append(b.conv(b.input, 21, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=2))
    outs.append(b.conv(b.input, 9, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4))
    _codebook(b, 4, wide=True)
    op = b.ops[-1]
    m, s = op.multiplier.copy(), op.shift.copy()
    s[0], m[0] = 0, 1 << 30  # exact requantization
    b.ops[-1] = dataclasses.replace(op, multiplier=m, shift=s)
    g1 = b.conv(b.input, 30, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4, act=(-128, 127))
    _codebook(b, 4, shared=4)                                                # chunks of 14, 14, 2 channels, fused
    outs.append(b.conv(g1, 3, kernel=(1, 1), w_bits=8))
    flats = [b.reshape(o, (b.size(o),)) for o in outs]
    return b.build(b.concat(flats, reals=list(1.0 + 0.05 * b.rng.random(len(flats)))))


PAIR_LAYERS = (  # (w_bits, codebook bits, levels, bias_shift, groups, channels, clamp_top) -> routine
    ((4, None, 15, 0, 1, 8, None), "w4, 16, 15"),
    ((4, None, 3, 0, 2, 12, None), "w4, 16, 3"),                 # grouped: rows restart per group
    ((4, None, 7, 100_000, 1, 6, None), "w4, 32, 7"),            # int32 rows
    ((3, None, 1, 100_000, 1, 4, None), "w4, 32, 1"),
    ((8, None, 15, 100_000, 1, 6, None), "w8, 32, 15"),          # 8-bit weights from flash
    ((6, None, 7, 0, 1, 10, None), "w8, 16, 7"),
    ((2, None, 3, 0, 1, 8, None), "w8, 16, 3"),                  # 2-bit: decoded into int8 pairs
    ((4, 4, 15, 0, 1, 6, None), "w8, 32, 15"),                   # codebook (N2UQ weights), rows beyond int16
    ((3, 3, 1, 0, 1, 4, None), "w8, 16, 1"),
    ((4, None, 7, 0, 1, 8, 4), None),                            # clamped levels: the C loop
    ((4, None, 7, 0, 1, 7, None), None),                         # odd channel count: the C loop
)


def pairs_program() -> ir.Program:
    """Channels-last threshold layers (each feeds a 1x1 conv) on an odd number of output pixels (the last
    pixel takes the C loop): the fused pixel-pair routines of every weight form, row width and length."""
    b = Builder(504, (6, 7, 9))
    x = b.conv(b.input, 8, kernel=(1, 1), w_bits=8, act=(-128, 127))      # HWC, 63 pixels
    outs = []
    for (w_bits, cb_bits, levels, shift, groups, co, clamp_top), _ in PAIR_LAYERS:
        t = b.conv(x, co, kernel=(1, 3) if groups == 1 else (1, 1), padding=(0, 1, 0, 1) if groups == 1 else (0, 0, 0, 0),
                   groups=groups, w_bits=w_bits, act=(-128, 127))
        if cb_bits is not None:
            _codebook(b, cb_bits)
        _thresholds(b, levels, clamp_top=clamp_top, bias_shift=shift, sentinels=levels == 15)
        outs.append(b.conv(t, 3, kernel=(1, 1), w_bits=8))
    flats = [b.reshape(o, (b.size(o),)) for o in outs]
    return b.build(b.concat(flats, reals=list(1.0 + 0.05 * b.rng.random(len(flats)))))


PROGRAMS = {"gemm": gemm_program, "depthwise": depthwise_program, "chunk": chunk_program, "pairs": pairs_program}


@pytest.fixture(scope="module", params=sorted(PROGRAMS))
def program(request):
    return PROGRAMS[request.param]()


def test_pack_w4_bytes_are_signed_pairs():
    w = np.array([[-7, 3, 0, 5, -1], [7, -7, 2, -3, 6]])
    words = pack_w4(w, 8, k_seq=False)
    raw = np.frombuffer(words.astype("<u4").tobytes(), dtype=np.int8)
    assert raw[:5].tolist() == (w[0] + 16 * w[1]).tolist() and raw[5:].tolist() == [0, 0, 0]
    assert pack_fields(np.array([1, 2, 3, 0, 2]), 2).tolist() == [1 | 2 << 2 | 3 << 4, 2]
    assert pack_fields(np.array([15, 1, 7]), 4).tolist() == [0x1F, 7]


def test_threshold_table_clips_to_the_reachable_range():
    """Worked by hand: weights (2, -1), bias 5, input offset 128, so x + 128 lies in [0, 255] and the
    accumulator in [-255 + 5, 510 + 5] = [-250, 515]. Thresholds at or below -250 are reached by every
    accumulator (stored -250), those above 515 by none (stored 516); int16 holds them. With bias
    40005 the range is [39750, 40515], beyond int16: the table stays int32."""
    lo32, hi32 = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    t = np.array([[lo32, -251, -250, 0, 515, 516, 517, hi32]], dtype=np.int32)
    op = SimpleNamespace(weight=np.array([[2, -1]], np.int8), bias=np.array([5], np.int32), input_offset=128,
                         thresholds=t)
    rows, bits = threshold_table(op)
    assert rows.tolist() == [[-250, -250, -250, 0, 515, 516, 516, 516]] and bits == 16
    acc = np.arange(-250, 516)
    assert np.array_equal((acc[:, None] >= rows).sum(1), (acc[:, None] >= t.astype(np.int64)).sum(1))
    rows, bits = threshold_table(SimpleNamespace(**{**vars(op), "bias": np.array([40005], np.int32)}))
    assert rows.tolist() == [[39750] * 7 + [40515 + 1]] and bits == 32


def test_routes_and_flash(program):
    src = emit_c(program, plan_memory(program), "m")["m.c"]
    lowbit = [op for op in program.ops if isinstance(op, (ir.Conv2D, ir.Dense))
              and (op.codebook is not None or op.w_bits < 5 or op.thresholds is not None)]
    if program.name == "test" and any(getattr(op, "act_min", 0) == -50 for op in program.ops):
        assert len(re.findall(r"QC_LB_W4", src)) >= 4
    calls = src.count("qc_conv_lb_s8(") + src.count("qc_dwconv_lb_s8(") + src.count("qc_dwconv_expand_s8(")
    assert calls == len(lowbit)
    if any(isinstance(op, ir.Conv2D) and op.groups == 12 for op in program.ops):
        assert src.count("qc_dwconv_expand_s8(") == 5 and src.count("qc_dw3x3_s8(&spec") == 2
        assert src.count("qc_dw3x3_thr_s8(&") == 3  # the clamped threshold stages take qc_dwconv_lb_s8
        assert re.search(r"static const int16_t \w+_thresholds\[", src)
        assert re.search(r"static const int32_t \w+_thresholds\[", src)
    if program.name == "test" and PAIR_LAYERS[0][0][5] in [op.weight.shape[0] for op in program.ops[1:2]]:
        # pairs_program: each threshold layer names its fused routine, or none (the C loop)
        assert re.findall(r"\.pair = (NULL|QC_THR_PAIR\(([^)]*)\))", src) == [
            ("NULL", "") if want is None else (f"QC_THR_PAIR({want})", want) for _, want in PAIR_LAYERS]
        return
    shared = [op for op in lowbit if op.codebook is not None and op.codebook.shared_tables()[1] is not None]
    assert shared and len(re.findall(r"static const uint8_t \w+_level_rows\[", src)) == len(shared)


@needs_qemu
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m3"])
def test_only_the_named_threshold_stores_are_linked(program, cpu, tmp_path):
    """Each threshold layer names its output store; a linked program holds exactly those stores (none
    in a model without threshold layers). On DSP cores the specialized depthwise 3x3 kernel counts
    inline, so the store its layer names through QC_DW3X3_THR_STORE is not linked there."""
    import subprocess

    from qcompile.backends.qemu import build_firmware

    sources = emit_c(program, plan_memory(program), "m")
    src = sources["m.c"]
    plain = set(re.findall(r"\.threshold_store = (qc_threshold_store\w+)", src))
    dw3x3 = set(re.findall(r"QC_DW3X3_THR_STORE\((qc_threshold_store\w+)\)", src))
    has_thresholds = any(getattr(op, "thresholds", None) is not None for op in program.ops)
    assert bool(plain | dw3x3) == has_thresholds
    elf = build_firmware(sources, "m", cpu, tmp_path)
    symbols = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    linked = set(re.findall(r" [Tt] (qc_threshold_store\w*)$", symbols, flags=re.M))
    assert linked == (plain if cpu == "cortex-m4" else plain | dw3x3)


def test_host_plain_c(program):
    assert_c_matches(program, n=3, min_distinct=16, sanitize=False)


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m3", "cortex-m7", "cortex-m33"])
def test_qemu_bit_exact(program, cpu):
    assert_qemu_matches(program, cpu, seed=5, name="lb", min_distinct=1)


def _array_bytes(source: str) -> int:
    sizes = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "int32_t": 4, "uint32_t": 4, "qc_rq": 12}
    import re

    return sum(sizes[t] * int(n) for t, n in re.findall(r"static const (\w+) \w+\[(\d+)\]", source))


def test_report_counts_emitted_bytes(program):
    """report.op_param_bytes of every conv/dense adds up to the bytes of the arrays the emitter writes
    (the programs' other ops, reshapes and concats, have no arrays)."""
    src = emit_c(program, plan_memory(program), "m")["m.c"]
    assert all(isinstance(op, (ir.Conv2D, ir.Dense, ir.Reshape, ir.Concat)) for op in program.ops)
    assert sum(report.op_param_bytes(op) for op in program.ops) == _array_bytes(src)


def test_packed_flash_is_packed_size():
    """4-bit weights take half a byte each (+ row padding to 4 k and an even channel count)."""
    b = Builder(504, (16, 6, 6))
    b.conv(b.input, 32, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=4)
    op4 = b.ops[-1]
    b.conv(b.input, 32, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=8)
    op8 = b.ops[-1]
    b.conv(b.input, 32, kernel=(3, 3), padding=(1, 1, 1, 1), w_bits=2)
    op2 = b.ops[-1]
    n = 32 * 16 * 9
    fixed = 16 * 32  # bias + rq records
    assert report.op_param_bytes(op8) == n + fixed
    assert report.op_param_bytes(op4) == n // 2 + fixed == ir.weight_storage_bytes(op4) + fixed
    assert report.op_param_bytes(op2) == n // 4 + fixed == ir.weight_storage_bytes(op2) + fixed


def test_codebook_tables_are_shared_when_it_saves_flash():
    """Channels with equal level tables store the table once plus a uint8 row index per channel;
    per-channel tables stay as they are when sharing saves nothing. Bytes by hand: 10 channels of
    16 levels = 160 B per channel; 3 distinct tables: 3 * 16 + 10 = 58 B."""
    rng = np.random.default_rng(0)
    table = np.sort(rng.integers(-40, 41, (3, 16)), axis=1).astype(np.int8)
    which = np.array([0, 1, 2, 0, 0, 1, 2, 2, 1, 0])
    codes = rng.integers(0, 16, (10, 4, 3, 3)).astype(np.uint8)
    cb = ir.Codebook(codes, table[which], 4)
    rows, index = cb.shared_tables()
    assert rows.shape == (3, 16) and index.dtype == np.uint8 and index.shape == (10,)
    assert np.array_equal(rows[index], table[which])
    assert cb.table_bytes == 58
    distinct = ir.Codebook(codes, np.sort(rng.integers(-40, 41, (10, 16)), axis=1).astype(np.int8), 4)
    rows, index = distinct.shared_tables()
    assert index is None and rows.shape == (10, 16) and distinct.table_bytes == 160
