"""``benchmarks/bench_common.print_and_save`` records a command that re-runs the benchmark when
pasted into a shell: arguments with spaces (row names such as ``"n2uq W4A4"``) keep their quotes."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_common  # noqa: E402


def test_recorded_command_round_trips_through_the_shell(tmp_path, capsys):
    argv = ["--models", "fashion_plain", "--rows", "n2uq W4A4", "lsq W4A4", "--json", str(tmp_path / "r.json")]
    bench_common.print_and_save("lowbit.py", argv, [{"model": "m", "row": "n2uq W4A4"}],
                                table=lambda rs: "table", targets=lambda rs: {"t": "met"},
                                json_path=tmp_path / "r.json", samples=8)
    blob = json.loads((tmp_path / "r.json").read_text())
    assert shlex.split(blob["command"]) == ["python", "benchmarks/lowbit.py", *argv]
    assert blob["targets"] == {"t": "met"} and blob["samples"] == 8
    assert "t: met" in capsys.readouterr().out


def test_run_cached_models_skips_uncached_models_unless_training(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    (tmp_path / "have-v1.pt").write_bytes(b"")
    recipes = {"a": SimpleNamespace(name="have"), "b": SimpleNamespace(name="missing")}
    ran = []

    def bench_one(name):
        ran.append(name)
        return [{"model": name}]

    results, skipped = bench_common.run_cached_models(["a", "b"], recipes, bench_one)
    assert ran == ["a"] and results == [{"model": "a"}] and skipped == {"b": "not in the cache"}
    assert "b: skipped, not cached" in capsys.readouterr().out
    results, skipped = bench_common.run_cached_models(["a", "b"], recipes, bench_one, train=True)
    assert ran == ["a", "a", "b"] and [r["model"] for r in results] == ["a", "b"] and skipped == {}
