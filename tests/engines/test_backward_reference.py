"""The reference engine's phase-form backward against torch autograd, in float64 on CPU.

``grad_input``, ``unpack_conv3d_phases(grad_weight_phases(...))`` and ``grad_bias`` must equal
the gradients torch's own ``conv_transpose3d`` gets from autograd; packing's inverse must
undo the pack exactly.
"""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import Config, configs

from phaseconv.engines import reference
from phaseconv.geometry import phase_plan
from phaseconv.packing import kernel_phase_taps, pack_conv3d_phases, unpack_conv3d_phases

TOL = 1e-10  # float64 round-off is ~1e-14 here; an indexing bug is O(1)


def _close(ours: torch.Tensor, ref: torch.Tensor) -> bool:
    return ours.shape == ref.shape and ours.dtype == ref.dtype and \
        torch.allclose(ours, ref, rtol=TOL, atol=TOL)


def _gradients(cfg: Config, seed: int = 0):
    """(ours, autograd's) gradients of x, weight and bias for a random grad_output.

    An unbatched config is handled the way a caller would: the phase functions see a batch of
    one, autograd sees torch's unbatched call.
    """
    x, w, b = cfg.tensors(requires_grad=True, seed=seed)
    y = F.conv_transpose3d(x, w, b, **cfg.kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    grad_y = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    wanted = (x, w) + ((b,) if b is not None else ())
    ref = torch.autograd.grad(y, wanted, grad_y, allow_unused=True)

    xb = x.detach() if cfg.batch is not None else x.detach().unsqueeze(0)
    gb = grad_y if cfg.batch is not None else grad_y.unsqueeze(0)
    plan = phase_plan(cfg.in_shape, cfg.kernel, cfg.stride, cfg.padding,
                      dilation=cfg.dilation, output_padding=cfg.output_padding)
    packed = pack_conv3d_phases(w.detach(), cfg.groups, cfg.stride, cfg.padding, cfg.dilation)
    gx = reference.grad_input(gb, packed, plan, cfg.groups, cfg.in_channels)
    phases = reference.grad_weight_phases(xb, gb, plan, cfg.groups, cfg.out_channels, w.shape)
    for p, g in zip(packed, phases):  # same layout as the pack, None in the same places
        assert (p is None) == (g is None)
        assert p is None or p.shape == g.shape
    gw = unpack_conv3d_phases(phases, w.shape, cfg.groups, cfg.stride, cfg.padding,
                              cfg.dilation)
    ours = (gx if cfg.batch is not None else gx.squeeze(0), gw)
    if b is not None:
        ours += (reference.grad_bias(gb),)
    return ours, ref


def _check(cfg: Config, seed: int = 0) -> None:
    ours, ref = _gradients(cfg, seed)
    for name, o, r in zip(("input", "weight", "bias"), ours, ref):
        if r is None:  # autograd's way of saying zero (an empty batch)
            r = torch.zeros_like(o)
        assert _close(o, r), f"grad_{name}: max |error| {(o - r).abs().max().item():.2e}"


@settings(max_examples=examples(0.5))
@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_backward_matches_autograd(cfg, seed):
    _check(cfg, seed)


@settings(max_examples=examples(0.5))
@given(cfg=configs())
def test_grad_input_is_a_strided_conv3d(cfg):
    """The docstring's claim: grad_input is conv3d(grad_out, weight, stride, padding,
    dilation, groups), cropped to the input size."""
    cfg = cfg._replace(batch=cfg.batch if cfg.batch is not None else 1)
    x, w, _ = cfg.tensors()
    gen = torch.Generator().manual_seed(7)
    grad_y = torch.randn((cfg.batch, cfg.out_channels) + cfg.out_shape, generator=gen,
                         dtype=torch.float64)
    plan = phase_plan(cfg.in_shape, cfg.kernel, cfg.stride, cfg.padding,
                      dilation=cfg.dilation, output_padding=cfg.output_padding)
    packed = pack_conv3d_phases(w, cfg.groups, cfg.stride, cfg.padding, cfg.dilation)
    ours = reference.grad_input(grad_y, packed, plan, cfg.groups, cfg.in_channels)
    conv = F.conv3d(grad_y, w, None, cfg.stride, cfg.padding, cfg.dilation, cfg.groups)
    d, h, wd = cfg.in_shape
    assert all(c >= n for c, n in zip(conv.shape[2:], cfg.in_shape))
    assert _close(ours, conv[:, :, :d, :h, :wd])


def _cfg(batch=2, in_channels=2, out_channels=3, groups=1, in_shape=(3, 4, 3), kernel=(3, 3, 3),
         stride=(2, 2, 2), padding=(1, 1, 1), output_padding=(0, 0, 0), dilation=(1, 1, 1),
         bias=True) -> Config:
    return Config(batch, in_channels, out_channels, groups, in_shape, kernel, stride, padding,
                  output_padding, dilation, bias)


CORNERS = {
    "kernel < stride": _cfg(kernel=(1, 2, 3), stride=(3, 3, 4), padding=(0, 1, 1),
                            output_padding=(2, 1, 3)),
    "stride = dilation = 2 (one phase takes all taps)": _cfg(dilation=(2, 2, 2),
                                                           output_padding=(1, 0, 1)),
    "dilation shares a factor with the stride": _cfg(kernel=(5, 3, 4), stride=(4, 6, 2),
                                                     dilation=(2, 3, 2), padding=(3, 2, 0)),
    "output_padding >= stride (d > s)": _cfg(stride=(2, 1, 2), dilation=(3, 3, 3),
                                             output_padding=(2, 2, 1)),
    "output shorter than the stride (empty phases)": _cfg(in_shape=(1, 1, 1), kernel=(2, 1, 3),
                                                          stride=(4, 3, 4), padding=(0, 0, 1)),
    "padding beyond the kernel extent": _cfg(in_shape=(5, 4, 6), padding=(3, 4, 2)),
    "groups": _cfg(in_channels=6, out_channels=9, groups=3, kernel=(2, 3, 4),
                   stride=(3, 2, 1), dilation=(1, 2, 3), output_padding=(1, 1, 2)),
    "depthwise": _cfg(in_channels=4, out_channels=4, groups=4),
    "batch 0": _cfg(batch=0, groups=1),
    "batch 0, groups": _cfg(batch=0, in_channels=4, out_channels=2, groups=2),
    "unbatched": _cfg(batch=None, stride=(3, 1, 2), output_padding=(2, 0, 1)),
    "stride 1": _cfg(stride=(1, 1, 1)),
}


@pytest.mark.parametrize("name", sorted(CORNERS))
def test_backward_corner_cases(name):
    _check(CORNERS[name])


def test_phases_whose_window_misses_the_input():
    """Width 1, kernel 1, padding 1, dilation 3, output_padding 2: the one width output lies
    beyond the scatter's reach (its phase reads input 1 of 1), so every phase has taps and
    outputs but reads only padding: both gradients are exactly zero, and each phase with taps
    still gets a (zero) tensor."""
    cfg = _cfg(in_shape=(2, 3, 1), kernel=(2, 3, 1), stride=(2, 2, 1), padding=(0, 1, 1),
               output_padding=(1, 0, 2), dilation=(1, 1, 3))
    plan = phase_plan(cfg.in_shape, cfg.kernel, cfg.stride, cfg.padding,
                      dilation=cfg.dilation, output_padding=cfg.output_padding)
    assert not any(p.reads_input for p in plan.phases)
    assert any(p.num_taps and p.num_outputs for p in plan.phases)
    ours, ref = _gradients(cfg)
    assert _close(ours[0], ref[0]) and _close(ours[1], ref[1])
    assert not ours[0].any() and not ours[1].any()


@st.composite
def packings(draw):
    groups = draw(st.integers(1, 3))
    c_in, c_out_g = groups * draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel, stride, padding, dilation = (tuple(draw(st.integers(lo, hi)) for _ in range(3))
                                         for lo, hi in ((1, 6), (1, 5), (0, 6), (1, 4)))
    return groups, (c_in, c_out_g) + kernel, stride, padding, dilation


def _owner(k, s, p, d) -> int:
    """Independent of geometry.py: the residue of the outputs tap ``k`` writes."""
    return (k * d - p) % s


def _residues(kernel, s, p, d):
    """The residues that receive taps, ascending."""
    return sorted({_owner(k, s, p, d) for k in range(kernel)})


@settings(max_examples=examples(0.5))
@given(geometry=packings(), drop=st.sets(st.integers(0, 124)), seed=st.integers(0, 2**16))
def test_unpack_inverts_pack(geometry, drop, seed):
    groups, shape, stride, padding, dilation = geometry
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    packed = pack_conv3d_phases(w, groups, stride, padding, dilation)
    assert torch.equal(unpack_conv3d_phases(packed, shape, groups, stride, padding, dilation), w)

    # Phases given as None come back as zeros, every other tap untouched.
    n_phases = len(packed)
    dropped = {i % n_phases for i in drop}
    partial = [None if i in dropped else p for i, p in enumerate(packed)]
    expected = w.clone()
    for kd, kh, kw in itertools.product(*(range(k) for k in shape[2:])):
        # phases are the residue triples with taps, row-major over the residues
        pos = [_residues(n, s, p, d).index(_owner(k, s, p, d))
               for k, n, s, p, d in zip((kd, kh, kw), shape[2:], stride, padding, dilation)]
        counts = [len(_residues(n, s, p, d))
                  for n, s, p, d in zip(shape[2:], stride, padding, dilation)]
        index = (pos[0] * counts[1] + pos[1]) * counts[2] + pos[2]
        if index in dropped:
            expected[:, :, kd, kh, kw] = 0
    got = unpack_conv3d_phases(partial, shape, groups, stride, padding, dilation)
    if all(p is None for p in partial):
        assert torch.equal(got, torch.zeros(shape)) and not expected.any()
    else:
        assert torch.equal(got, expected)


def test_every_tap_belongs_to_exactly_one_phase():
    for k, s, p, d in itertools.product(range(1, 6), range(1, 5), range(4), range(1, 4)):
        taps = kernel_phase_taps((k, 1, 1), (s, 1, 1), (p, 0, 0), (d, 1, 1))
        owned = sorted(t for phase in taps for t in phase[0])
        assert owned == list(range(k))
        assert len(taps) == len(_residues(k, s, p, d))
        for r, phase in zip(_residues(k, s, p, d), taps):
            assert all(_owner(t, s, p, d) == r for t in phase[0])
            # Taps of a phase are s / gcd(s, d) apart.
            assert all(a - b == s // math.gcd(s, d) for a, b in zip(phase[0], phase[0][1:]))


def test_unpack_is_differentiable():
    w = torch.randn(4, 3, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    geometry = (2, (2, 1, 3), (1, 0, 2), (1, 2, 1))
    packed = pack_conv3d_phases(w, *geometry)
    back = unpack_conv3d_phases(packed, w.shape, *geometry)
    (grad,) = torch.autograd.grad((back * back).sum(), w)
    assert torch.equal(grad, 2 * w.detach())
