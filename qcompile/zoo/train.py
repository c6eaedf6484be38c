"""Deterministic training, evaluation and cached pretrained models for the zoo.

:func:`train_classifier` trains any classifier with AdamW and a one-cycle learning-rate
schedule; :func:`evaluate` measures top-1 accuracy. The ``pretrained_*`` getters train a
zoo model once, store its ``state_dict`` in a cache directory and afterwards just load it:

* cache directory: ``$QCOMPILE_CACHE`` if set, else ``~/.cache/qcompile`` (or the
  ``cache_dir`` argument);
* file name: ``<model>-v<version>-<fingerprint>.pt``, where the fingerprint hashes the
  model's ``repr``, its parameter shapes and the training recipe, so a changed architecture
  or recipe never loads stale weights (bump the version for changes ``repr`` cannot see,
  such as a new ``forward``).

Global state is left as it was found: the torch RNG is forked for the duration of
training, and the deterministic-algorithms flag and the intra-op thread count are restored
afterwards. Training always runs on :data:`TRAIN_THREADS` intra-op threads, whatever the caller
set: float reductions split per thread, so the same recipe trained with 1 and with 2 threads
gives different weights (fashion_mobilenet: 87.82 % vs 87.57 % test top-1), and a cached model
must not depend on the ``--threads`` of the script that happened to train it first.

Measured on 2 CPU cores, torch 2.13 CPU (training time grows if the cores are busy):

============  ==========  ======  ===========  ===========
recipe        data        epochs  train time   test top-1
============  ==========  ======  ===========  ===========
fashion_cnn   60000 imgs  8       ~170 s       91.85 %
mnist1d_cnn   4000 sigs   60      ~12 s        95.10 %
digits_cnn    1437 imgs   30      ~5 s         98.33 %
============  ==========  ======  ===========  ===========
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from .datasets import Dataset, load_digits, load_fashion_mnist, load_mnist1d
from .models import DigitsCNN, FashionCNN, Mnist1dCNN

__all__ = [
    "Augment",
    "Recipe",
    "RECIPES",
    "cache_dir",
    "train_classifier",
    "predict",
    "evaluate",
    "random_hflip",
    "load_or_train",
    "pretrained",
    "pretrained_fashion_cnn",
    "pretrained_mnist1d_cnn",
    "pretrained_digits_cnn",
]

#: ``augment(x_batch, generator) -> x_batch``: a training-time transform on a float batch.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: Bump when anything that affects trained weights changes without changing ``repr(model)``.
ZOO_VERSION = 1
TRAIN_THREADS = 2  # intra-op threads of every zoo training run (the weights depend on it; see above)


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The weight cache: ``override``, else ``$QCOMPILE_CACHE``, else ``~/.cache/qcompile``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("QCOMPILE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "qcompile"


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed a forked torch RNG, enable deterministic algorithms and use :data:`TRAIN_THREADS`
    intra-op threads, restoring all three on exit."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_num_threads(TRAIN_THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(was_threads)
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def train_classifier(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    *,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.0,
    augment: Augment | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> nn.Module:
    """Train ``model`` in place with cross-entropy, AdamW and a one-cycle LR schedule.

    Args:
        model: any ``nn.Module`` mapping ``x_train[i:j]`` to ``[batch, classes]`` logits.
        x_train, y_train: float inputs ``[N, ...]`` and ``int64`` labels ``[N]``.
        epochs: full passes over the data (the last partial batch is dropped).
        lr: peak learning rate of the one-cycle schedule.
        batch_size: mini-batch size.
        seed: seeds weight-independent randomness (shuffling, augmentation, dropout).
            Results are bit-reproducible on the same machine and torch build.
        weight_decay: AdamW decoupled weight decay.
        label_smoothing: passed to ``F.cross_entropy``.
        augment: optional training-time transform, see :data:`Augment`.
        progress: show a tqdm bar with the running loss.
        desc: label of the progress bar.

    Returns:
        ``model``, switched to eval mode.
    """
    if x_train.shape[0] != y_train.shape[0]:
        raise ValueError(f"x_train has {x_train.shape[0]} samples but y_train has {y_train.shape[0]}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    n = x_train.shape[0]
    steps_per_epoch = max(1, n // batch_size)
    from tqdm.auto import tqdm

    with _deterministic(seed):
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.25
        )
        model.train()
        bar = tqdm(total=epochs * steps_per_epoch, desc=desc or type(model).__name__,
                   disable=not progress, leave=False, dynamic_ncols=True)
        running = None
        try:
            for epoch in range(epochs):
                perm = torch.randperm(n, generator=gen)
                for step in range(steps_per_epoch):
                    idx = perm[step * batch_size:(step + 1) * batch_size]
                    xb, yb = x_train[idx], y_train[idx]
                    if augment is not None:
                        xb = augment(xb, gen)
                    loss = F.cross_entropy(model(xb), yb, label_smoothing=label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    value = loss.item()
                    running = value if running is None else 0.95 * running + 0.05 * value
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{running:.4f}")
        finally:
            bar.close()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Float logits of ``model`` on ``x`` in eval mode, batched. Restores the model's mode."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` as a fraction in ``[0, 1]``."""
    if x.shape[0] == 0:
        raise ValueError("evaluate() needs at least one sample")
    return (predict(model, x, batch_size).argmax(dim=1) == y).float().mean().item()


# --------------------------------------------------------------------------- augmentation

def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image of an ``[N, C, H, W]`` batch horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


# --------------------------------------------------------------------------- pretrained zoo

@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one zoo model is built, trained and cached."""

    name: str
    model_fn: Callable[[], nn.Module]
    data_fn: Callable[[], Dataset]
    epochs: int
    lr: float
    batch_size: int
    seed: int = 0
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: Augment | None = None

    def fingerprint(self, model: nn.Module) -> str:
        """Short hash of architecture + recipe; part of the cache file name."""
        shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        blob = json.dumps({
            "zoo_version": ZOO_VERSION,
            "repr": repr(model),
            "shapes": shapes,
            "recipe": [self.epochs, self.lr, self.batch_size, self.seed, self.weight_decay,
                       self.label_smoothing, getattr(self.augment, "__name__", None)],
        }, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


RECIPES: dict[str, Recipe] = {
    "fashion_cnn": Recipe("fashion_cnn", FashionCNN, load_fashion_mnist,
                          epochs=8, lr=3e-3, batch_size=128, augment=random_hflip),
    "mnist1d_cnn": Recipe("mnist1d_cnn", Mnist1dCNN, load_mnist1d,
                          epochs=60, lr=1e-2, batch_size=100),
    "digits_cnn": Recipe("digits_cnn", DigitsCNN, load_digits,
                         epochs=30, lr=1e-2, batch_size=32),
}


def _atomic_save(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_or_train(
    recipe: Recipe,
    data: Dataset | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Return ``(model in eval mode, info)`` for ``recipe``, training and caching it if needed.

    ``info`` holds ``path``, ``cached`` (loaded rather than trained), ``train_seconds``
    (of the run that produced the weights) and ``test_top1`` (float accuracy measured then).
    The model's initial weights come from ``recipe.seed`` via a forked RNG, so training is
    reproducible and the caller's RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = recipe.model_fn()
    path = cache_dir(cache) / f"{recipe.name}-v{ZOO_VERSION}-{recipe.fingerprint(model)}.pt"
    if path.is_file() and not retrain:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
        except Exception as exc:  # corrupt or incompatible cache entry: retrain over it
            warnings.warn(f"ignoring unreadable cached weights {path}: {exc}", RuntimeWarning, stacklevel=2)
        else:
            info = dict(blob.get("meta", {}), path=str(path), cached=True)
            return model.eval(), info

    if data is None:
        data = recipe.data_fn()
    x_train, y_train, x_test, y_test = data
    t0 = time.perf_counter()
    train_classifier(model, x_train, y_train, recipe.epochs, recipe.lr, recipe.batch_size, recipe.seed,
                     weight_decay=recipe.weight_decay, label_smoothing=recipe.label_smoothing,
                     augment=recipe.augment, progress=progress, desc=recipe.name)
    seconds = time.perf_counter() - t0
    meta = {"train_seconds": round(seconds, 2), "test_top1": evaluate(model, x_test, y_test),
            "torch": str(torch.__version__)}
    _atomic_save({"state_dict": model.state_dict(), "meta": meta}, path)
    return model.eval(), dict(meta, path=str(path), cached=False)


def pretrained(
    name: str,
    *,
    cache: str | os.PathLike[str] | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, Dataset]:
    """``(model in eval mode, (x_train, y_train, x_test, y_test))`` for a zoo model by name.

    Names are the keys of :data:`RECIPES`: ``fashion_cnn``, ``mnist1d_cnn``, ``digits_cnn``.
    """
    if name not in RECIPES:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    data = recipe.data_fn()
    model, _ = load_or_train(recipe, data, cache=cache, retrain=retrain, progress=progress)
    return model, data


def pretrained_fashion_cnn(**kwargs) -> tuple[nn.Module, Dataset]:
    """Trained :class:`FashionCNN` and the Fashion-MNIST data set (see :func:`pretrained`)."""
    return pretrained("fashion_cnn", **kwargs)


def pretrained_mnist1d_cnn(**kwargs) -> tuple[nn.Module, Dataset]:
    """Trained :class:`Mnist1dCNN` and the MNIST-1D data set (see :func:`pretrained`)."""
    return pretrained("mnist1d_cnn", **kwargs)


def pretrained_digits_cnn(**kwargs) -> tuple[nn.Module, Dataset]:
    """Trained :class:`DigitsCNN` and the sklearn digits data set (see :func:`pretrained`)."""
    return pretrained("digits_cnn", **kwargs)
