"""Training: gradcheck, determinism, torch.compile, a side-by-side run."""
import copy

import pytest
import torch
import torch.nn as nn
from conftest import examples
from hypothesis import given, settings
from strategies import configs

import phaseconv
from phaseconv import ops


@settings(max_examples=examples(0.1))
@given(cfg=configs(max_kernel=3, max_stride=3, max_dilation=2, max_size=3,
                   max_channels_per_group=2, max_batch=1))
def test_gradcheck(cfg):
    x, w, b = cfg.tensors(requires_grad=True)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*args):
        return phaseconv.conv_transpose3d(args[0], args[1], args[2] if b is not None else None,
                                          **cfg.kwargs)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradients_are_bitwise_deterministic():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6, 7, requires_grad=True)
    w = torch.randn(4, 3, 3, 4, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    g = torch.randn(2, 6, 9, 13, 15)
    runs = []
    for _ in range(2):
        out = phaseconv.conv_transpose3d(x, w, b, stride=2, padding=1, output_padding=(0, 1, 0),
                                         groups=2)
        runs.append((out,) + torch.autograd.grad(out, (x, w, b), g))
    for a, c in zip(*runs):
        assert torch.equal(a, c)


class EncoderDecoder(nn.Module):
    """A small 3-D encoder-decoder whose up path is transposed convolutions."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(
            nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose3d(4, 4, (2, 4, 4), stride=2, padding=(0, 1, 1), groups=2),
            nn.ReLU(), nn.ConvTranspose3d(4, 1, 1))

    def forward(self, x):
        return self.dec(self.enc(x))


def _train(model, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_side_by_side_with_torch():
    torch.manual_seed(0)
    reference = EncoderDecoder().double()
    converted = phaseconv.convert(copy.deepcopy(reference))
    assert sum(isinstance(m, phaseconv.ConvTranspose3d) for m in converted.modules()) == 3
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    y = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    ours, theirs = _train(converted, x, y, 5), _train(reference, x, y, 5)
    assert ours == pytest.approx(theirs, rel=1e-9)
    assert ours[-1] < ours[0]


needs_custom_ops = pytest.mark.skipif(not ops.HAS_CUSTOM_OPS,
                                      reason="torch.library custom ops need torch >= 2.4")


@needs_custom_ops
def test_custom_op_passes_opcheck():
    x = torch.randn(2, 4, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.phaseconv.conv_transpose3d.default,
                          (x, w, b, [2, 1, 2], [1, 0, 1], [1, 0, 0], 2, [1, 1, 1], ""))
    out = phaseconv.conv_transpose3d(x, w, b, stride=(2, 1, 2), padding=(1, 0, 1),
                                     output_padding=(1, 0, 0), groups=2)
    gy = torch.randn_like(out)
    for mask in ([True, True, True], [True, False, False], [False, True, False]):
        torch.library.opcheck(torch.ops.phaseconv.conv_transpose3d_backward.default,
                              (gy, x.detach(), w.detach(), [2, 1, 2], [1, 0, 1], [1, 0, 0], 2,
                               [1, 1, 1], mask, ""))


@needs_custom_ops
def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = phaseconv.convert(EncoderDecoder().double())
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager_out = model(x)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-12, atol=1e-12)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


@needs_custom_ops
def test_compiled_graph_holds_the_custom_op():
    torch._dynamo.reset()
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    layer = phaseconv.ConvTranspose3d(2, 2, 3, stride=2)
    x = torch.randn(1, 2, 3, 3, 3)
    out = torch.compile(layer, backend=record, fullgraph=True)(x)
    torch.testing.assert_close(out, layer(x))
    assert len(graphs) == 1 and "phaseconv.conv_transpose3d" in graphs[0]
