"""``report.html``: one self-contained page (inline SVG figures, no scripts, no external files) with
the per-layer SQNR and bit widths, the arena occupancy over the schedule, flash by layer and, when
``Artifact.measure()`` ran on QEMU, instructions by layer.

The figures are drawn with matplotlib (a core dependency). Output is byte-identical for the same
artifact: SVG ids come from a fixed ``svg.hashsalt``, no date is written, text stays text
(``svg.fonttype="none"``). If matplotlib cannot be imported the page is still written, with a note
in place of each figure.
"""
from __future__ import annotations

import html
import io
from typing import Any

from qcompile.backends import ir
from qcompile.backends.memory_plan import MemoryPlan

__all__ = ["memory_timeline", "render_html"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.fig { margin: 1em 0; } .note { color: #666; font-size: 0.9em; } code { background: #f4f4f4; padding: 0 3px; }
pre { overflow-x: auto; font-size: 0.8em; }
"""


def memory_timeline(program: ir.Program, plan: MemoryPlan) -> dict[str, Any]:
    """Arena occupancy over the schedule: ``live_bytes[i]`` is the bytes of arena tensors alive while
    op ``i`` runs (in-place outputs share their input's bytes and are counted once); ``tensors`` lists
    ``(name, offset, bytes, first_op, last_op)`` of every arena tensor, as placed by the planner."""
    tensors = []
    for tid, (first, last) in sorted(plan.lifetimes.items()):
        if not plan.in_arena(tid):
            continue
        t = program.tensors[tid]
        tensors.append({"tensor": t.name, "offset": plan.offsets[tid], "bytes": t.size, "first_op": first, "last_op": last})
    live = []
    for i in range(len(program.ops)):
        spans = {(r["offset"], r["bytes"]) for r in tensors if r["first_op"] <= i <= r["last_op"]}
        live.append(sum(b for _, b in spans))
    return {"live_bytes": live, "tensors": tensors, "arena_bytes": plan.arena_size,
            "lower_bound": plan.lower_bound}


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline SVG in HTML


def _figures(data: dict[str, Any], timeline: dict[str, Any]) -> dict[str, str]:
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    def subplots(figsize):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots()

    layers = data["layers"]
    names = [f"{r['index']} {r['name']}" for r in layers]
    figs: dict[str, str] = {}
    rc = {"svg.hashsalt": "qcompile-report", "svg.fonttype": "none", "font.size": 8}
    with matplotlib.rc_context(rc):
        height = max(2.5, 0.18 * len(layers) + 1)

        fig, ax = subplots(figsize=(9, height))
        sq = [r["sqnr_db"] if isinstance(r["sqnr_db"], (int, float)) and r["sqnr_db"] != float("inf") else None
              for r in layers]
        y = range(len(layers))
        ax.barh([i for i in y if sq[i] is not None], [v for v in sq if v is not None], color="#4c72b0")
        for i, r in enumerate(layers):
            label = f"W{r['w_bits']}A{r['a_bits']}" if r["w_bits"] else f"A{r['a_bits']}"
            ax.text(0.5, i, label, va="center", fontsize=7, color="white" if sq[i] else "#444")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel("SQNR vs float model (dB), 64 calibration samples; label: weight/activation bits")
        ax.set_title("Per-layer SQNR and bit width")
        figs["sqnr"] = _svg(fig)

        fig, ax = subplots(figsize=(9, 3.5))
        for r in timeline["tensors"]:
            ax.broken_barh([(r["first_op"] - 0.4, r["last_op"] - r["first_op"] + 0.8)], (r["offset"], r["bytes"]),
                           facecolors="#55a868", edgecolors="#2d5e3a", linewidth=0.5, alpha=0.8)
        ax.step(range(len(timeline["live_bytes"])), timeline["live_bytes"], where="mid", color="#c44e52",
                label="live bytes")
        ax.axhline(timeline["arena_bytes"], color="#333", linestyle="--", linewidth=0.8,
                   label=f"arena {timeline['arena_bytes']:,} B")
        ax.axhline(timeline["lower_bound"], color="#888", linestyle=":", linewidth=0.8,
                   label=f"lower bound {timeline['lower_bound']:,} B")
        ax.set_xlabel("op index (schedule order)")
        ax.set_ylabel("arena offset / bytes")
        ax.set_title("Arena occupancy over the schedule (boxes: tensors at their planned offsets)")
        ax.legend(loc="upper right", fontsize=7)
        figs["memory"] = _svg(fig)

        fig, ax = subplots(figsize=(9, height))
        ax.barh(list(y), [r["param_bytes"] for r in layers], color="#8172b2")
        ax.set_yticks(list(y), names)
        ax.invert_yaxis()
        ax.set_xlabel("constant bytes in flash (weights as stored, bias, requantization records, tables)")
        ax.set_title(f"Flash by layer (total {data['summary']['param_bytes']:,} B)")
        figs["flash"] = _svg(fig)

        if data.get("mcu"):
            mcu = data["mcu"]
            fig, ax = subplots(figsize=(9, height))
            ax.barh(list(y), [r.get("instructions") or 0 for r in layers], color="#dd8452")
            ax.set_yticks(list(y), names)
            ax.invert_yaxis()
            ax.set_xlabel(f"instructions ({mcu['cpu']} {mcu['opt']}, QEMU; instructions, not cycles)")
            ax.set_title(f"Instructions by layer ({mcu['instructions_per_inference']:,} per inference)")
            figs["instructions"] = _svg(fig)
        return figs


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
        return f'<td class="n">{html.escape(text)}</td>' if num else f"<td>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def render_html(name: str, data: dict[str, Any], timeline: dict[str, Any], text_report: str,
                qemu_instructions: list[int] | None = None) -> str:
    """The page for ``report.json``-style ``data`` (``Artifact.report_data()``) and the memory timeline.
    ``qemu_instructions``: per-inference counts of the last ``verify(on="qemu")``, shown when no
    ``measure()`` result (with per-layer counts) is in ``data``."""
    try:
        figs = _figures(data, timeline)
        missing = ""
    except ImportError as exc:
        figs = {}
        missing = (f"figures not drawn: matplotlib could not be imported ({html.escape(str(exc))}); "
                   "pip install matplotlib and save again")
    s = data["summary"]
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>qcompile report: {html.escape(name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>qcompile report: <code>{html.escape(name)}</code></h1>",
             f"<p>{s['ops']} ops, {s['macs']:,} MACs, {s['param_bytes']:,} B constants in flash, "
             f"arena {s['arena_bytes']:,} B (lower bound {s['arena_lower_bound']:,} B). Input {s['input']['shape']} "
             f"scale {s['input']['scale']:.6g} zero point {s['input']['zero_point']}; output {s['output']['shape']} "
             f"scale {s['output']['scale']:.6g} zero point {s['output']['zero_point']}.</p>"]
    if s.get("outputs"):
        parts.append(f"<p>{len(s['outputs'])} outputs, one after another in the output buffer: " + "; ".join(
            f"<code>{html.escape(o['name'])}</code> {o['shape']} scale {o['scale']:.6g} zero point {o['zero_point']}"
            for o in s["outputs"]) + ".</p>")
    if data.get("budget"):
        b = data["budget"]
        t = b["target"]
        parts.append(f"<p>Memory budget ({html.escape(str(t.get('part') or t.get('cpu')))}): flash "
                     f"{b['flash']['total']:,} B estimated" + (f" of {t['flash']:,} B" if t.get("flash") else "")
                     + f", RAM {b['ram']['total']:,} B" + (f" of {t['ram']:,} B" if t.get("ram") else "") + ".</p>")
    if data.get("mcu"):
        m = data["mcu"]
        parts.append(f"<p>{html.escape(m['cpu'])} {html.escape(m['opt'])} on QEMU: "
                     f"{m['instructions_per_inference']:,} instructions per inference, flash {m['flash_bytes']:,} B, "
                     f"static RAM {m['static_ram_bytes']:,} B (harness included). {html.escape(m['note'])}.</p>")
    elif qemu_instructions:
        parts.append(f"<p>Last <code>verify(on=\"qemu\")</code>: {max(qemu_instructions):,} instructions per "
                     f"inference (max over {len(qemu_instructions)} inputs). Per-layer counts need "
                     "<code>art.measure(cpu=...)</code> before <code>save()</code>.</p>")
    else:
        parts.append('<p class="note">No on-target run recorded: <code>art.measure(cpu="cortex-m4")</code> '
                     "before <code>save()</code> adds instructions by layer.</p>")
    titles = {"sqnr": "Per-layer SQNR and bit width", "memory": "Memory timeline",
              "flash": "Flash by layer", "instructions": "Instructions by layer"}
    for key, title in titles.items():
        if key == "instructions" and not data.get("mcu"):
            continue
        parts.append(f"<h2>{title}</h2>")
        parts.append(f'<div class="fig" id="fig-{key}">{figs[key]}</div>' if key in figs
                     else f'<p class="note">{missing}</p>')
    rows = [[r["index"], r["op"], r["name"], "x".join(map(str, r["shape"])), r["w_bits"] or "-", r["a_bits"],
             f"{r['in_scale']:.4g}", f"{r['out_scale']:.4g}", r["out_zero_point"],
             "-" if r["sqnr_db"] is None else (r["sqnr_db"] if isinstance(r["sqnr_db"], str)
                                                else f"{r['sqnr_db']:.1f}"),
             r["param_bytes"], r["macs"], r["arena_offset"]] + ([r.get("instructions") or "-"] if data.get("mcu") else [])
            for r in data["layers"]]
    headers = ["#", "op", "name", "shape", "w bits", "a bits", "s in", "s out", "zp out", "SQNR dB", "flash B",
               "MACs", "arena off"] + (["instructions"] if data.get("mcu") else [])
    parts += ["<h2>Layers</h2>", _table(headers, rows),
              "<h2>Full text report</h2>", f"<pre>{html.escape(text_report)}</pre>", "</body></html>\n"]
    return "\n".join(parts)
