"""Graph passes: numerical preservation (BN folding on random shapes), fusion decisions, pipeline editing."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.config import QuantConfig
from qcompile.errors import PassError
from qcompile.frontend import trace
from qcompile.ops import Kind, info
from qcompile.pass_manager import PassContext
from qcompile.passes import fold_batchnorm, fuse_activations, insert_observers, remove_identities

from zoo_models import randomize_batchnorm

ROOT = Path(__file__).resolve().parents[1]


def _ctx(x):
    return PassContext(config=QuantConfig(), example_inputs=(x,), progress=False)


def _run(passes, model, x):
    gm = trace(model, (x,))
    return qcompile.Pipeline(passes).run(gm, _ctx(x))


@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 6), cout=st.integers(1, 9), k=st.integers(1, 4), stride=st.integers(1, 3),
    groups_dw=st.booleans(), size=st.integers(4, 10), one_d=st.booleans(), bias=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fold_batchnorm_preserves_function(cin, cout, k, stride, groups_dw, size, one_d, bias, seed):
    torch.manual_seed(seed)
    conv_t, bn_t = (nn.Conv1d, nn.BatchNorm1d) if one_d else (nn.Conv2d, nn.BatchNorm2d)
    groups = cin if groups_dw else 1
    cout = cout * groups if groups_dw else cout
    model = randomize_batchnorm(nn.Sequential(conv_t(cin, cout, k, stride=stride, groups=groups, bias=bias),
                                              bn_t(cout), nn.ReLU(), bn_t(cout)), seed)
    x = torch.randn(3, cin, *((size,) if one_d else (size, size)))
    gm = _run([fold_batchnorm], model, x)
    kinds = [info(n).kind for n in gm.graph.nodes]
    assert Kind.BATCHNORM not in kinds
    assert kinds.count(Kind.CONV) == 2  # folded one + standalone BN as depthwise 1x1 conv
    torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_linear_and_standalone_bn1d():
    model = randomize_batchnorm(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 7), nn.BatchNorm1d(7)))
    x = torch.randn(4, 5)
    gm = _run([fold_batchnorm], model, x)
    assert [info(n).kind for n in gm.graph.nodes].count(Kind.LINEAR) == 2
    torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_bn_after_shared_conv_output_is_not_folded_into_it():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomize_batchnorm(M())
    x = torch.randn(2, 2, 6, 6)
    gm = _run([fold_batchnorm], model, x)
    torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_remove_identities():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Identity(), nn.ReLU()).eval()
    x = torch.randn(2, 3)
    gm = _run([remove_identities], model, x)
    assert [info(n).kind for n in gm.graph.nodes] == [Kind.INPUT, Kind.LINEAR, Kind.CLAMP, Kind.OUTPUT]


def test_fuse_activations_annotates_single_user_producers_only():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 1)
            self.b = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            a = F.relu6(self.a(x))
            b = self.b(x)
            return F.relu(b) + b + a  # b has two users: no fusion

    x = torch.randn(1, 1, 4, 4)
    gm = _run([fuse_activations], M(), x)
    nodes = {n.name: info(n) for n in gm.graph.nodes}
    assert nodes["a"].fused_act == (0.0, 6.0) and nodes["relu6"].fused_into == "a"
    assert nodes["b"].fused_act is None and nodes["relu"].fused_into is None


def test_observers_only_where_quantization_changes():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    x = torch.randn(1, 1, 8, 8)
    gm = _run([fuse_activations, insert_observers], model.eval(), x)
    kinds = [info(n).kind for n in gm.graph.nodes]
    # input, relu (fused into conv), linear get observers; maxpool / flatten share their input's
    assert kinds == [Kind.INPUT, Kind.QUANT, Kind.CONV, Kind.CLAMP, Kind.QUANT, Kind.MAXPOOL, Kind.RESHAPE,
                     Kind.LINEAR, Kind.QUANT, Kind.OUTPUT]


def test_pipeline_editing_and_error_names_pass():
    @qcompile.graph_pass("always fails")
    def broken(gm, ctx):
        raise ValueError("boom")

    p = qcompile.default_pipeline()
    names = p.names()
    p.insert_after(fold_batchnorm, broken)
    assert p.names()[names.index("fold_batchnorm") + 1] == "broken"
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(PassError, match=r"in pass 'broken' \(after passes: remove_identities, record_batchnorm_statistics, fold_batchnorm\).*boom"):
        qcompile.compile(model, (torch.randn(1, 3),), calib=torch.randn(8, 3), pipeline=p, progress=False)
    p.remove(broken)
    assert p.names() == names
    with pytest.raises(qcompile.QCompileError, match="not in this pipeline"):
        p.remove(broken)


def test_pass_that_breaks_the_graph_is_caught():
    @qcompile.graph_pass("breaks the graph")
    def dangling(gm, ctx):
        node = next(n for n in gm.graph.nodes if n.op == "call_module")
        node.meta.pop("qc")
        return qcompile.PassResult(gm, False)

    p = qcompile.default_pipeline().insert_before(fold_batchnorm, dangling)
    with pytest.raises(PassError, match="in pass 'dangling'.*no qc analysis record"):
        qcompile.compile(nn.Sequential(nn.Linear(3, 2)), (torch.randn(1, 3),), calib=torch.randn(8, 3), pipeline=p)


def test_custom_pass_example_runs_and_takes_effect():
    art = runpy.run_path(str(ROOT / "examples" / "custom_pass.py"))["main"]()
    # ReLU6 -> ReLU4: the fused conv output range is at most [0, 4]
    conv = art.program.ops[0]
    t = art.program.tensors[conv.output]
    assert (conv.act_max - t.zero_point) * t.scale <= 4.0 + t.scale


def test_only_calibration_data_is_observed():
    """Shape propagation between passes runs example_inputs; observers must not record them."""
    model = nn.Sequential(nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    example = torch.full((1, 2), 100.0)  # far outside the calibration range
    calib = torch.rand(64, 2)
    art = qcompile.compile(model, (example,), calib=calib, progress=False,
                           config=QuantConfig(activation_observer="minmax"))
    lo = (-128 - art.program.input.zero_point) * art.program.input.scale
    hi = (127 - art.program.input.zero_point) * art.program.input.scale
    assert lo <= 0.0 and hi == pytest.approx(float(calib.max()), rel=0.01)
