"""Shared check of the operator tests (tests/test_ops_*.py): compile a model, then the generated C must
equal the interpreter bit for bit (host, and optionally QEMU Cortex-M4) and the integer model must
stay close to the float one."""
from __future__ import annotations

import numpy as np
import torch

import qcompile
from qcompile.backends.qemu import toolchain_available


_QEMU_DONE: set[str] = set()


def compile_and_check(model, shape, *, seed=0, qemu=False, rel_tol=0.12, calib_n=32, inputs=None, qemu_once=None):
    """Compile ``model`` for inputs ``(N, *shape)``; returns the artifact after the checks.

    ``qemu_once="family"``: also run on QEMU Cortex-M4 the first time this family is checked in the
    process (one random-shape example per hypothesis test, the rest on the host)."""
    if qemu_once is not None and qemu_once not in _QEMU_DONE:
        _QEMU_DONE.add(qemu_once)
        qemu = True
    torch.manual_seed(seed)
    model = model.eval()
    calib = torch.randn(calib_n, *shape)
    art = qcompile.compile(model, (calib[:1],), calib=calib, progress=False)
    xs = calib[:4] if inputs is None else inputs  # in the calibrated range, for the closeness check
    art.verify(torch.cat([xs, 3 * torch.randn(2, *shape)]), on="host")
    if qemu and toolchain_available():
        art.verify(xs[:2], on="qemu", cpu="cortex-m4")
    with torch.no_grad():
        ref = model(xs).double()
    got = art.run(xs).double()
    err = float(torch.linalg.vector_norm(got - ref))
    norm = float(torch.linalg.vector_norm(ref))
    step = art.program.output.scale * np.sqrt(ref.numel())
    assert err <= rel_tol * norm + 2 * step, f"integer model far from float: |err| {err:.4g} vs |ref| {norm:.4g}"
    return art
