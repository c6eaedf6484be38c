"""Small models that together use every operator qcompile supports, in module and functional form.

Each factory returns ``(model, example_input_shape)``; weights are random but BatchNorm
statistics are randomized too, so folding is exercised with non-trivial values.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qcompile.zoo.public_style import randomize_batchnorm

__all__ = ["ZOO", "build", "randomize_batchnorm"]


class PlainCNN(nn.Module):
    """conv-bn-relu, max pool, relu6, avg pool, flatten, linear, dropout, softmax."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(10)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(10, 12, 3, stride=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.act2 = nn.ReLU6()
        self.avg = nn.AvgPool2d(2)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(12 * 2 * 2, 7)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.avg(self.act2(self.bn2(self.conv2(x))))
        return F.softmax(self.fc(self.drop(torch.flatten(x, 1))), dim=1)


class DepthwiseSeparable(nn.Module):
    """Depthwise (groups=C) and pointwise convs, strided conv, hardtanh, adaptive avg pool, ReLU6."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 13, 1, bias=False), nn.BatchNorm2d(13), nn.Hardtanh(-1.5, 2.0))
        self.dw2 = nn.Conv2d(13, 26, 3, padding=1, groups=13)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(26, 5)

    def forward(self, x):
        x = self.pw(self.dw(self.stem(x)))
        x = F.relu6(self.dw2(x))
        return self.fc(self.pool(x).flatten(1))


class Residual(nn.Module):
    """Residual add + ReLU (fused), subtraction, strided conv, x.mean(dims), x.view(x.size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.proj = nn.Conv2d(16, 24, 1, stride=2)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.conv0(x))
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        x = F.relu(x + y)
        x = self.down(x) - self.proj(x)
        x = x.mean([2, 3])
        return self.fc(x.view(x.size(0), -1))


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global pool, 1x1 convs, sigmoid gate, per-channel mul; hardswish; hardsigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 12, 3, padding=1)
        self.act = nn.Hardswish()
        self.squeeze = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Conv2d(12, 3, 1)
        self.fc2 = nn.Conv2d(3, 12, 1)
        self.gate2 = nn.Hardsigmoid()
        self.head = nn.Linear(12, 6)

    def forward(self, x):
        x = self.act(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(self.squeeze(x)))))
        x = x * s
        x = self.gate2(x) * x
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ConcatNet(nn.Module):
    """Two branches concatenated on channels; ZeroPad2d; 'same' padding; dilation; F.max_pool2d; F.pad."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.a = nn.Conv2d(2, 6, 3, stride=2)
        self.b = nn.Conv2d(2, 5, 3, padding="same", dilation=2)
        self.c = nn.Conv2d(2, 5, 1)
        self.head = nn.Conv2d(16, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        a = F.relu(self.a(self.pad(x)))
        b = F.max_pool2d(torch.tanh(self.b(x)), kernel_size=2, stride=2)
        c = F.avg_pool2d(self.c(x), 2)
        y = torch.cat([a, b, c], dim=1)
        y = F.relu(self.head(F.pad(y, (1, 1, 1, 1))))
        y = F.max_pool2d(y, 2, padding=1)
        return self.fc(torch.flatten(y, 1))


class Conv1dNet(nn.Module):
    """1-D conv net: Conv1d, BatchNorm1d, max/avg pool 1-D, adaptive avg pool 1-D, leaky ReLU, GELU."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(1, 8, 5, padding=2)
        self.b1 = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 12, 3, stride=2, dilation=2)
        self.c3 = nn.Conv1d(12, 12, 3, padding=1, groups=12)
        self.pool = nn.MaxPool1d(2)
        self.avg = nn.AvgPool1d(3, stride=1, padding=1)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.b1(self.c1(x))))
        x = F.leaky_relu(self.c2(x), 0.1)
        x = F.gelu(self.avg(self.c3(x)))
        return self.fc(self.gap(x).squeeze(-1))


class MLP(nn.Module):
    """Linear + BatchNorm1d + ReLU, PReLU, standalone BatchNorm1d, Identity, SiLU, scalar ops."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm1d(20)
        self.l1 = nn.Linear(20, 32)
        self.b1 = nn.BatchNorm1d(32)
        self.l2 = nn.Linear(32, 24)
        self.prelu = nn.PReLU(24)
        self.ident = nn.Identity()
        self.l3 = nn.Linear(24, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.l1(self.bn_in(x))))
        x = self.prelu(self.l2(x))
        x = F.silu(self.ident(x)) * 0.5 + 1.0
        return self.l3(x)


class LutNet(nn.Module):
    """Every LUT nonlinearity, PReLU per channel on a conv, standalone BatchNorm2d, permute re-view."""

    def __init__(self):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 6, 3)
        self.prelu = nn.PReLU(6)
        self.sig = nn.Sigmoid()
        self.gelu = nn.GELU(approximate="tanh")
        self.silu = nn.SiLU()
        self.leaky = nn.LeakyReLU(0.2)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.prelu(self.conv(self.bn0(x)))
        x = self.leaky(self.silu(self.gelu(self.sig(x) - 0.5)))
        x = F.hardsigmoid(x) + torch.tanh(x)
        x = F.hardswish(x.mean((-2, -1), keepdim=True))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return torch.softmax(self.fc(x), -1)


ZOO = {
    "plain_cnn": (PlainCNN, (3, 12, 12)),
    "depthwise_separable": (DepthwiseSeparable, (1, 16, 16)),
    "residual": (Residual, (3, 8, 8)),
    "squeeze_excite": (SqueezeExcite, (4, 8, 8)),
    "concat": (ConcatNet, (2, 16, 16)),
    "conv1d": (Conv1dNet, (1, 40)),
    "mlp": (MLP, (20,)),
    "lut": (LutNet, (3, 7, 7)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    cls, shape = ZOO[name]
    torch.manual_seed(seed)
    return randomize_batchnorm(cls(), seed), shape
