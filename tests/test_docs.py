"""docs/: the generated pages match the code and the benchmark results, links resolve, the
runnable examples run, and the CLI page's exit-code table is the one the CLI uses."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

from qcompile import cli, docs_gen

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_generated_docs_are_up_to_date(capsys):
    code = docs_gen.main(["--root", str(ROOT), "--check"])
    assert code == 0, capsys.readouterr().err + " (run: python -m qcompile.docs_gen)"


def test_ops_table_lists_every_kind_and_spelling():
    from qcompile import ops

    text = (DOCS / "ops.md").read_text()
    for kind in ops.Kind:
        if kind.value not in docs_gen._INTERNAL_KINDS:
            assert f"\n| {kind.value} |" in text
    for spelling in ("`nn.Conv2d`", "`F.relu`", "`x.view()`", "`torch.cat`", "`nn.Softmax`"):
        assert spelling in text


def test_docs_index_and_links():
    index = (DOCS / "README.md").read_text()
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    linked = set(re.findall(r"\]\(([\w.]+\.md)\)", index))
    assert pages == linked, f"docs/README.md links {sorted(linked)}, docs/ holds {sorted(pages)}"
    for md in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", md.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (md.parent / target).exists(), f"{md.name}: broken link {target}"


def test_cli_exit_code_table_matches_the_cli():
    rows = re.findall(r"^\|\s*(\d+)\s*\|([^|]*)\|([^|]*)\|\s*$", (DOCS / "cli.md").read_text(), re.M)
    documented = {int(code): errors for code, _, errors in rows}
    used = {code for _, code, _ in cli.EXIT_CODES} | {0, cli.INTERNAL_ERROR}
    assert set(documented) == used
    for cls, code, _ in cli.EXIT_CODES[:-1]:
        assert cls.__name__ in documented[code], f"{cls.__name__} (exit {code}) missing from docs/cli.md"


def _runnable_blocks(page: str) -> list[str]:
    blocks = re.findall(r"^([ \t]*)```python\n(.*?)^[ \t]*```", (DOCS / page).read_text(), re.S | re.M)
    return [textwrap.dedent(b) for _, b in blocks if "import qcompile" in b]


@pytest.mark.parametrize("page", ["custom_pass.md", "tracing.md"])
def test_doc_examples_run(page, capsys):
    blocks = _runnable_blocks(page)
    assert blocks, f"{page} has no runnable example"
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), {"__name__": "__docs__"})  # noqa: S102 - our own docs
