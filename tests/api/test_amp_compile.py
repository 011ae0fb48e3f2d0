"""Mixed precision and compiled training, as users run them: a converted network under
``torch.autocast`` matches torch's (dtypes and values), the custom ops' fake implementations
give the real results' sizes and strides, and ``torch.compile`` with inductor trains like
eager mode.  CPU cases run in CI; CUDA cases run on the device.
"""
import copy

import pytest
import torch
import torch.nn as nn

import phaseconv
from phaseconv import ops

needs_custom_ops = pytest.mark.skipif(not ops.HAS_CUSTOM_OPS,
                                      reason="torch.library custom ops need torch >= 2.4")
AUTOCAST = [("cpu", torch.bfloat16),
            pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
            pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda)]


class UpNet(nn.Module):
    """A convolution, then two transposed convolutions (one grouped, one with bias)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv3d(2, 16, 3, stride=2, padding=1)
        self.up1 = nn.ConvTranspose3d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose3d(8, 4, (2, 4, 4), stride=2, padding=(0, 1, 1), groups=2,
                                      bias=False)

    def forward(self, x):
        return self.up2(torch.relu(self.up1(torch.relu(self.down(x)))))


def _pair(device, seed=0):
    torch.manual_seed(seed)
    theirs = UpNet().to(device)
    ours = phaseconv.convert(copy.deepcopy(theirs))
    assert sum(isinstance(m, phaseconv.ConvTranspose3d) for m in ours.modules()) == 2
    return theirs, ours


def _run(model, x, device, dtype):
    """Forward under autocast, backward outside it: (output, loss, parameter gradients)."""
    model.zero_grad()
    with torch.autocast(device, dtype=dtype):
        out = model(x)
        loss = out.float().square().mean()
    loss.backward()
    return out, loss, [p.grad for p in model.parameters()]


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("device, dtype", AUTOCAST)
def test_autocast_matches_torch(device, dtype):
    """Output dtype, gradient dtypes and values as torch's conv_transpose3d gives them under
    the same autocast (on the CPU its policy depends on the torch release)."""
    theirs, ours = _pair(device)
    x = torch.randn(2, 2, 6, 8, 8, device=device)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        out_t, loss_t, grads_t = _run(theirs, x, device, dtype)
        out_o, loss_o, grads_o = _run(ours, x, device, dtype)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    assert out_o.dtype == out_t.dtype and out_o.shape == out_t.shape
    tol = 3e-2 if out_t.dtype in (torch.float16, torch.bfloat16) else 1e-5
    assert _rel(out_o, out_t) < tol
    assert abs(loss_o.item() - loss_t.item()) <= tol * abs(loss_t.item())
    for a, e in zip(grads_o, grads_t):  # the network's own convolution ran in low precision
        assert a.dtype == e.dtype == torch.float32
        assert _rel(a, e) < 3e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_autocast_leaves_float64_alone(device):
    layer = phaseconv.ConvTranspose3d(4, 4, 3, stride=2).to(device).double()
    x = torch.randn(1, 4, 3, 3, 3, device=device, dtype=torch.float64)
    with torch.autocast(device, dtype=torch.bfloat16):
        assert layer(x).dtype == torch.float64


# ---- fake implementations: the real results' sizes and strides

def _fake_and_real(op_args, op):
    from torch._subclasses.fake_tensor import FakeTensorMode

    real = op(*op_args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                     for a in op_args]
        fake = op(*fake_args)
    return real, fake


CASES = {  # x layout, weight layout, batched
    "contiguous": (torch.contiguous_format, torch.contiguous_format, True),
    "channels_last_input": (torch.channels_last_3d, torch.contiguous_format, True),
    "channels_last_weight": (torch.contiguous_format, torch.channels_last_3d, True),
    "unbatched": (torch.contiguous_format, torch.contiguous_format, False),
    "unbatched_channels_last_weight": (torch.contiguous_format, torch.channels_last_3d, False),
}
DEVICE_DTYPES = [("cpu", torch.float64), ("cpu", torch.float32),
                 pytest.param("cuda", torch.float32, marks=pytest.mark.cuda),
                 pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
                 pytest.param("cuda", torch.float64, marks=pytest.mark.cuda)]


@needs_custom_ops
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_fake_results_have_the_real_strides(device, dtype, case):
    x_fmt, w_fmt, batched = CASES[case]
    x = torch.randn(2, 16, 3, 4, 5, device=device, dtype=dtype).contiguous(memory_format=x_fmt)
    w = torch.randn(16, 8, 3, 3, 2, device=device, dtype=dtype).contiguous(memory_format=w_fmt)
    b = torch.randn(16, device=device, dtype=dtype)
    if not batched:
        x = x[0]
    conf = ([2, 2, 2], [1, 1, 0], [1, 0, 1], 2, [1, 1, 1])
    fwd = torch.ops.phaseconv.conv_transpose3d.default
    real, fake = _fake_and_real((x, w, b) + conf + ("",), fwd)
    assert fake.shape == real.shape and fake.stride() == real.stride()
    gy = torch.randn_like(real)
    bwd = torch.ops.phaseconv.conv_transpose3d_backward.default
    for mask in ([True, True, True], [False, True, False], [True, False, True]):
        reals, fakes = _fake_and_real((gy, x, w) + conf + (mask, ""), bwd)
        for r, f in zip(reals, fakes):
            assert f.shape == r.shape and f.stride() == r.stride() and f.dtype == r.dtype
    reals, _ = _fake_and_real((gy, x, w) + conf + ([False, True, False], ""), bwd)
    assert reals[1].stride() == w.stride(), "the weight gradient keeps the weight's layout"
    # the input gradient in torch's layout on CUDA (channels_last_3d where x or the weight
    # suggests it, float64 aside), contiguous elsewhere
    reals, _ = _fake_and_real((gy, x, w) + conf + ([True, False, False], ""), bwd)
    if device == "cuda" and batched:
        xt, wt = x.detach().requires_grad_(), w.detach()
        yt = torch.nn.functional.conv_transpose3d(xt, wt, b, *conf)
        (gx_torch,) = torch.autograd.grad(yt, xt, gy)
        assert reals[0].stride() == gx_torch.stride(), (reals[0].stride(), gx_torch.stride())
    else:
        assert reals[0].is_contiguous()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_weight_gradient_has_the_weight_layout(device):
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        layer = phaseconv.ConvTranspose3d(8, 4, 3, stride=2).to(device)
        layer.weight.data = layer.weight.data.contiguous(memory_format=fmt)
        layer(torch.randn(2, 8, 3, 4, 5, device=device)).sum().backward()
        assert layer.weight.grad.stride() == layer.weight.stride()


# ---- compiled training (inductor)

def _train_steps(model, x, device, dtype, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


COMPILED = [("cpu", None), ("cpu", torch.bfloat16),
            pytest.param("cuda", None, marks=pytest.mark.cuda),
            pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
            pytest.param("cuda", torch.float16, marks=pytest.mark.cuda)]


@needs_custom_ops
@pytest.mark.parametrize("device, dtype", COMPILED)
def test_inductor_training_matches_eager(device, dtype):
    """torch.compile (inductor, the default backend) of a converted network: forward,
    backward and optimizer steps match eager mode, in float32 and under autocast."""
    torch._dynamo.reset()
    _, eager = _pair(device, seed=1)
    compiled_model = copy.deepcopy(eager)
    x = torch.randn(2, 2, 6, 8, 8, device=device)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        losses_e, params_e = _train_steps(eager, x, device, dtype)
        losses_c, params_c = _train_steps(torch.compile(compiled_model), x, device, dtype)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    tol = 1e-4 if dtype is None else 3e-2
    assert _rel(losses_c, losses_e) < tol
    for a, e in zip(params_c, params_e):
        assert _rel(a, e) < tol
