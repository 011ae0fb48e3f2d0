"""NaN and Inf go where torch sends them: only real (input, tap) pairs are multiplied, so a
non-finite value in the input, the weight, the bias or grad_output reaches exactly the
outputs and gradients it truly meets - never through the zero padding.

The oracle scatters every real pair tap by tap in float64 (the definition of the operator);
torch's own forward agrees with it on the CPU.  (torch's CPU input gradient runs a padded
convolution, so a non-finite tap meets padding zeros there: the oracle, not torch, is the
reference for the gradients.)"""
import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import Config, configs

import phaseconv

SPECIAL = [float("nan"), float("inf"), float("-inf")]


def _pairs(n, k, s, p, d, out):
    """Along one axis and for tap ``k``: the inputs ``i`` and outputs ``o = i*s - p + k*d``
    of every real pair."""
    i = torch.arange(n)
    o = i * s - p + k * d
    keep = (o >= 0) & (o < out)
    return i[keep], o[keep]


def oracle(x, w, b, grad_out, cfg):
    """(output, grad_input, grad_weight, grad_bias) of a batched call, pair by pair."""
    groups = cfg.groups
    n, c_in = x.shape[:2]
    c_out_g = w.shape[1]
    out = x.new_zeros((n, c_out_g * groups) + cfg.out_shape)
    gx, gw = torch.zeros_like(x), torch.zeros_like(w)
    xg = x.reshape((n, groups, c_in // groups) + x.shape[2:])
    gg = grad_out.reshape((n, groups, c_out_g) + grad_out.shape[2:])
    for tap in itertools.product(*(range(k) for k in cfg.kernel)):
        axes = [_pairs(size, k, s, p, d, o) for size, k, s, p, d, o in
                zip(x.shape[2:], tap, cfg.stride, cfg.padding, cfg.dilation, cfg.out_shape)]
        if any(len(i) == 0 for i, _ in axes):
            continue
        (id_, od), (ih, oh), (iw, ow) = axes
        ii = (id_[:, None, None], ih[None, :, None], iw[None, None, :])
        oo = (od[:, None, None], oh[None, :, None], ow[None, None, :])
        wt = w[(slice(None), slice(None)) + tap].reshape(groups, c_in // groups, c_out_g)
        xs = xg[(slice(None), slice(None), slice(None)) + ii]
        gs = gg[(slice(None), slice(None), slice(None)) + oo]
        out[(slice(None), slice(None)) + oo] += torch.einsum(
            "ngcabe,gco->ngoabe", xs, wt).reshape((n, -1) + xs.shape[3:])
        gx[(slice(None), slice(None)) + ii] += torch.einsum(
            "ngoabe,gco->ngcabe", gs, wt).reshape((n, -1) + gs.shape[3:])
        gw[(slice(None), slice(None)) + tap] = torch.einsum(
            "ngcabe,ngoabe->gco", xs, gs).reshape(c_in, c_out_g)
    if b is not None:
        out = out + b.view(1, -1, 1, 1, 1)
    return out, gx, gw, grad_out.sum(dim=(0, 2, 3, 4))


def _poison(t, draw_positions, values):
    t = t.clone()
    flat = t.view(-1)
    for pos, v in zip(draw_positions, values):
        flat[pos % flat.numel()] = v
    return t


def _run(cfg, x, w, b, grad_out, device, dtype):
    leaves = [None if t is None else t.to(device, dtype).requires_grad_() for t in (x, w, b)]
    out = phaseconv.conv_transpose3d(*leaves, **cfg.kwargs)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None],
                                grad_out.to(device, dtype))
    return [out] + list(grads)


def _check(ours, expected, dtype, magnitudes=None):
    """The non-finite values exactly where ``expected`` has them, the finite ones within the
    dtype's tolerance.  ``magnitudes`` (float32 and float64): the oracle of the operands'
    absolute values, each result's sum of |terms|; the finite results are then held to a
    fraction of that sum, which a rounded sum meets however much its terms cancel and a
    missing or extra term of a hundred does not."""
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    of_sum = {torch.float64: 1e-12, torch.float32: 3e-5}.get(dtype)
    for i, (name, a, e) in enumerate(zip(("output", "grad_input", "grad_weight", "grad_bias"),
                                         ours, expected)):
        a = a.detach().double().cpu()
        assert torch.equal(a.isnan(), e.isnan()), f"{name}: NaN where the real pairs have none"
        assert torch.equal(a == float("inf"), e == float("inf")), f"{name}: +Inf differs"
        assert torch.equal(a == float("-inf"), e == float("-inf")), f"{name}: -Inf differs"
        if magnitudes is None or of_sum is None:
            torch.testing.assert_close(a, e, rtol=tol, atol=tol, equal_nan=True, msg=name)
            continue
        finite = e.isfinite()
        err = (a - e).abs()[finite]
        bound = of_sum * magnitudes[i][finite]
        assert bool((err <= bound).all()), (
            f"{name}: {int((err > bound).sum())} results past {of_sum:g} x their sum of |terms| "
            f"(worst error {float((err / bound).max()):.2f} x the bound)")


@pytest.mark.parametrize("device,dtype", [
    ("cpu", torch.float64),
    pytest.param("cuda", torch.float64, marks=pytest.mark.cuda),
    pytest.param("cuda", torch.float32, marks=pytest.mark.cuda)])
@settings(max_examples=examples(0.2))
@given(cfg=configs(max_kernel=4, max_stride=3, max_dilation=2, max_size=4, max_batch=2),
       where=st.sampled_from(["input", "weight", "bias", "grad_out", "all"]),
       positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=3),
       values=st.lists(st.sampled_from(SPECIAL), min_size=3, max_size=3))
def test_nonfinite_values_reach_only_real_pairs(device, dtype, cfg, where, positions, values):
    if cfg.batch is None or cfg.batch == 0:
        return
    x, w, b = cfg.tensors()
    grad_out = torch.randn((cfg.batch, cfg.out_channels) + cfg.out_shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    if where in ("input", "all"):
        x = _poison(x, positions, values)
    if where in ("weight", "all"):
        w = _poison(w, positions, values)
    if where in ("bias", "all") and b is not None:
        b = _poison(b, positions, values)
    if where in ("grad_out", "all"):
        grad_out = _poison(grad_out, positions, values)
    expected = oracle(x, w, b, grad_out, cfg)
    ours = _run(cfg, x, w, b, grad_out, device, dtype)
    if b is None:
        expected = expected[:3]
    _check(ours, expected, dtype)
    if device == "cpu":  # the oracle is torch's forward
        theirs = F.conv_transpose3d(x, w, b, **cfg.kwargs)
        torch.testing.assert_close(expected[0], theirs, rtol=1e-9, atol=1e-9, equal_nan=True)


# Layers the CUDA engine routes to its tensor-core and depthwise kernels, whose staged tiles
# pad with zeros (the last two: depthwise, every kernel of the forward and the backward).
FAST_LAYERS = [
    (dict(in_channels=32, out_channels=32, kernel_size=(3, 5, 7), stride=2, padding=(1, 2, 3),
          output_padding=1, groups=4), (2, 32, 3, 4, 5)),
    (dict(in_channels=64, out_channels=64, kernel_size=2, stride=2), (2, 64, 3, 4, 5)),
    (dict(in_channels=32, out_channels=48, kernel_size=3, stride=2, padding=1),
     (2, 32, 3, 4, 5)),
    (dict(in_channels=16, out_channels=16, kernel_size=5, stride=4, padding=1),
     (1, 16, 3, 3, 4)),
    (dict(in_channels=4, out_channels=4, kernel_size=4, stride=2, padding=1, groups=4),
     (2, 4, 3, 4, 5)),
    (dict(in_channels=3, out_channels=3, kernel_size=(3, 2, 5), stride=(2, 1, 3),
          padding=(1, 0, 2), output_padding=(1, 0, 1), groups=3), (1, 3, 4, 3, 5)),
]


@pytest.mark.cuda
@pytest.mark.parametrize("layer", range(len(FAST_LAYERS)))
@pytest.mark.parametrize("where", ["input", "weight", "grad_out"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last_3d"])
def test_nonfinite_on_tensor_core_and_depthwise_kernels(layer, where, dtype, layout):
    from strategies import Config

    spec, shape = FAST_LAYERS[layer]
    module = torch.nn.ConvTranspose3d(**spec, bias=False)
    cfg = Config(shape[0], spec["in_channels"], spec["out_channels"], module.groups,
                 tuple(shape[2:]), module.kernel_size, module.stride, module.padding,
                 module.output_padding, module.dilation, False)
    x, w, _ = cfg.tensors()
    grad_out = torch.randn((cfg.batch, cfg.out_channels) + cfg.out_shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(layer))
    target = {"input": x, "weight": w, "grad_out": grad_out}[where]
    # the first and last elements: both meet the padding at a border
    flat = target.view(-1)
    flat[0], flat[-1] = float("nan"), float("inf")
    # the oracle reads the operands as the kernels do, rounded to the dtype
    x, w, grad_out = (t.to(dtype).double() for t in (x, w, grad_out))
    expected = oracle(x, w, None, grad_out, cfg)[:3]
    # float32 sums of terms that cancel: a fixed absolute tolerance fails by chance
    magnitudes = oracle(x.abs(), w.abs(), None, grad_out.abs(), cfg)[:3]
    if layout != "ncdhw":  # a channels-last result (the implicit GEMM writes it in place)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    _check(_run(cfg, x, w, None, grad_out, "cuda", dtype), expected, dtype, magnitudes)


@pytest.mark.parametrize("where", ["input", "weight", "grad_out", "all"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_nonfinite_on_the_small_layer_path(where, value):
    """Small CPU layers run all phases in one GEMM from the input's side (engines.phase_gemm):
    padding 1 crops pairs off every border, so the backward's cropped pairs meet a zero
    gradient, and must not turn a non-finite weight or input into NaN where the real pairs
    have none."""
    from phaseconv.engines import phase_gemm

    cfg = Config(batch=2, in_channels=4, out_channels=6, groups=2, in_shape=(3, 4, 3),
                 kernel=(3, 3, 2), stride=(2, 2, 2), padding=(1, 1, 0),
                 output_padding=(1, 0, 1), dilation=(1, 1, 1), bias=True)
    layer = phaseconv.explain(dict(in_channels=4, out_channels=6, kernel_size=cfg.kernel,
                                   **cfg.kwargs), (2, 4) + cfg.in_shape, dtype=torch.float64)
    assert "all phases in one GEMM" in layer.kernel
    assert phase_gemm.gemm_plan(layer.plan, 2, 4, 6, 2).cropped
    x, w, b = cfg.tensors()
    grad_out = torch.randn((2, 6) + cfg.out_shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    positions, values = [5, 17, 40], [value] * 3
    if where in ("input", "all"):
        x = _poison(x, positions, values)
    if where in ("weight", "all"):
        w = _poison(w, positions, values)
    if where in ("grad_out", "all"):
        grad_out = _poison(grad_out, positions, values)
    expected = oracle(x, w, b, grad_out, cfg)
    _check(_run(cfg, x, w, b, grad_out, "cpu", torch.float64), expected, torch.float64)
