"""Pieces shared by the PTQ-model benchmark scripts ``lowbit.py``, ``ptq_seeds.py`` and ``qat.py``: top-1,
the model cache check, the host bit-exactness verdict, the model/data setup and the table/JSON tail."""
from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["top1", "cached", "bit_exact_host", "load_model", "run_cached_models", "merge_results", "print_and_save"]


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) == y).float().mean())


def cached(recipe) -> bool:
    """Whether ``recipe``'s trained weights are in the qcompile model cache."""
    from qcompile.zoo.train import cache_dir

    return any(cache_dir().glob(f"{recipe.name}-v*.pt"))


def run_cached_models(names: list[str], recipes: dict, bench_one: Callable[[str], list[dict]],
                      train: bool = False) -> tuple[list[dict], dict[str, str]]:
    """``(results, skipped)``: the rows ``bench_one(name)`` returns for every model in ``names``
    whose trained weights are cached (every model when ``train``: the script trains and caches
    it), and ``{name: reason}`` for the models skipped, each also printed."""
    results: list[dict] = []
    skipped: dict[str, str] = {}
    for name in names:
        if not train and not cached(recipes[name]):
            skipped[name] = "not in the cache"
            print(f"{name}: skipped, not cached", flush=True)
            continue
        results += bench_one(name)
    return results, skipped


def bit_exact(art, xs: torch.Tensor, on: str = "host") -> str:
    """``art.verify(xs, on=on)`` as a table cell: yes, NO, or the error a broken toolchain raised.
    ``on="qemu"``: the generated C cross-compiled for Cortex-M4 and run on QEMU against the
    integer interpreter."""
    import qcompile

    try:
        art.verify(xs, on=on)
        return "yes"
    except qcompile.VerificationError:
        return "NO"
    except Exception as exc:  # noqa: BLE001 - a broken toolchain is reported, not hidden
        return f"error: {type(exc).__name__}: {str(exc)[:120]}"


def bit_exact_host(art, xs: torch.Tensor) -> str:
    return bit_exact(art, xs, "host")


def bit_exact_qemu(art, xs: torch.Tensor) -> str:
    return bit_exact(art, xs, "qemu")


def evaluation_split(data, samples: int, eval_on: str = "test", n_eval: int = 0):
    """``(x_train, y_train, x_eval, y_eval)`` of a recipe's ``data``: the whole training split and
    the samples to evaluate on -- the test split, or with ``eval_on="heldout"`` the training samples
    after the first ``samples`` (to choose settings without the test split); their first ``n_eval``
    when given."""
    x_train, y_train, x_test, y_test = data
    if eval_on == "heldout":
        x_test, y_test = x_train[samples:], y_train[samples:]
        if len(x_test) == 0:
            raise SystemExit(f"--eval-on heldout: no training samples after the first --samples {samples}")
    if n_eval:
        x_test, y_test = x_test[:n_eval], y_test[:n_eval]
    return x_train, y_train, x_test, y_test


def evaluated_on(eval_on: str = "test", samples: int = 0) -> str:
    """The ``top1_on`` label of a result file for :func:`evaluation_split`'s choice (``samples``:
    the training samples used, after which the held-out ones start)."""
    if eval_on == "heldout":
        return f"integer interpreter (Artifact.run), training samples {samples}.. (held out from QAT)"
    return "integer interpreter (Artifact.run), test split"


def load_model(name: str, recipe, samples: int, n_eval: int = 0, eval_on: str = "test"):
    """``(model, calib, x_test, y_test, float_top1, float_row)`` of a PTQ-benchmark recipe: the cached model, the
    first ``samples`` training inputs, the evaluation samples (its first ``n_eval`` when given) and
    the float row of the results for model ``name`` (printed). The evaluation samples are the test
    split, or with ``eval_on="heldout"`` the training samples after the first ``samples`` (for
    choosing settings without looking at the test split)."""
    from qcompile.zoo import load_or_train, predict

    data = recipe.data_fn()
    x_train, _, x_test, y_test = evaluation_split(data, samples, eval_on, n_eval)
    model, _ = load_or_train(recipe, data, progress=False)
    float_top1 = top1(predict(model, x_test), y_test)
    print(f"{name}: float {float_top1:.2f}", flush=True)
    row = {"model": name, "row": "float", "top1": round(float_top1, 2), "drop": 0.0}
    return model, x_train[:samples], x_test, y_test, float_top1, row


def merge_results(json_path: Path | None, results: list[dict], key: tuple[str, ...] = ("model", "row")) -> list[dict]:
    """``results`` plus the results already in ``json_path`` whose ``key`` fields were not run
    again (``--merge``: re-run some rows of some models, keep the rest of a committed table). A
    kept row records the command that produced it (``command``) and its ``date``."""
    if not json_path or not json_path.is_file():
        return results
    ran = {tuple(r.get(k) for k in key) for r in results}
    blob = json.loads(json_path.read_text())
    kept = [{**r, "command": r.get("command", blob.get("command")), "date": r.get("date", blob.get("date"))}
            for r in blob.get("results", []) if tuple(r.get(k) for k in key) not in ran]
    return kept + results


def print_and_save(script: str, argv: list[str] | None, results: list[dict], table: Callable[[list[dict]], str],
                   targets: Callable[[list[dict]], dict[str, str]], json_path: Path | None, **meta: Any) -> None:
    """Print ``table(results)`` and ``targets(results)``; with ``json_path`` write them as JSON
    with the command line, date, versions and ``meta``."""
    print()
    print(table(results))
    verdicts = targets(results)
    for k, v in verdicts.items():
        print(f"{k}: {v}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({
            "command": shlex.join(["python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "top1_on": evaluated_on(), **meta,
            "targets": verdicts, "results": results,
        }, indent=1) + "\n")
