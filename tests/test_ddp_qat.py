"""qcompile.qat.train under torchrun: two gloo processes on this machine end with identical
parameters and dual variables, equal (up to float rounding) to the single-process run with the
same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_qat import Tiny
    from qcompile.qat import train

    distributed = sys.argv[2] == "ddp"
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 8, 8, generator=g)
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    p = train(model, (x[:1],), (x, y), method="constrained", bits=3, epochs=1, batch_size=32,
              calib_samples=64, progress=False)
    torch.save({{"state": p.graph.state_dict(), "duals": p.dual_variables}}, f"{{sys.argv[1]}}.{{sys.argv[2]}}{{rank}}.pt")
    if distributed:
        dist.destroy_process_group()
''')


def test_two_ranks_end_identical(tmp_path: Path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    out = str(tmp_path / "res")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), out, "ddp"], env=env, capture_output=True, text=True, timeout=120)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    sys.argv, argv = ["worker", out, "single"], sys.argv
    try:  # the single-process reference runs in this process
        exec(compile(script.read_text(), str(script), "exec"), {"__name__": "__main__"})
    finally:
        sys.argv = argv
    r0, r1 = (torch.load(f"{out}.ddp{r}.pt") for r in (0, 1))
    one = torch.load(f"{out}.single0.pt")
    assert r0["state"].keys() == r1["state"].keys() == one["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["duals"] == r1["duals"] and max(r0["duals"].values()) > 0
    # each rank saw half of every global batch: the averaged gradients are the single-process ones
    for k, v in one["state"].items():
        if v.is_floating_point() and k.endswith("weight"):
            torch.testing.assert_close(r0["state"][k], v, rtol=1e-3, atol=1e-4)
