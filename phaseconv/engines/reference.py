"""The reference engine: every phase as a dense stride-1 ``F.conv3d``, in pure torch.

Runs on any device and dtype torch's conv3d supports, and is differentiable through torch's
own ops.  Nothing is zero-inserted and nothing is scattered: each phase's correlation writes
its own strided slice ``out[..., rd::sd, rh::sh, rw::sw]`` of the output.  The input is read
in place: a phase's window reaches into the zero padding through conv3d's own padding
argument, so no copy of the input is made (where symmetric padding would compute more than a
few spare rows the phase pads its window once instead).

What a plan fixes (per phase: its conv3d's padding, the rows it keeps, the slice of the
flipped weight and of the output) is computed once per plan (:func:`conv_steps`); a call only
runs the convolutions.  float32 inputs on the CPU run channels-last (:func:`conv_layout`).
Small CPU layers, where a call's cost is its op count, run all phases at once instead
(``phase_gemm.py``; ``ops`` picks the path).
"""
import functools
import itertools
import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.nn.grad

from ..geometry import AxisPhase, PhasePlan, Triple

# A window whose symmetric padding computes more outputs than this share beyond the phase's
# own is padded once instead (a copy of the window is cheaper than that much spare work).
_SPARE_WORK = 0.15
# Inputs from this many elements on run channels-last on the CPU (below it the conversion's
# cost is not won back).
_CHANNELS_LAST_MIN = 1 << 16
# torch 1.13's oneDNN runs channels-last 3-D convolutions slower than NCDHW ones (measured on
# the sweep: 1.2-1.6x slower), torch 2's faster.
_CHANNELS_LAST_ONEDNN = int(torch.__version__.split(".")[0]) >= 2


class ConvStep(NamedTuple):
    """One phase with outputs that reads the input, as one ``F.conv3d`` of the input.

    The conv reads ``x[narrow]`` (all of ``x`` when ``narrow`` is None), padded by ``pad``
    (``F.pad``'s order, None for none) and then by ``padding`` (conv3d's own, symmetric);
    of its result the phase keeps ``crop`` (None: all of it), which lands on ``target``,
    the phase's strided slice of the output."""
    phase: int  # index into plan.phases (and the packed sub-kernels)
    target: tuple
    narrow: Optional[tuple]
    pad: Optional[Tuple[int, ...]]
    padding: Triple
    crop: Optional[tuple]
    dilation: Triple
    window: Triple  # the conv's input size (narrowed and padded)
    conv_out: Triple  # the conv's output size
    unpad: Optional[tuple]  # the real input's place in the padded window
    reads_padding: bool  # some of the conv's reads are zeros: the taps must be finite
    by_scatter: bool  # kernel much larger than the input: _phase_by_scatter instead


class ConvSteps(NamedTuple):
    steps: Tuple[ConvStep, ...]
    covers_output: bool  # every output voxel is written by exactly one step
    reads_padding: bool  # some step reads zero padding


def _axis_step(axis: AxisPhase, size: int):
    """One axis of a :class:`ConvStep`: (narrow, (pad before, pad after), conv padding,
    crop, spare outputs)."""
    start, stop = axis.input_window
    lo, hi = max(start, 0), min(stop, size)
    before, after = lo - start, stop - hi
    symmetric = max(before, after)
    # the conv over x[lo:hi] padded by `symmetric` on both sides computes this many outputs
    extent = (len(axis.taps) - 1) * axis.phase_dilation + 1
    computed = (hi - lo) + 2 * symmetric - extent + 1
    first = symmetric - before
    narrow = None if (lo, hi) == (0, size) else slice(lo, hi)
    return narrow, (before, after), symmetric, slice(first, first + axis.count), computed, hi - lo


@functools.lru_cache(maxsize=512)
def conv_steps(plan: PhasePlan) -> ConvSteps:
    """The conv3d of every phase of ``plan`` that has outputs and reads the input."""
    steps = []
    stride = plan.stride
    for index, phase in enumerate(plan.phases):
        if phase.num_outputs == 0 or not phase.reads_input:
            continue
        axes = [_axis_step(a, n) for a, n in zip(phase.axes, plan.in_shape)]
        spare = 1.0
        for (_, _, _, _, computed, _), a in zip(axes, phase.axes):
            spare *= computed / a.count
        explicit = spare > 1 + _SPARE_WORK
        narrow = tuple(a[0] or slice(None) for a in axes)
        pads = tuple(a[1] for a in axes)
        real = tuple(a[5] for a in axes)
        if explicit:  # pad the window once: the conv computes exactly the phase's outputs
            padding, crop = (0, 0, 0), None
            flat = tuple(p for pair in reversed(pads) for p in pair)  # F.pad: last dim first
            pad = flat if any(flat) else None
            window = tuple(r + b + a for r, (b, a) in zip(real, pads))
            conv_out = phase.out_shape
            unpad = (slice(None), slice(None)) + tuple(slice(b, b + r)
                                                       for r, (b, _) in zip(real, pads))
        else:
            padding = tuple(a[2] for a in axes)
            crops = tuple(a[3] for a in axes)
            full = all(c.start == 0 and a[4] == c.stop for c, a in zip(crops, axes))
            pad, crop = None, None if full else (slice(None), slice(None)) + crops
            window, conv_out, unpad = real, tuple(a[4] for a in axes), None
        rd, rh, rw = phase.index
        steps.append(ConvStep(
            index, (slice(None), slice(None), slice(rd, None, stride[0]),
                    slice(rh, None, stride[1]), slice(rw, None, stride[2])),
            None if all(a[0] is None for a in axes) else (slice(None), slice(None)) + narrow,
            pad, padding, crop, phase.phase_dilation, window, conv_out,
            None if pad is None else unpad, any(p != (0, 0) for p in pads),
            _scatter_is_cheaper(phase, plan.in_shape)))
    covered = sum(plan.phases[s.phase].num_outputs for s in steps)
    total = math.prod(max(a.out_size, 0) for a in plan.axes)
    return ConvSteps(tuple(steps), covered == total, any(s.reads_padding for s in steps))


def is_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite: one reduction (a finite sum has finite
    terms), and the elementwise test only where the sum overflows or is empty."""
    if t.numel() == 0:
        return True
    total = float(t.sum())
    return math.isfinite(total) or bool(torch.isfinite(t).all())


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout the phase convolutions run fastest on: oneDNN's float32 CPU
    convolutions read channels-last (NDHWC) in place and run faster on it than on NCDHW, which
    they reorder into blocks and back per call (once per phase)."""
    if (_CHANNELS_LAST_ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.numel() >= _CHANNELS_LAST_MIN and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled):
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _conv_input(x: torch.Tensor, step: ConvStep) -> torch.Tensor:
    if step.narrow is not None:
        x = x[step.narrow]
    return F.pad(x, step.pad) if step.pad is not None else x


def forward(x: torch.Tensor, phase_weights, bias: Optional[torch.Tensor], plan: PhasePlan,
            groups: int, out_channels: int,
            weight_finite: Optional[Callable[[], bool]] = None) -> torch.Tensor:
    """Transposed convolution of a batched input ``x`` (N, C_in, D, H, W).

    ``phase_weights`` is ``packing.pack_conv3d_phases``'s output (or
    ``packing.phase_sub_kernels``' views), one entry per phase of ``plan.phases``, in the
    same order.  Outputs in residues without taps keep only the bias.

    Only real (input, tap) pairs are multiplied, as in torch: a phase whose window reaches
    into the zero padding runs as one padded ``conv3d`` while its sub-kernel is finite (a
    padding zero times a finite tap adds nothing) and tap by tap over the real inputs
    otherwise, so an Inf or NaN tap reaches exactly the outputs whose inputs it meets.
    ``weight_finite()``, if given, says whether every sub-kernel is finite (one test of the
    whole weight; else each phase that reads padding tests its own).
    """
    plan_steps = conv_steps(plan)
    steps = plan_steps.steps
    finite = [True] * len(plan.phases)
    if plan_steps.reads_padding:
        whole = None if weight_finite is None else weight_finite()
        for step in steps:
            if step.reads_padding and not step.by_scatter:
                finite[step.phase] = (whole if whole is not None
                                      else is_finite(phase_weights[step.phase]))
    # the convolutions add the bias; every output a convolution does not write holds it
    exact = all(finite[s.phase] and not s.by_scatter for s in steps)
    shape = (x.shape[0], out_channels) + plan.out_shape
    if exact and plan_steps.covers_output:
        out = x.new_empty(shape)
    elif bias is None:
        out = x.new_zeros(shape)
    else:  # (a new tensor: a view of the bias would be the caller's tensor)
        out = x.new_empty(shape)
        out.copy_(bias.view(1, -1, 1, 1, 1))
    if x.shape[0] == 0:  # nothing to compute (torch 1.13's conv3d refuses strided weights here)
        return out
    xc = conv_layout(x)
    for step in steps:
        w = phase_weights[step.phase]
        target = out[step.target]
        if step.by_scatter:
            target += _phase_by_scatter(x, w, plan.phases[step.phase], groups)
        elif not finite[step.phase]:
            _accumulate_taps(target, x, w, plan.phases[step.phase], groups)
        else:
            y = F.conv3d(_conv_input(xc, step), w, bias, 1, step.padding, step.dilation, groups)
            target.copy_(y if step.crop is None else y[step.crop])
    return out


def _scatter_is_cheaper(phase, in_shape) -> bool:
    """Whether the phase's real inputs times its taps are far fewer than its outputs times
    its taps: a kernel much larger than the input, where most of a gathered window is
    padding."""
    gathered = scattered = 1
    for axis, size in zip(phase.axes, in_shape):
        start, stop = axis.input_window
        gathered *= axis.count
        scattered *= max(min(stop, size) - max(start, 0), 0)
    return gathered > 4 * scattered


def _phase_by_scatter(x: torch.Tensor, w: torch.Tensor, phase, groups: int) -> torch.Tensor:
    """The phase's outputs as a stride-1 transposed convolution of the real input (only real
    pairs are multiplied; the work grows with the input, not with the outputs).

    The phase computes ``y[j] = sum_t w[t] x[j + off_0 + t*pd]``; the transposed convolution
    with the taps reversed, ``z[m] = sum_t w[T-1-t] x[m - t*pd]``, holds it at
    ``m = j + off_0 + (T-1)*pd``; entries of ``z`` outside its range are empty sums."""
    z = F.conv_transpose3d(x, _transposed_taps(w, groups), None, 1, 0, 0, groups,
                           phase.phase_dilation)
    z_index, y_index = _scatter_ranges(phase, z.shape[2:])
    y = z.new_zeros(z.shape[:2] + phase.out_shape)
    y[y_index] = z[z_index]
    return y


def _transposed_taps(w: torch.Tensor, groups: int) -> torch.Tensor:
    """A phase's sub-kernel in conv3d's layout and offset order (C_out, C_in/g, T...) as
    conv_transpose3d's weight in kernel order (C_in, C_out/g, T...); an involution up to the
    roles of C_in and C_out."""
    c_out, cin_g = w.shape[:2]
    taps = tuple(w.shape[2:])
    wt = w.flip((2, 3, 4)).reshape((groups, c_out // groups, cin_g) + taps).transpose(1, 2)
    return wt.reshape((groups * cin_g, c_out // groups) + taps)


def _scatter_ranges(phase, z_shape):
    """Where the phase's outputs ``j`` sit in the scatter's ``z`` (at ``m = j + off_0 +
    (T-1)*pd``): the index into ``z`` and the matching index into the outputs (outputs
    outside ``z`` meet no real input)."""
    z_index, y_index = [slice(None), slice(None)], [slice(None), slice(None)]
    for axis, length in zip(phase.axes, z_shape):
        lo = axis.offsets[0] + (len(axis.taps) - 1) * axis.phase_dilation
        a = min(max(lo, 0), length)
        b = max(min(lo + axis.count, length), a)
        z_index.append(slice(a, b))
        y_index.append(slice(a - lo, b - lo))
    return tuple(z_index), tuple(y_index)


def _scatter_grad_z(g: torch.Tensor, x_shape, w: torch.Tensor, phase) -> torch.Tensor:
    """The phase's output gradient ``g`` placed where the scatter's ``z`` holds its outputs
    (zeros elsewhere)."""
    z_shape = tuple(n + (t - 1) * a.phase_dilation
                    for n, t, a in zip(x_shape, w.shape[2:], phase.axes))
    gz = g.new_zeros(g.shape[:2] + z_shape)
    z_index, y_index = _scatter_ranges(phase, z_shape)
    gz[z_index] = g[y_index]
    return gz


def _tap_ranges(phase, tap, in_shape):
    """For one tap (an index per axis into the phase's taps): per axis the range of the
    phase's outputs ``[lo, hi)`` whose input ``j + offset`` is real, and that offset; None
    when no output of the phase meets a real input through this tap."""
    ranges = []
    for axis, t, size in zip(phase.axes, tap, in_shape):
        offset = axis.offsets[t]
        lo, hi = max(0, -offset), min(axis.count, size - offset)
        if hi <= lo:
            return None
        ranges.append((lo, hi, offset))
    return ranges


def _accumulate_taps(target: torch.Tensor, x: torch.Tensor, w: torch.Tensor, phase,
                     groups: int) -> None:
    """``target`` (a phase's outputs) += the phase's correlation, one tap at a time over the
    real inputs only (a 1x1x1 grouped conv3d per tap)."""
    for tap in itertools.product(*(range(len(a.taps)) for a in phase.axes)):
        ranges = _tap_ranges(phase, tap, x.shape[2:])
        if ranges is None:
            continue
        src = x[(slice(None), slice(None)) + tuple(slice(lo + o, hi + o) for lo, hi, o in ranges)]
        dst = (slice(None), slice(None)) + tuple(slice(lo, hi) for lo, hi, _ in ranges)
        target[dst] += F.conv3d(src, w[(slice(None), slice(None)) + tap][..., None, None, None],
                                None, 1, 0, 1, groups)


# --- Backward, phase by phase ------------------------------------------------------------------
#
# The forward above is linear in the input and in the weight, and each phase is an ordinary
# stride-1 conv3d of a window of the input with a sub-kernel.  So the backward splits the same
# way: per phase, the gradient of that small conv3d, read off the phase's strided slice of
# ``grad_out``.  Nothing below multiplies an inserted zero either.


def _phase_slice(grad_out: torch.Tensor, phase, stride) -> torch.Tensor:
    """``grad_out[:, :, rd::sd, rh::sh, rw::sw]``: the outputs owned by ``phase`` (its shape
    is ``phase.out_shape``)."""
    rd, rh, rw = phase.index
    return grad_out[:, :, rd::stride[0], rh::stride[1], rw::stride[2]]


def grad_input(grad_out: torch.Tensor, phase_weights, plan: PhasePlan, groups: int,
               in_channels: int, phase_window=None) -> torch.Tensor:
    """Gradient of :func:`forward` with respect to its batched input ``x`` (N, C_in, D, H, W).

    **The whole operator.**  Along one axis the transposed convolution scatters
    ``y[i*s - p + k*d] += w[k] x[i]`` (channels and groups ride along as a matrix product per
    tap).  Its adjoint with respect to ``x`` gathers along the same edges::

        grad_x[i] = sum_k  w[k] . grad_y[i*s - p + k*d]      (terms outside [0, L_out) are 0)

    which is, term for term, an ordinary *strided* convolution (a cross-correlation, no flip)
    of ``grad_y`` with stride ``s``, padding ``p`` and dilation ``d``.  The transposed weight
    (C_in, C_out/g, k...) is already in conv3d's (out_channels, in_channels/g, k...) layout,
    so in 3-D::

        grad_input = F.conv3d(grad_out, weight, stride=s, padding=p, dilation=d,
                              groups=g)[..., :D, :H, :W]

    (the crop only matters when ``output_padding >= stride``, possible when ``d > s``: conv3d
    then yields ``floor(output_padding / s)`` extra rows per axis that no input owns).

    **Split by output residue.**  For a fixed tap ``k`` every input lands on the same output
    residue ``r = (k*d - p) mod s``, i.e. every tap reads exactly one phase of ``grad_y``.
    Grouping the sum over ``k`` by phase and writing ``o = r + s*j`` with ``j = i - offset_k``
    (``offset_k = (r + p - k*d) / s``, the forward's offset table)::

        grad_x[i] = sum_r  sum_{t}  w[k_t] . grad_y_r[i - offset_{k_t}],
        grad_y_r[j] = grad_y[r + s*j],   offset_{k_t} = offset_{k_0} + t * phase_dilation

    The inner sum is a stride-1 transposed convolution (a "full" correlation) of the phase
    slice ``grad_y_r`` with the phase's sub-kernel at the phase dilation; its result index
    ``m`` is input ``i = m + offset_{k_0}``, so it covers exactly the forward's input window
    ``[offsets[0], offsets[-1] + count)``.  Cropping that window to ``[0, L)`` (the rest was
    zero padding in the forward) and summing over phases is the strided convolution above,
    each of its multiply-adds done once (the strided convolution multiplies no inserted zeros
    either; the split lets the backward reuse the forward's packed sub-kernels and windows).

    ``phase_weights`` is :func:`phaseconv.packing.pack_conv3d_phases`'s output for the same
    geometry.  ``phase_window(g, p, phase)``, if given, computes that stride-1 transposed
    convolution of phase ``p``'s slice ``g`` instead of ``F.conv_transpose3d`` (the CUDA
    engine runs its own kernel there).  Returns (N, in_channels, D, H, W).
    """
    if phase_window is None:
        return backward(None, grad_out, phase_weights, plan, groups, in_channels, True, False)[0]
    n = grad_out.shape[0]
    grad_x = grad_out.new_zeros((n, in_channels) + plan.in_shape)
    for p, (phase, w) in enumerate(zip(plan.phases, phase_weights)):
        if phase.num_outputs == 0 or not phase.reads_input:
            continue
        g = _phase_slice(grad_out, phase, plan.stride)
        _grad_input_phase(grad_x, g, w, phase, plan, groups, phase_window(g, p, phase))
    return grad_x


def _grad_input_phase(grad_x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, phase,
                      plan: PhasePlan, groups: int, win: Optional[torch.Tensor] = None) -> None:
    """``grad_x`` += one phase's input gradient, each real pair once (``win``: the phase's
    stride-1 transposed convolution of ``g``, if the caller computed it)."""
    if (win is None and _scatter_is_cheaper(phase, plan.in_shape)
            and bool(torch.isfinite(w).all())):
        # the forward's scatter, adjoint: a conv3d of grad_z back onto the whole input
        # (grad_z's zeros meet only finite taps)
        gz = _scatter_grad_z(g, plan.in_shape, w, phase)
        grad_x += F.conv3d(gz, _transposed_taps(w, groups), None, 1, 0,
                           phase.phase_dilation, groups)
        return
    # (N, C_out, counts) -> (N, C_in, window): conv_transpose3d reads w (C_out, C_in/g, T)
    # as (its in_channels, its out_channels / groups, T).
    if win is None:
        win = F.conv_transpose3d(g, w, None, 1, 0, 0, groups, phase.phase_dilation)
    src, dst = [slice(None), slice(None)], [slice(None), slice(None)]
    for axis, size in zip(phase.axes, plan.in_shape):
        start, stop = axis.input_window
        lo, hi = max(start, 0), min(stop, size)
        src.append(slice(lo - start, hi - start))
        dst.append(slice(lo, hi))
    grad_x[tuple(dst)] += win[tuple(src)]


def grad_weight_phases(x: torch.Tensor, grad_out: torch.Tensor, plan: PhasePlan, groups: int,
                       out_channels: int, weight_shape: Sequence[int]):
    """Per phase, the gradient of :func:`forward` with respect to that phase's sub-kernel, in
    :func:`phaseconv.packing.pack_conv3d_phases`'s layout (C_out, C_in/g, Td, Th, Tw).  Feed
    the result to
    :func:`phaseconv.packing.unpack_conv3d_phases` for the gradient of the original weight.

    A phase computes ``y_r[n, o, j] = sum_{c, t} w_r[o, c, t] window[n, c, j + t*pd]`` (``pd``
    the phase dilation, ``c`` over the group of ``o``), so::

        grad_w_r[o, c, t] = sum_{n, j} grad_y_r[n, o, j] * window[n, c, j + t*pd]

    a correlation of the input window with the phase slice of ``grad_out``, reduced over batch
    and space.  One ``einsum`` per tap does that reduction (plain torch ops, no scatter and no
    atomics) over the outputs whose input through that tap is real: a padding zero never
    meets ``grad_out`` (an Inf or NaN there reaches only the taps it truly meets, as in
    torch).  A tap that meets no real input gets zeros.  ``x`` is the batched input
    (N, C_in, D, H, W) and
    ``weight_shape`` the transposed weight's shape (C_in, C_out/g, kD, kH, kW).
    """
    n, c_in = x.shape[:2]
    c_out_g = out_channels // groups
    if tuple(weight_shape[:2]) != (c_in, c_out_g) or tuple(weight_shape[2:]) != plan.kernel:
        raise ValueError(f"weight_shape {tuple(weight_shape)} does not match the input "
                         f"({c_in} channels), out_channels={out_channels}, groups={groups} "
                         f"and the plan's kernel {plan.kernel}")
    return backward(x, grad_out, None, plan, groups, c_in, False, True)[1]


def _grad_weight_phase(grad_w: torch.Tensor, x: torch.Tensor, g: torch.Tensor, phase,
                       plan: PhasePlan, groups: int, x_finite: bool) -> None:
    """One phase's weight gradient into ``grad_w`` (zeros), over real pairs only."""
    n, c_in = x.shape[:2]
    c_in_g = c_in // groups
    c_out = g.shape[1]
    c_out_g = c_out // groups
    if _scatter_is_cheaper(phase, plan.in_shape) and x_finite:
        # grad_z's zeros meet only finite inputs: the forward's scatter
        # z = conv_transpose3d(x, wt) is <x, conv3d(grad_z, wt)>
        gz = _scatter_grad_z(g, plan.in_shape, grad_w, phase)
        shape = (c_in, c_out_g) + phase.tap_shape
        gwt = torch.nn.grad.conv3d_weight(gz, shape, x, 1, 0, phase.phase_dilation, groups)
        grad_w.copy_(_transposed_taps(gwt, groups))
        return
    for tap in itertools.product(*(range(len(a.taps)) for a in phase.axes)):
        ranges = _tap_ranges(phase, tap, plan.in_shape)
        if ranges is None:
            continue
        sel = tuple(slice(lo, hi) for lo, hi, _ in ranges)
        patch = x[(slice(None), slice(None))
                  + tuple(slice(lo + o, hi + o) for lo, hi, o in ranges)]
        gs = g[(slice(None), slice(None)) + sel].reshape(n, groups, c_out_g, -1)
        patch = patch.reshape(n, groups, c_in_g, -1)
        grad_w[(slice(None), slice(None)) + tap] = torch.einsum(
            "ngos,ngcs->goc", gs, patch).reshape(c_out, c_in_g)


def backward(x: Optional[torch.Tensor], grad_out: torch.Tensor, phase_weights,
             plan: PhasePlan, groups: int, in_channels: int, need_input: bool,
             need_weight: bool, weight_finite: Optional[Callable[[], bool]] = None):
    """(:func:`grad_input` or None, :func:`grad_weight_phases` or None) in one pass.

    Each phase is the forward's conv3d (:class:`ConvStep`), so both its gradients come from
    one ``convolution_backward`` of that conv: ``grad_out``'s phase slice as the conv's output
    gradient (zeros on the spare outputs it computes and drops), the input gradient cropped
    to the real input and summed over phases.  That multiplies padding zeros (the conv's
    padding by ``grad_out``, its spare outputs' zero gradients by the taps and the input), so
    it runs where those operands are finite; otherwise, and where the kernel dwarfs the input,
    the phase runs pair by pair as documented in :func:`grad_input` and
    :func:`grad_weight_phases`.  ``x`` is needed for the weight gradient only;
    ``phase_weights`` for the input gradient only; ``weight_finite`` as in :func:`forward`.
    """
    n = grad_out.shape[0]
    out_channels = grad_out.shape[1]
    plan_steps = conv_steps(plan)
    grad_x = grad_w = None
    if need_weight:
        c_in_g = in_channels // groups
        grad_w = [grad_out.new_zeros((out_channels, c_in_g) + phase.tap_shape)
                  for phase in plan.phases]
    if n == 0:
        if need_input:
            grad_x = grad_out.new_zeros((n, in_channels) + plan.in_shape)
        return grad_x, None if grad_w is None else tuple(grad_w)
    # whether the zeros a step multiplies meet only finite values, asked once per call
    known = {}

    def finite(name: str) -> bool:
        if name not in known:
            if name == "weight":
                known[name] = weight_finite() if weight_finite is not None else all(
                    is_finite(phase_weights[s.phase]) for s in plan_steps.steps)
            else:
                known[name] = is_finite(x if name == "input" else grad_out)
        return known[name]

    for step in plan_steps.steps:
        phase = plan.phases[step.phase]
        g = grad_out[step.target]
        fast_input = need_input and not step.by_scatter and (
            step.crop is None or finite("weight"))
        fast_weight = need_weight and not step.by_scatter and (
            not step.reads_padding or finite("grad_out")) and (
            step.crop is None or finite("input"))
        if fast_input or fast_weight:
            gx_step, gw_step = _step_backward(step, g, x, phase_weights, grad_w, groups,
                                              in_channels, fast_input, fast_weight)
            if gw_step is not None:
                grad_w[step.phase] = gw_step
            if gx_step is not None:
                if grad_x is None and step.narrow is None and step.pad is None:
                    grad_x = gx_step  # full size: the sum of the phases builds on it
                else:
                    if grad_x is None:
                        grad_x = grad_out.new_zeros((n, in_channels) + plan.in_shape)
                    _add_window(grad_x, gx_step, step)
        if need_input and not fast_input:
            if grad_x is None:
                grad_x = grad_out.new_zeros((n, in_channels) + plan.in_shape)
            _grad_input_phase(grad_x, g, phase_weights[step.phase], phase, plan, groups)
        if need_weight and not fast_weight:
            _grad_weight_phase(grad_w[step.phase], x, g, phase, plan, groups,
                               finite("input") if step.by_scatter else False)
    if need_input and grad_x is None:
        grad_x = grad_out.new_zeros((n, in_channels) + plan.in_shape)
    return grad_x, None if grad_w is None else tuple(grad_w)


def _add_window(grad_x: torch.Tensor, grad_window: torch.Tensor, step: ConvStep) -> None:
    """``grad_x`` += the gradient of a step's conv input, on the input it holds."""
    if step.unpad is not None:
        grad_window = grad_window[step.unpad]
    if step.narrow is not None:
        grad_x = grad_x[step.narrow]
    grad_x += grad_window


def _step_backward(step: ConvStep, g: torch.Tensor, x, phase_weights, grad_w, groups,
                   in_channels, need_input: bool, need_weight: bool):
    """The gradients of one :class:`ConvStep`'s conv3d: (with respect to its input window,
    with respect to its sub-kernel), None where not asked."""
    n, c_out = g.shape[:2]
    if step.crop is not None:
        full = g.new_zeros((n, c_out) + step.conv_out)
        full[step.crop] = g
        g = full
    # where a gradient is not asked its operand's shape is all that is read
    w = phase_weights[step.phase] if need_input else grad_w[step.phase]
    window = (_conv_input(x, step) if x is not None
              else g.new_empty((n, in_channels) + step.window))
    gx, gw, _ = torch.ops.aten.convolution_backward(
        g, window, w, None, (1, 1, 1), step.padding, step.dilation, False, (0, 0, 0), groups,
        (need_input, need_weight, False))
    return (gx if need_input else None), (gw if need_weight else None)


def grad_bias(grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`forward` with respect to the bias: ``grad_out`` summed over batch
    and space (C_out,).  Every output, bias-only phases included, carries the bias once."""
    return grad_out.sum(dim=(0, 2, 3, 4))
