"""The reference engine: every phase as a dense stride-1 ``F.conv3d``, in pure torch.

Runs on any device and dtype torch's conv3d supports, and is differentiable through torch's
own ops.  Nothing is zero-inserted and nothing is scattered: each phase's correlation writes
its own strided slice ``out[..., rd::sd, rh::sh, rw::sw]`` of the output.  The only copy of
the input is the small crop/pad of the window a phase reads.
"""
import itertools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
import torch.nn.grad

from ..geometry import AxisPhase, PhasePlan


def _phase_window(x: torch.Tensor, axes: Sequence[AxisPhase]) -> Optional[torch.Tensor]:
    """The input window a phase reads, with its out-of-range part as zeros, or None when the
    window misses the input entirely."""
    pads = []
    for dim, axis in zip((2, 3, 4), axes):
        size = x.shape[dim]
        start, stop = axis.input_window
        lo, hi = max(start, 0), min(stop, size)
        if hi <= lo:
            return None
        x = x.narrow(dim, lo, hi - lo)
        pads.append((lo - start, stop - hi))
    # F.pad lists the last dimension first.
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat) if any(flat) else x


def forward(x: torch.Tensor, phase_weights, bias: Optional[torch.Tensor], plan: PhasePlan,
            groups: int, out_channels: int) -> torch.Tensor:
    """Transposed convolution of a batched input ``x`` (N, C_in, D, H, W).

    ``phase_weights`` is ``packing.pack_conv3d_phases``'s output, one entry per phase of
    ``plan.phases``, in the same order.  Outputs in residues without taps keep only the bias.

    Only real (input, tap) pairs are multiplied, as in torch: a phase whose window reaches
    into the zero padding runs as one padded ``conv3d`` while its sub-kernel is finite (a
    padding zero times a finite tap adds nothing) and tap by tap over the real inputs
    otherwise, so an Inf or NaN tap reaches exactly the outputs whose inputs it meets.
    """
    n = x.shape[0]
    out = x.new_zeros((n, out_channels) + plan.out_shape)
    stride = plan.stride
    for phase, w in zip(plan.phases, phase_weights):
        if phase.num_outputs == 0 or not phase.reads_input:
            continue
        rd, rh, rw = phase.index
        target = out[:, :, rd::stride[0], rh::stride[1], rw::stride[2]]
        if _scatter_is_cheaper(phase, x.shape[2:]):
            target.copy_(_phase_by_scatter(x, w, phase, groups))
            continue
        window = _phase_window(x, phase.axes)
        if window is None:
            continue
        if window.shape[2:] != x.shape[2:] and not bool(torch.isfinite(w).all()):
            _accumulate_taps(target, x, w, phase, groups)
        else:
            target.copy_(F.conv3d(window, w, None, 1, 0, phase.phase_dilation, groups))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1, 1)
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
    n = grad_out.shape[0]
    grad_x = grad_out.new_zeros((n, in_channels) + plan.in_shape)
    for p, (phase, w) in enumerate(zip(plan.phases, phase_weights)):
        if phase.num_outputs == 0 or not phase.reads_input:
            continue
        g = _phase_slice(grad_out, phase, plan.stride)
        if (phase_window is None and _scatter_is_cheaper(phase, plan.in_shape)
                and bool(torch.isfinite(w).all())):
            # the forward's scatter, adjoint: a conv3d of grad_z back onto the whole input
            # (grad_z's zeros meet only finite taps)
            gz = _scatter_grad_z(g, plan.in_shape, w, phase)
            grad_x += F.conv3d(gz, _transposed_taps(w, groups), None, 1, 0,
                               phase.phase_dilation, groups)
            continue
        # (N, C_out, counts) -> (N, C_in, window): conv_transpose3d reads w (C_out, C_in/g, T)
        # as (its in_channels, its out_channels / groups, T).
        if phase_window is not None:
            win = phase_window(g, p, phase)
        else:
            win = F.conv_transpose3d(g, w, None, 1, 0, 0, groups, phase.phase_dilation)
        src, dst = [slice(None), slice(None)], [slice(None), slice(None)]
        for axis, size in zip(phase.axes, plan.in_shape):
            start, stop = axis.input_window
            lo, hi = max(start, 0), min(stop, size)
            src.append(slice(lo - start, hi - start))
            dst.append(slice(lo, hi))
        grad_x[tuple(dst)] += win[tuple(src)]
    return grad_x


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
    c_in_g = c_in // groups
    c_out_g = out_channels // groups
    if tuple(weight_shape[:2]) != (c_in, c_out_g) or tuple(weight_shape[2:]) != plan.kernel:
        raise ValueError(f"weight_shape {tuple(weight_shape)} does not match the input "
                         f"({c_in} channels), out_channels={out_channels}, groups={groups} "
                         f"and the plan's kernel {plan.kernel}")
    out = []
    x_finite = None
    for phase in plan.phases:
        grad_w = x.new_zeros((out_channels, c_in_g) + phase.tap_shape)
        out.append(grad_w)
        if not (phase.num_outputs and n):
            continue
        # (N, G, C_out/g, outputs of the phase), and per tap the inputs it meets
        g = _phase_slice(grad_out, phase, plan.stride)
        if _scatter_is_cheaper(phase, plan.in_shape):
            if x_finite is None:
                x_finite = bool(torch.isfinite(x).all())
            if x_finite:  # grad_z's zeros meet only finite inputs
                # the forward's scatter z = conv_transpose3d(x, wt) is <x, conv3d(grad_z, wt)>
                gz = _scatter_grad_z(g, plan.in_shape, grad_w, phase)
                shape = (c_in, c_out_g) + phase.tap_shape
                gwt = torch.nn.grad.conv3d_weight(gz, shape, x, 1, 0, phase.phase_dilation,
                                                  groups)
                grad_w.copy_(_transposed_taps(gwt, groups))
                continue
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
                "ngos,ngcs->goc", gs, patch).reshape(out_channels, c_in_g)
    return tuple(out)


def grad_bias(grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`forward` with respect to the bias: ``grad_out`` summed over batch
    and space (C_out,).  Every output, bias-only phases included, carries the bias once."""
    return grad_out.sum(dim=(0, 2, 3, 4))
