"""Property tests: phaseconv against torch.nn.functional.conv_transpose3d in float64 on CPU."""
import pytest
import torch
import torch.nn.functional as F
from conftest import examples
from hypothesis import given, settings
from strategies import configs

import phaseconv

TIGHT = dict(rtol=1e-10, atol=1e-10)


@given(cfg=configs())
def test_forward_matches_torch(cfg):
    x, w, b = cfg.tensors()
    expected = F.conv_transpose3d(x, w, b, **cfg.kwargs)
    got = phaseconv.conv_transpose3d(x, w, b, **cfg.kwargs)
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, **TIGHT)


@settings(max_examples=examples(1.0))
@given(cfg=configs(max_batch=2))
def test_gradients_match_torch(cfg):
    x, w, b = cfg.tensors(requires_grad=True)
    ours = phaseconv.conv_transpose3d(x, w, b, **cfg.kwargs)
    theirs = F.conv_transpose3d(x, w, b, **cfg.kwargs)
    grad_out = torch.randn_like(theirs)
    inputs = [t for t in (x, w, b) if t is not None]
    g_ours = torch.autograd.grad(ours, inputs, grad_out, allow_unused=True)
    g_theirs = torch.autograd.grad(theirs, inputs, grad_out, allow_unused=True)
    for name, a, e in zip(("input", "weight", "bias"), g_ours, g_theirs):
        a = torch.zeros_like(e) if a is None else a  # a batch of 0 leaves no graph to x
        assert torch.allclose(a, e, **TIGHT), f"grad of {name} differs from torch's"


@settings(max_examples=examples(0.5))
@given(cfg=configs(max_batch=2))
def test_module_inference_repeated(cfg):
    layer = torch.nn.ConvTranspose3d(cfg.in_channels, cfg.out_channels, cfg.kernel,
                                     bias=cfg.bias, **cfg.kwargs).double()
    ours = phaseconv.convert(torch.nn.Sequential(layer))[0]
    x = cfg.tensors()[0]
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(ours(x), expected, **TIGHT)
        torch.testing.assert_close(ours(x), expected, **TIGHT)


def test_float32_and_half_precisions_close_to_torch():
    cfg = dict(stride=2, padding=1, output_padding=1, groups=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 6, 7, generator=gen)
    w = torch.randn(4, 3, 3, 4, 5, generator=gen)
    b = torch.randn(6, generator=gen)
    ref = F.conv_transpose3d(x.double(), w.double(), b.double(), **cfg)
    # 16-bit sums round at the scale of their largest partial sums, so a small output after
    # cancellation is off by units in the last place of that scale (max |ref| 20 here: a bf16
    # ulp of 0.125; torch 2.14's own bfloat16 result is 0.16 off, and how CPU convolutions
    # accumulate bfloat16 depends on the CPU): atol is about two ulps at max |ref|
    scale = float(ref.abs().max())
    tolerances = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2 ** -6 * scale),
                  torch.float16: (2e-3, 2 ** -9 * scale)}
    for dtype, (rtol, atol) in tolerances.items():
        args = (x.to(dtype), w.to(dtype), b.to(dtype))
        try:
            got = phaseconv.conv_transpose3d(*args, **cfg)
        except RuntimeError:
            # Only where torch's own CPU convolutions lack the dtype (float16 on torch 1.13).
            with pytest.raises(RuntimeError):
                F.conv_transpose3d(*args, **cfg)
            continue
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=atol)


def test_int_and_tuple_arguments_agree():
    x = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    w = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64)
    a = phaseconv.conv_transpose3d(x, w, None, 2, 1, 1, 1, 2)
    b = phaseconv.conv_transpose3d(x, w, None, (2, 2, 2), [1], (1, 1, 1), 1, torch.Size([2] * 3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, F.conv_transpose3d(x, w, None, 2, 1, 1, 1, 2), **TIGHT)


def test_non_contiguous_and_channels_last_inputs():
    base = torch.randn(2, 4, 6, 5, 16, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, 2, dtype=torch.float64)
    kw = dict(stride=(2, 1, 3), padding=1)
    for x in (base[..., ::2], base.to(memory_format=torch.channels_last_3d),
              base.transpose(2, 4), base[1:, :, 1:-1]):
        assert not x.is_contiguous()
        torch.testing.assert_close(phaseconv.conv_transpose3d(x, w, **kw),
                                   F.conv_transpose3d(x.contiguous(), w, **kw), **TIGHT)
