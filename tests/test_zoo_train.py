"""Zoo training is reproducible whatever thread count the caller set, and leaves global state as found."""
from __future__ import annotations

import torch
from torch import nn

from qcompile.zoo.train import TRAIN_THREADS, train_classifier


def _train(threads: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1, 16, 16, generator=gen)
    y = torch.randint(0, 10, (512,), generator=gen)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        train_classifier(model, x, y, epochs=2, lr=1e-2, batch_size=32, progress=False)
        assert torch.get_num_threads() == threads  # restored
    finally:
        torch.set_num_threads(before)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_weights_do_not_depend_on_the_callers_thread_count():
    """Convolution gradients are reduced per thread, so without the pin the weights differ with the
    thread count (they do for this net: the test fails if training runs on the caller's threads);
    training pins TRAIN_THREADS, so a model trained under 1 thread is bit-identical to one
    trained under 3."""
    assert TRAIN_THREADS == 2
    a, b = _train(1), _train(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.are_deterministic_algorithms_enabled()
