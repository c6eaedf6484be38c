"""Reference data sets and small pretrained CNNs for testing and benchmarking qcompile.

Everything works offline: Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist``, MNIST-1D is generated procedurally by the ``mnist1d`` package,
and the 8x8 digits ship with scikit-learn. Trained weights are cached (see
:func:`qcompile.zoo.train.cache_dir`), so only the first call of a ``pretrained_*``
getter trains.

Example::

    from qcompile.zoo import pretrained_digits_cnn, evaluate
    model, (x_train, y_train, x_test, y_test) = pretrained_digits_cnn()
    print(evaluate(model, x_test, y_test))
"""
from __future__ import annotations

from .datasets import Dataset, load_digits, load_fashion_mnist, load_mnist1d
from .models import DigitsCNN, FashionCNN, Mnist1dCNN, count_params
from .train import (
    RECIPES,
    cache_dir,
    evaluate,
    load_or_train,
    predict,
    pretrained,
    pretrained_digits_cnn,
    pretrained_fashion_cnn,
    pretrained_mnist1d_cnn,
    train_classifier,
)

__all__ = [
    "Dataset",
    "load_fashion_mnist",
    "load_mnist1d",
    "load_digits",
    "FashionCNN",
    "Mnist1dCNN",
    "DigitsCNN",
    "count_params",
    "RECIPES",
    "cache_dir",
    "train_classifier",
    "predict",
    "evaluate",
    "load_or_train",
    "pretrained",
    "pretrained_fashion_cnn",
    "pretrained_mnist1d_cnn",
    "pretrained_digits_cnn",
]
