"""The common tail of the benchmark scripts: print the table and the target verdicts, write the JSON."""
from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["print_and_save"]


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
            "command": f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "top1_on": "integer interpreter (Artifact.run), test split", **meta,
            "targets": verdicts, "results": results,
        }, indent=1) + "\n")
