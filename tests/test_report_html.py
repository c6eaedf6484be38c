"""report.html: self-contained (no external resources), the figures the issue asks for, and it
renders in headless Chromium; the screenshot goes to the test artifacts."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import qcompile
from qcompile.backends.qemu import toolchain_available
from qcompile.report_html import memory_timeline, render_html
from zoo_models import build

torch.set_num_threads(1)

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def art():
    model, shape = build("residual", seed=3)
    calib = torch.randn(48, *shape, generator=torch.Generator().manual_seed(7))
    return qcompile.compile(model, (calib[:1],), calib=calib, name="residual", progress=False)


def _external_refs(page: str) -> list[str]:
    """src/href values that would make the browser fetch something (anything not inline)."""
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    return [r for r in refs if not r.startswith(("data:", "#"))]


def test_report_html_is_self_contained_with_the_figures(art, tmp_path):
    out = art.save(tmp_path / "build")
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not _external_refs(page), _external_refs(page)
    assert "<script" not in page and "@import" not in page
    for fig in ("sqnr", "memory", "flash"):
        assert re.search(rf'id="fig-{fig}"><svg', page), f"figure {fig} missing"
    assert 'id="fig-instructions"' not in page  # no QEMU measurement yet: a note says how to get one
    assert "art.measure" in page
    for layer in art.program.ops:
        assert f"<td>{layer.name}</td>" in page
    assert page == (art.save(tmp_path / "again") / "report.html").read_text()


def test_without_matplotlib_the_page_says_why(art, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    page = render_html(art.name, art.report_data(), memory_timeline(art.program, art.plan), "text")
    assert "<svg" not in page and page.count("figures not drawn: matplotlib could not be imported") == 3
    assert "<td>conv0</td>" in page  # the layer table is still there


def test_several_outputs_are_listed(tmp_path):
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.a, self.b = torch.nn.Linear(4 * 6 * 6, 3), torch.nn.Linear(4 * 6 * 6, 2)

        def forward(self, x):
            h = torch.relu(self.conv(x)).flatten(1)
            return self.a(h), self.b(h)

    calib = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    art = qcompile.compile(TwoHeads().eval(), calib[:1], calib=calib, progress=False)
    outs = art.report_data()["summary"]["outputs"]
    assert [o["shape"] for o in outs] == [[3], [2]]
    page = (art.save(tmp_path / "b") / "report.html").read_text()
    assert "2 outputs, one after another in the output buffer" in page
    assert "2 outputs, in return order" in art.report()


def test_memory_timeline_matches_the_plan(art):
    tl = memory_timeline(art.program, art.plan)
    assert len(tl["live_bytes"]) == len(art.program.ops)
    assert max(tl["live_bytes"]) <= art.plan.arena_size
    assert max(tl["live_bytes"]) >= art.plan.lower_bound - 8 * len(tl["tensors"])  # alignment padding only
    for r in tl["tensors"]:
        assert 0 <= r["offset"] and r["offset"] + r["bytes"] <= art.plan.arena_size
        assert r["first_op"] <= r["last_op"] < len(art.program.ops)


@pytest.mark.skipif(not toolchain_available(), reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_instructions_by_layer_after_measure(tmp_path):
    model, shape = build("mlp")
    calib = torch.randn(32, *shape, generator=torch.Generator().manual_seed(0))
    art = qcompile.compile(model, (calib[:1],), calib=calib, name="mlp", progress=False)
    mcu = art.measure(cpu="cortex-m4")
    page = (art.save(tmp_path / "b") / "report.html").read_text()
    assert re.search(r'id="fig-instructions"><svg', page)
    assert f"{mcu['instructions_per_inference']:,} instructions per inference" in page
    # only verify(on="qemu") ran (no per-layer counts): its total is shown with how to get per-layer ones
    data = {**art.report_data(), "mcu": None}
    totals = art.last_qemu_run.instructions
    page = render_html(art.name, data, memory_timeline(art.program, art.plan), "", qemu_instructions=totals)
    assert f"{max(totals):,} instructions per inference (max over {len(totals)} inputs)" in page
    assert 'id="fig-instructions"' not in page and "art.measure(cpu=...)" in page


def _browser() -> str | None:
    for b in _BROWSERS:
        if shutil.which(b):
            return shutil.which(b)
    return None


def test_report_renders_in_headless_chromium(art, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser on PATH (tried {', '.join(_BROWSERS)}; Debian: apt-get install chromium)")
    out = art.save(tmp_path / "build")
    shot = tmp_path / "report_html.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
           (out / "report.html").resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), f"{' '.join(cmd)}\n{r.stderr[-2000:]}"
    import matplotlib.image

    img = matplotlib.image.imread(str(shot))
    assert img.shape[:2] == (2400, 1200)
    # the page drew something: many distinct colours (text, three coloured figures), not a blank page
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"the screenshot looks blank ({len(colours)} colours)"
    purple = np.all(np.abs(img[..., :3] - np.array([0x81, 0x72, 0xb2]) / 255) < 0.02, axis=-1).sum()
    assert purple > 1000, "the flash-by-layer bars are not visible in the screenshot"
    dest = os.environ.get("QC_TEST_ARTIFACTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(dest) / shot.name)
    print(f"screenshot: {shot}" + (f" (copied to {dest})" if dest else ""))
