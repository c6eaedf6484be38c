"""Real architectures written the way public code writes them (issue 10), compiled with no change to
their forward() and bit-exact in C on the host and on QEMU Cortex-M4 (the models:
qcompile/zoo/public_style.py):

* MTCNN's PNet and RNet (facenet-pytorch's layer layout): PReLU, ceil-mode max pooling, a permute
  before the dense head, Softmax(dim=1) on a feature map, returning (boxes, probabilities);
* a ShuffleNetV2 stage (torchvision's InvertedResidual): chunk, channel shuffle (view, transpose,
  contiguous, view), concatenation, depthwise convs;
* a small U-Net (milesial/Pytorch-UNet's layout): ConvTranspose2d and bilinear upsampling in the
  decoder, F.pad to the skip's size, skip concatenation, a 1x1 output head.
"""
from __future__ import annotations

import pytest
import torch

import qcompile
from qcompile.backends.qemu import toolchain_available
from qcompile.zoo.public_style import ARCHITECTURES
from zoo_models import randomize_batchnorm


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_compiles_unchanged_and_is_bit_exact(name):
    cls, shape = ARCHITECTURES[name]
    torch.manual_seed(3)
    model = randomize_batchnorm(cls(), 3).eval()
    calib = torch.rand(32, *shape) * 2 - 1
    art = qcompile.compile(model, (calib[:1],), calib=calib, name=name, progress=False)
    xs = calib[:3]
    art.verify(torch.cat([xs, torch.randn(1, *shape)]), on="host")
    if toolchain_available():
        art.verify(xs[:2], on="qemu", cpu="cortex-m4")
    with torch.no_grad():
        ref = model(xs)
    got = art.run(xs)
    refs, gots = (ref, got) if isinstance(ref, tuple) else ((ref,), (got,))
    assert type(got) is type(ref)
    for g, r in zip(gots, refs):
        err = float(torch.linalg.vector_norm(g - r))
        assert err <= 0.15 * float(torch.linalg.vector_norm(r)) + 1e-3, f"{name}: far from float ({err:.3g})"
