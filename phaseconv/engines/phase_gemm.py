"""The reference engine's path for small layers: all phases in one batched GEMM.

The rule (:func:`applies`, shown by ``phaseconv.explain``): a CPU call in float32 or float64
of at most ``MAX_MACS_PER_SAMPLE`` multiply-adds per sample, with taps in every residue and
more than one phase; every other reference call runs one ``conv3d`` per phase.

On a small layer the cost of a call is the number of torch ops it runs, not its arithmetic:
one ``conv3d`` per phase (eight for a 3x3x3 kernel at stride 2) costs several times torch's
whole ``conv_transpose3d``.  Here every phase is still a dense correlation of the input with
its own taps, but all of them run together, in a fixed number of ops whatever the phase
count:

* one gather reads, for every tap ``t`` of every phase and every output ``j`` of that phase,
  the input ``j + offset_t`` (padding zeros at the borders, as a padded conv3d reads them);
* one batched matrix product multiplies each tap's inputs by that tap's weight;
* one ``index_add_`` sums each phase's taps (taps are listed phase by phase, each phase's in
  offset order: a fixed, deterministic order), and one copy interleaves the phases into the
  output (phase ``(rd, rh, rw)`` owns ``out[..., rd::sd, rh::sh, rw::sw]``).

Phases own different numbers of outputs when an axis does not divide by the stride; the
gather then lays every phase on the largest phase's grid and its extra rows read a padding
zero and are dropped, like the spare rows of a padded conv3d.  The backward runs the same ops
transposed (:func:`backward`).  A padding zero read by a real output meets the weight (and,
in the weight gradient, ``grad_out``) only where those are finite: the caller checks and
otherwise runs the phase-by-phase path, which multiplies real pairs only.
"""
import functools
import itertools
import math
from typing import NamedTuple, Optional

import torch

from ..geometry import PhasePlan

# Layers up to this many multiply-adds per sample run here (above it one conv3d per phase
# wins: the gathered copy of the input grows with the taps, and oneDNN's convolutions with
# the work).
MAX_MACS_PER_SAMPLE = 1 << 18
_DTYPES = (torch.float32, torch.float64)


class GemmPlan(NamedTuple):
    """The index tables and shapes of one plan, batch and grouping (CPU tensors, made once
    and never written)."""
    gather: torch.Tensor  # (taps * C_in * N * grid,) elements of the padded input
    tap_phase: torch.Tensor  # (taps,) the phase each tap (in kernel order) belongs to
    reads_padding: bool  # a kept output reads a padding zero
    pads: tuple  # F.pad of the input (last dimension first)
    padded: tuple  # (N, C_in, D, H, W) padded
    real: tuple  # the index of the real input in it
    cols: tuple  # (taps, G, C_in/g, N * grid): the gathered inputs
    weight: tuple  # (G, C_in/g, C_out/g, kernel taps)
    phases: tuple  # (phases, G, C_out/g, N * grid)
    by_residue: tuple  # the same as (sd, sh, sw, G, C_out/g, N, gd, gh, gw)
    full: tuple  # (N, G, C_out/g, gd, sd, gh, sh, gw, sw): the phases interleaved
    full_out: tuple  # (N, C_out, gd * sd, gh * sh, gw * sw)
    crop: Optional[tuple]  # the output inside it (None: all of it)


def applies(device: torch.device, dtype: torch.dtype, plan: PhasePlan, in_channels: int,
            out_channels: int, groups: int) -> bool:
    """Whether a call runs here: a small layer on the CPU, in float32 or float64, whose every
    residue has taps (an output without taps holds only the bias: one conv3d per phase
    leaves it alone)."""
    if device.type != "cpu" or dtype not in _DTYPES:
        return False
    if any(len(a.phases) != a.stride or a.bias_only for a in plan.axes):
        return False
    macs = plan.macs_per_sample(in_channels, out_channels, groups)
    return macs <= MAX_MACS_PER_SAMPLE and len(plan.phases) > 1


@functools.lru_cache(maxsize=256)
def gemm_plan(plan: PhasePlan, batch: int, in_channels: int, out_channels: int,
              groups: int) -> GemmPlan:
    in_shape, kernel = plan.in_shape, plan.kernel
    grid = tuple(max(ph.count for ph in a.phases) for a in plan.axes)
    # the padded input covers every phase's window on the grid, and holds one padding zero
    # at least (the dropped rows read it)
    before = [max(0, -min(ph.offsets[0] for ph in a.phases)) for a in plan.axes]
    after = [max(0, max(ph.offsets[-1] for ph in a.phases) + g - n)
             for a, g, n in zip(plan.axes, grid, in_shape)]
    if not any(before) and not any(after):
        after[2] = 1
    padded = tuple(n + b + a for n, b, a in zip(in_shape, before, after))
    volume = math.prod(padded)
    # the dropped rows read a padding voxel: the first one where padding comes before the
    # input on some axis, else the last one
    zero = 0 if any(before) else volume - 1
    # every kernel tap belongs to one phase: list the taps in kernel order, so that the
    # weight needs no gather (each phase's taps are summed in that fixed order)
    owner = {}
    for p, phase in enumerate(plan.phases):
        for tap in itertools.product(*(range(len(a.taps)) for a in phase.axes)):
            owner[tuple(a.taps[t] for a, t in zip(phase.axes, tap))] = (p, phase, tap)
    voxels, tap_phase = [], []
    reads_padding = False
    for k in itertools.product(*(range(n) for n in kernel)):
        p, phase, tap = owner[k]
        tap_phase.append(p)
        per_axis = []
        for a, t, g, b, n in zip(phase.axes, tap, grid, before, in_shape):
            axis_rows = []
            for j in range(g):
                i = j + a.offsets[t]
                axis_rows.append(None if j >= a.count else i + b)
                reads_padding |= j < a.count and not 0 <= i < n
            per_axis.append(axis_rows)
        voxels.append([-1 if d is None or h is None or w is None
                       else (d * padded[1] + h) * padded[2] + w
                       for d, h, w in itertools.product(*per_axis)])
    # element (tap, channel, sample, row): voxel `row` of that tap in plane (sample, channel)
    # of the padded input, or for a dropped row the padding voxel of the first plane
    voxel = torch.tensor(voxels)[:, None, None, :]
    planes = (torch.arange(batch)[None, :] * in_channels
              + torch.arange(in_channels)[:, None]) * volume
    gather = torch.where(voxel < 0, torch.full_like(voxel, zero),
                         voxel + planes[None, :, :, None]).flatten()
    c_in_g, c_out_g = in_channels // groups, out_channels // groups
    (gd, gh, gw), (sd, sh, sw) = grid, plan.stride
    full_out = (batch, out_channels, gd * sd, gh * sh, gw * sw)
    crop = None if full_out[2:] == plan.out_shape else (
        (slice(None), slice(None)) + tuple(slice(0, n) for n in plan.out_shape))
    pads = tuple(v for b, a in zip(reversed(before), reversed(after)) for v in (b, a))
    return GemmPlan(
        gather, torch.tensor(tap_phase), reads_padding, pads,
        (batch, in_channels) + padded,
        (slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(before, in_shape)),
        (len(tap_phase), groups, c_in_g, batch * math.prod(grid)),
        (groups, c_in_g, c_out_g, math.prod(kernel)),
        (len(plan.phases), groups, c_out_g, batch * math.prod(grid)),
        (sd, sh, sw, groups, c_out_g, batch, gd, gh, gw),
        (batch, groups, c_out_g, gd, sd, gh, sh, gw, sw), full_out, crop)


def _gathered(x: torch.Tensor, gp: GemmPlan) -> torch.Tensor:
    """(taps, G, C_in/g, N * grid): every tap's inputs."""
    padded = torch.nn.functional.pad(x, gp.pads)
    return padded.reshape(-1).index_select(0, gp.gather).view(gp.cols)


def _tap_weights(weight: torch.Tensor, gp: GemmPlan) -> torch.Tensor:
    """(taps, G, C_out/g, C_in/g): each tap's weight, in kernel order."""
    return weight.reshape(gp.weight).permute(3, 0, 2, 1).contiguous()


def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            gp: GemmPlan) -> torch.Tensor:
    """The transposed convolution of a batched ``x`` (N, C_in, D, H, W) by the tables ``gp``
    of its layer (one that :func:`applies`, with a finite weight if ``gp.reads_padding``)."""
    # (taps, G, C_out/g, C_in/g) @ (taps, G, C_in/g, N * grid): the small matrices first
    # (batched GEMMs of this shape run several times faster than their transposes)
    products = torch.matmul(_tap_weights(weight, gp), _gathered(x, gp))
    # per phase, the sum of its taps; then phase (rd, rh, rw) to out[..., rd::sd, rh::sh, rw::sw]
    phases = products.new_zeros(gp.phases).index_add_(0, gp.tap_phase, products)
    by_residue = phases.view(gp.by_residue).permute(5, 3, 4, 6, 0, 7, 1, 8, 2)
    out = x.new_empty(gp.full_out)  # (not a view: autograd tells views apart)
    if bias is None:
        out.view(gp.full).copy_(by_residue)
    else:  # (the bias added on the way)
        torch.add(by_residue, bias.view(gp.full[1:3] + (1,) * 6), out=out.view(gp.full))
    return out if gp.crop is None else out[gp.crop].contiguous()


def backward(x: torch.Tensor, grad_out: torch.Tensor, weight: torch.Tensor, gp: GemmPlan,
             need_input: bool, need_weight: bool):
    """(grad_input or None, grad_weight in the weight's layout or None) of :func:`forward`:
    its ops transposed.  ``grad_out`` must be finite where the plan reads padding and the
    weight gradient is asked; the input gradient is exact in any case (a dropped row's zero
    gradient meets the weight only on its way to a padding voxel, which is cut off)."""
    if gp.crop is not None:
        full = grad_out.new_zeros(gp.full_out)
        full[gp.crop] = grad_out
        grad_out = full
    by_phase = grad_out.reshape(gp.full).permute(4, 6, 8, 1, 2, 0, 3, 5, 7).reshape(gp.phases)
    by_tap = by_phase.index_select(0, gp.tap_phase)  # (taps, G, C_out/g, N * grid)
    grad_x = grad_w = None
    if need_input:
        cols = torch.matmul(_tap_weights(weight, gp).transpose(2, 3), by_tap)
        padded = cols.new_zeros(gp.padded)
        padded.view(-1).index_add_(0, gp.gather, cols.view(-1))
        grad_x = padded[gp.real].contiguous()
    if need_weight:
        tap_grads = torch.matmul(by_tap, _gathered(x, gp).transpose(2, 3))
        # (taps, G, C_out/g, C_in/g) -> (C_in, C_out/g, kD, kH, kW)
        grad_w = tap_grads.permute(1, 3, 2, 0).reshape(weight.shape).contiguous()
    return grad_x, grad_w
