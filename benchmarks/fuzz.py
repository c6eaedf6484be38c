"""Release fuzzing profile: random models -> compile -> C on the host (and a sample on QEMU
Cortex-M4) bit-exactly equal to the interpreter. Prints a summary and writes JSON.

    python benchmarks/fuzz.py                       # 2,000 host examples + 50 on QEMU Cortex-M4
    python benchmarks/fuzz.py --examples 200 --qemu 10 --json /tmp/fuzz.json

The generator is ``tests/test_fuzz_graphs.py``'s (weight bits 2..8, PWLQ, groups, dilation,
strides larger than kernels, 1x1 maps, Conv1d, Linear heads, LUT/PReLU activations). Hypothesis
runs derandomized, so the same qcompile and generator give the same examples.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_fuzz_graphs import HostRunner, Spec, check_spec, compile_spec, fuzz_spec  # noqa: E402

torch.set_num_threads(1)


def _features(s: Spec) -> list[str]:
    out = [f"weight_bits={s.weight_bits}", s.quantizer, f"conv{s.rank}d", f"head={s.head[0]}"]
    for kind, p in s.plan:
        out.append(kind)
        if kind == "conv":
            out += [f"act={p['act']}"]
            if p["groups"] > 1:
                out.append("depthwise" if p["groups"] == p["cout"] else "grouped")
            if p["stride"] > p["k"]:
                out.append("stride>kernel")
            if p["dil"] > 1 and p["k"] > 1:
                out.append("dilated")
            if p["cout"] % 4:
                out.append("cout%4!=0")
    if s.size == 1 or any(k == "gap_conv" for k, _ in s.plan):
        out.append("1x1 maps")
    return out


def run(examples: int, check, label: str, progress: Path | None = None) -> dict:
    """Run ``check`` on ``examples`` generated specs; every 100 examples the counts so far go to
    ``progress`` (so an interrupted release run still leaves a record)."""
    seen: Counter = Counter()
    count = [0]
    start = time.perf_counter()

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(fuzz_spec())
    def body(spec):
        count[0] += 1
        seen.update(_features(spec))
        check(spec)
        if progress is not None and count[0] % 100 == 0:
            progress.write_text(json.dumps({"label": label, "examples_passed": count[0],
                                            "seconds": round(time.perf_counter() - start, 1)}) + "\n")

    failure = None
    try:
        body()
    except Exception as exc:  # noqa: BLE001 - a failure is a result to record
        failure = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    print(f"{label}: {count[0]} examples run, {'FAILED: ' + failure[:400] if failure else 'all bit-exact'}, "
          f"{seconds:.0f} s")
    return {"examples_requested": examples, "examples_run": count[0], "failure": failure,
            "seconds": round(seconds, 1), "features": dict(sorted(seen.items()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="host examples (default 2000)")
    ap.add_argument("--qemu", type=int, default=50, help="QEMU Cortex-M4 examples (default 50; 0 skips)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fuzz.json"))
    args = ap.parse_args()

    result = {"command": "python benchmarks/fuzz.py " + " ".join(sys.argv[1:]),
              "versions": {p: metadata.version(p) for p in ("qcompile", "torch", "numpy", "hypothesis")}
              | {"python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as d:
        runner = HostRunner(Path(d))
        result["host"] = run(args.examples, lambda s: check_spec(s, runner), "host (gcc -O2)",
                             Path(args.json).with_suffix(".progress"))
    if args.qemu:
        from qcompile.backends.qemu import toolchain_available

        if toolchain_available():
            def on_qemu(s):
                art, xs = compile_spec(s)
                art.verify(xs, on="qemu", cpu="cortex-m4")

            result["qemu_cortex_m4"] = run(args.qemu, on_qemu, "QEMU Cortex-M4 (-O2)")
        else:
            result["qemu_cortex_m4"] = "skipped: arm-none-eabi-gcc / qemu-system-arm not installed"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.json}")
    failed = result["host"]["failure"] or (isinstance(result.get("qemu_cortex_m4"), dict)
                                           and result["qemu_cortex_m4"]["failure"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
