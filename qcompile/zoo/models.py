"""Small CNNs sized for Cortex-M microcontrollers.

Every model here is built only from standard ``torch.nn`` modules (``Conv1d/2d``,
``BatchNorm1d/2d``, ``ReLU``, ``MaxPool2d``, ``Flatten``, ``Linear``) plus a tensor ``+``
for the residual connection, has no data-dependent control flow, and is therefore
``torch.fx.symbolic_trace``-able. ``BatchNorm`` layers directly follow convolutions so a
compiler can fold them in eval mode.

=============  ============  ================  ========  ===========================
model          input         data set          params    float top-1 (zoo recipe)
=============  ============  ================  ========  ===========================
FashionCNN     [N,1,28,28]   Fashion-MNIST     26,298    91.85 %
Mnist1dCNN     [N,1,40]      MNIST-1D          7,535     95.10 %
DigitsCNN      [N,1,8,8]     sklearn digits    3,842     98.33 %
=============  ============  ================  ========  ===========================
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ConvBNReLU2d",
    "ConvBNReLU1d",
    "ResidualBlock2d",
    "FashionCNN",
    "Mnist1dCNN",
    "DigitsCNN",
    "count_params",
]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ConvBNReLU2d(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` with "same" padding for odd kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=False),
        )


class ConvBNReLU1d(nn.Sequential):
    """``Conv1d(bias=False) -> BatchNorm1d -> ReLU``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5, stride: int = 1, padding: int = 2) -> None:
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm1d(out_ch),
            nn.ReLU(inplace=False),
        )


class ResidualBlock2d(nn.Module):
    """Basic ResNet block with an identity shortcut: ``relu(bn(conv(relu(bn(conv(x))))) + x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + x)


class FashionCNN(nn.Module):
    """2-D CNN for 28x28 grayscale images (Fashion-MNIST), 26,298 parameters.

    ``28x28x1 -conv-> 28x28x16 -pool-> 14x14 -conv-> 14x14x32 -pool-> 7x7 -residual-> 7x7x32
    -pool-> 3x3x32 -flatten-> 288 -linear-> 10``. Peak activation memory is the first
    feature map (28*28*16 = 12.5 KiB in int8).
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            ConvBNReLU2d(1, w1),
            nn.MaxPool2d(2),                 # 28 -> 14
            ConvBNReLU2d(w1, w2),
            nn.MaxPool2d(2),                 # 14 -> 7
            ResidualBlock2d(w2),
            nn.MaxPool2d(2),                 # 7 -> 3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w2 * 3 * 3, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Mnist1dCNN(nn.Module):
    """1-D CNN for 40-sample MNIST-1D signals, 7,535 parameters.

    Three stride-2 ``Conv1d(k=5)`` blocks (``40 -> 19 -> 9 -> 4`` samples, 25 channels, the
    architecture of the MNIST-1D paper's CNN baseline plus BatchNorm), then a linear head.
    """

    def __init__(self, num_classes: int = 10, channels: int = 25) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            ConvBNReLU1d(1, c, 5, stride=2, padding=1),   # 40 -> 19
            ConvBNReLU1d(c, c, 5, stride=2, padding=1),   # 19 -> 9
            ConvBNReLU1d(c, c, 5, stride=2, padding=1),   # 9 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * 4, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """Tiny 2-D CNN for scikit-learn's 8x8 digits, 3,842 parameters.

    ``8x8x1 -conv-> 8x8x8 -conv-> 8x8x16 -pool-> 4x4x16 -flatten-> 256 -linear-> 10``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU2d(1, 8),
            ConvBNReLU2d(8, 16),
            nn.MaxPool2d(2),                 # 8 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
