"""Derivatives of every order and mode against torch: double backward, forward mode, and
torch.func's transforms (vmap over the batch and over weights, grad, jacrev, jacfwd,
hessian), on the CPU (reference engine, float64) and on the GPU (CUDA engine)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import examples
from hypothesis import given, settings
from strategies import configs

import phaseconv
from phaseconv import ops

HAS_FUNC = ops._SETUP_CONTEXT and hasattr(torch, "func")
needs_func = pytest.mark.skipif(not HAS_FUNC, reason="torch.func needs torch >= 2.0")
needs_custom_ops = pytest.mark.skipif(not ops.HAS_CUSTOM_OPS,
                                      reason="custom ops need torch >= 2.4")
SMALL = dict(max_kernel=3, max_stride=3, max_dilation=2, max_size=3, max_channels_per_group=2,
             max_batch=2)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _ours(cfg, engine=None):
    def fn(x, w, b=None):
        return phaseconv.conv_transpose3d(x, w, b, engine=engine, **cfg.kwargs)
    return fn


def _theirs(cfg):
    def fn(x, w, b=None):
        return F.conv_transpose3d(x, w, b, **cfg.kwargs)
    return fn


def _inputs(cfg, device, requires_grad=True):
    return tuple(t for t in cfg.tensors(device=device, requires_grad=requires_grad)
                 if t is not None)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=examples(0.05))
@given(cfg=configs(**SMALL))
def test_gradgradcheck(device, cfg):
    inputs = _inputs(cfg, device)
    assert torch.autograd.gradgradcheck(_ours(cfg), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=examples(0.05))
@given(cfg=configs(**SMALL))
def test_forward_mode_gradcheck(device, cfg):
    inputs = _inputs(cfg, device)
    assert torch.autograd.gradcheck(_ours(cfg), inputs, eps=1e-6, atol=1e-6, rtol=1e-5,
                                    check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, check_batched_grad=False)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_penalty_matches_torch(device):
    """WGAN-GP / R1: the penalty's gradient flows through the backward (create_graph)."""
    torch.manual_seed(0)
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2)
    leaves = [torch.randn(s, dtype=torch.float64, device=device)
              for s in ((2, 4, 3, 4, 3), (4, 3, 3, 3, 3), (6,))]
    results = []
    for fn in (phaseconv.conv_transpose3d, F.conv_transpose3d):
        x, w, b = (t.clone().requires_grad_() for t in leaves)
        torch.manual_seed(1)
        out = fn(x, w, b, **kwargs)
        score = (out.tanh() * torch.randn_like(out)).sum()
        gx, gw = torch.autograd.grad(score, (x, w), create_graph=True)
        assert gx.requires_grad and gw.requires_grad
        penalty = (gx.square().sum() - 1).square() + gw.pow(3).sum()
        results.append(torch.autograd.grad(score + penalty, (x, w, b)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_forward_ad_matches_torch():
    import torch.autograd.forward_ad as fwad

    torch.manual_seed(0)
    x, w, b = (torch.randn(s, dtype=torch.float64) for s in
               ((2, 4, 3, 2, 3), (4, 3, 3, 2, 2), (6,)))
    tangents = [torch.randn_like(t) for t in (x, w, b)]
    kwargs = dict(stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 0), groups=2,
                  dilation=(1, 2, 1))
    results = []
    for fn in (phaseconv.conv_transpose3d, F.conv_transpose3d):
        with fwad.dual_level():
            duals = [fwad.make_dual(t, d) for t, d in zip((x, w, b), tangents)]
            primal, tangent = fwad.unpack_dual(fn(*duals, **kwargs))
            results.append((primal, tangent))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


@needs_custom_ops
def test_custom_op_gradgradcheck():
    x = torch.randn(2, 4, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return torch.ops.phaseconv.conv_transpose3d(x, w, b, [2, 1, 3], [1, 0, 1], [1, 0, 0],
                                                    2, [1, 2, 1], "")
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


# --- torch.func -------------------------------------------------------------------------------

def _close(ours, theirs, dtype):
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)


@needs_func
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=examples(0.05))
@given(cfg=configs(**dict(SMALL, max_batch=3)))
def test_func_per_sample_gradients(device, cfg):
    """vmap(grad) over the samples of a batch: each sample's weight and bias gradient."""
    if not cfg.batch:
        return
    x, w, b = cfg.tensors(device=device)
    results = []
    for conv in (_ours(cfg), _theirs(cfg)):
        def loss(w, b, sample, conv=conv):
            return conv(sample.unsqueeze(0), w, b).sin().sum()
        argnums = (0, 1) if b is not None else 0
        results.append(torch.func.vmap(torch.func.grad(loss, argnums=argnums),
                                       in_dims=(None, None, 0))(w, b, x))
    _close(results[0], results[1], x.dtype)


@needs_func
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=examples(0.05))
@given(cfg=configs(**SMALL))
def test_func_vmap_over_weights_and_inputs(device, cfg):
    """An ensemble: a stack of weights (and biases), with one shared or one input per copy."""
    x, w, b = cfg.tensors(device=device)
    gen = torch.Generator().manual_seed(3)
    ws = torch.randn((3,) + tuple(w.shape), generator=gen, dtype=w.dtype).to(device)
    bs = None if b is None else torch.randn((3,) + tuple(b.shape), generator=gen,
                                            dtype=b.dtype).to(device)
    xs = torch.randn((3,) + tuple(x.shape), generator=gen, dtype=x.dtype).to(device)
    for in_dims, args in (((None, 0, 0), (x, ws, bs)), ((0, 0, 0), (xs, ws, bs)),
                          ((0, None, None), (xs, w, b)), ((0, 0, None), (xs, ws, b))):
        if args[2] is None:
            in_dims = in_dims[:2] + (None,)
        ours = torch.func.vmap(_ours(cfg), in_dims=in_dims)(*args)
        theirs = torch.func.vmap(_theirs(cfg), in_dims=in_dims)(*args)
        _close(ours, theirs, x.dtype)


@needs_func
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=examples(0.03))
@given(cfg=configs(**dict(SMALL, max_size=2, max_batch=1)))
def test_func_jacobians_and_hessian(device, cfg):
    if cfg.batch == 0:  # torch's own conv_transpose3d fails jacrev on an empty batch
        return
    x, w, b = cfg.tensors(device=device)
    for transform in (torch.func.jacrev, torch.func.jacfwd):
        ours = transform(_ours(cfg), argnums=(0, 1))(x, w, b)
        theirs = transform(_theirs(cfg), argnums=(0, 1))(x, w, b)
        _close(ours, theirs, x.dtype)
    ours = torch.func.hessian(lambda w: _ours(cfg)(x, w, b).square().sum())(w)
    theirs = torch.func.hessian(lambda w: _theirs(cfg)(x, w, b).square().sum())(w)
    _close(ours, theirs, x.dtype)


@needs_func
@pytest.mark.parametrize("device", DEVICES)
def test_func_jvp_and_vjp_match_torch(device):
    torch.manual_seed(0)
    x, w, b = (torch.randn(s, dtype=torch.float64, device=device) for s in
               ((2, 4, 3, 2, 3), (4, 3, 3, 2, 2), (6,)))
    kwargs = dict(stride=(2, 1, 3), padding=(1, 0, 1), output_padding=(1, 0, 0), groups=2,
                  dilation=(1, 2, 1))
    tangents = tuple(torch.randn_like(t) for t in (x, w, b))
    results = []
    for fn in (phaseconv.conv_transpose3d, F.conv_transpose3d):
        def conv(x, w, b, fn=fn):
            return fn(x, w, b, **kwargs)
        out, jvp_out = torch.func.jvp(conv, (x, w, b), tangents)
        _, vjp_fn = torch.func.vjp(conv, x, w, b)
        torch.manual_seed(2)
        cotangents = torch.randn((3,) + tuple(out.shape), dtype=out.dtype, device=device)
        vjps = torch.func.vmap(vjp_fn)(cotangents)  # batched vector-Jacobian products
        results.append((out, jvp_out, vjps))
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-10)


@needs_func
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_func_per_sample_gradients_cuda_low_precision(dtype):
    """The tensor-core kernels under vmap(grad): a vmapped weight folds into the groups."""
    torch.manual_seed(0)
    x = torch.randn(4, 32, 4, 5, 6, device="cuda", dtype=dtype)
    w = torch.randn(32, 16, 3, 3, 3, device="cuda", dtype=dtype) * 0.1
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2)
    results = []
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # torch's float32 as float32 (phaseconv: 3xTF32)
    try:
        for fn in (phaseconv.conv_transpose3d, F.conv_transpose3d):
            def loss(w, sample, fn=fn):
                return fn(sample.unsqueeze(0), w, **kwargs).float().square().sum()
            results.append(torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, x))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    tol = 2e-3 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(results[0].float(), results[1].float(), rtol=tol, atol=tol * 10)


def test_calls_take_the_autograd_form_they_need():
    """A call that records a graph takes the classic autograd.Function (torch binds no
    arguments to a signature for it); torch.func's transforms take the setup_context form,
    which they need; a call that records nothing takes neither.  The gradients are torch's
    either way."""
    layer = phaseconv.ConvTranspose3d(2, 2, 3, stride=2, dtype=torch.float64)
    x = torch.rand(2, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "_ConvTranspose3dFunctionBackward"
    gx, = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
    assert type(gx.grad_fn).__name__ == "_ConvTranspose3dBackwardBackward"
    ref = F.conv_transpose3d(x, layer.weight, layer.bias, stride=2)
    torch.testing.assert_close(gx, torch.autograd.grad(ref.sin().sum(), x)[0])
    with torch.no_grad():
        assert layer(x).grad_fn is None
    if not HAS_FUNC:
        return
    seen = []

    def loss(w):
        out = phaseconv.conv_transpose3d(x.detach(), w, None, stride=2)
        seen.append(ops._form(ops._FORWARD, x.detach(), w))
        return out.sin().sum()

    g = torch.func.grad(loss)(layer.weight.detach())
    assert seen == [ops._FORWARD.transforms]
    w = layer.weight.detach().requires_grad_()
    ref = F.conv_transpose3d(x.detach(), w, None, stride=2).sin().sum()
    torch.testing.assert_close(g, torch.autograd.grad(ref, w)[0])
