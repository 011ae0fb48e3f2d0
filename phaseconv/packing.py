"""Packing: split the transposed-convolution weight into per-phase sub-kernels.

Each kernel tap belongs to exactly one phase per axis, so the phase sub-kernels are a
partition of the weight: packing is a gather, and its gradient is the matching scatter.
The split depends only on kernel size, stride, padding and dilation (not on the input size or
the weight's values): the CUDA engine turns it, once per geometry, into index maps on the
device (``engines/cuda.py``), and every call packs the weight by them.
"""
import functools
from typing import Optional, Tuple

import torch

from .geometry import Triple, axis_taps

PhaseTaps = Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


def kernel_phase_taps(kernel: Triple, stride: Triple, padding: Triple,
                      dilation: Triple) -> Tuple[PhaseTaps, ...]:
    """Per 3-D phase with taps (row-major over the residues), the taps of each axis in offset
    order: the phases of ``geometry.PhasePlan.phases``, in the same order."""
    return _kernel_phase_taps(*(tuple(int(v) for v in seq)
                                for seq in (kernel, stride, padding, dilation)))


@functools.lru_cache(maxsize=512)
def _kernel_phase_taps(kernel: Triple, stride: Triple, padding: Triple,
                       dilation: Triple) -> Tuple[PhaseTaps, ...]:
    per_axis = [[taps for _, taps, _ in axis_taps(k, s, p, dilation=d)]
                for k, s, p, d in zip(kernel, stride, padding, dilation)]
    return tuple((td, th, tw) for td in per_axis[0] for th in per_axis[1] for tw in per_axis[2])


def grouped_conv_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_in, C_out/g, k...) -> (C_out, C_in/g, k...): the transposed weight seen as conv3d's."""
    c_in, c_out_g = weight.shape[:2]
    kernel = weight.shape[2:]
    w = weight.reshape(groups, c_in // groups, c_out_g, *kernel).transpose(1, 2)
    return w.reshape(groups * c_out_g, c_in // groups, *kernel)


def pack_conv3d_phases(weight: torch.Tensor, groups: int, stride: Triple, padding: Triple,
                       dilation: Triple) -> Tuple[Optional[torch.Tensor], ...]:
    """The reference engine's layout: per phase with taps a conv3d weight
    (C_out, C_in/g, Td, Th, Tw) holding the flipped, strided slice of the kernel.
    Differentiable with respect to ``weight``."""
    return tuple(sub.contiguous() for sub in
                 phase_sub_kernels(weight, groups, stride, padding, dilation))


def phase_sub_kernels(weight: torch.Tensor, groups: int, stride: Triple, padding: Triple,
                      dilation: Triple) -> Tuple[torch.Tensor, ...]:
    """:func:`pack_conv3d_phases`'s sub-kernels as strided views of one flipped copy of the
    weight (one copy per call, however many phases: a phase's taps, in offset order, are
    an ascending strided slice of the flipped kernel)."""
    # contiguous: for one group the conv3d view is the weight transposed, which flip keeps
    flipped = grouped_conv_weight(weight, groups).flip((2, 3, 4)).contiguous()
    return tuple(flipped[(slice(None), slice(None)) + index] for index in
                 flipped_tap_slices(tuple(weight.shape[2:]), stride, padding, dilation))


def flipped_tap_slices(kernel: Triple, stride: Triple, padding: Triple, dilation: Triple):
    """Per phase (:func:`kernel_phase_taps`' order) the index of its taps in the kernel flipped
    along all three axes: tap ``k`` of an axis of ``K`` taps sits at ``K - 1 - k``, so the
    phase's descending taps (its offset order) are an ascending strided slice."""
    return _flipped_tap_slices(*(tuple(int(v) for v in seq)
                                 for seq in (kernel, stride, padding, dilation)))


@functools.lru_cache(maxsize=512)
def _flipped_tap_slices(kernel: Triple, stride: Triple, padding: Triple, dilation: Triple):
    out = []
    for taps in kernel_phase_taps(kernel, stride, padding, dilation):
        index = []
        for k, t in zip(kernel, taps):
            sl, _ = _tap_slice(t)
            index.append(slice(k - 1 - t[0], k - t[-1], sl.step))
        out.append(tuple(index))
    return tuple(out)


def select_taps(w: torch.Tensor, first_axis: int, taps) -> torch.Tensor:
    """``w`` restricted to one phase's taps along its three kernel axes (``first_axis`` on),
    in the phase's order: a strided slice, flipped where the order runs backwards.  The same
    as ``index_select`` with the tap lists, without building index tensors (on a GPU each
    would be a host-to-device copy, at every weight update)."""
    sub = w
    for axis, t in enumerate(taps):
        sl, backwards = _tap_slice(tuple(t))
        index = [slice(None)] * sub.dim()
        index[first_axis + axis] = sl
        sub = sub[tuple(index)]
        if backwards:
            sub = sub.flip(first_axis + axis)
    return sub


def _tap_slice(taps: Tuple[int, ...]) -> Tuple[slice, bool]:
    """One axis of a phase: its taps as a strided slice of the kernel axis (they are evenly
    spaced, s / gcd(s, d) apart), and whether the packed (input-offset) order runs backwards
    along the kernel."""
    lo, hi = min(taps), max(taps)
    step = (hi - lo) // (len(taps) - 1) if len(taps) > 1 else 1
    if sorted(taps) != list(range(lo, hi + 1, step)):
        raise ValueError(f"phase taps {taps} are not evenly spaced")
    return slice(lo, hi + 1, step), len(taps) > 1 and taps[0] > taps[-1]


def unpack_conv3d_phases(phase_grads, weight_shape, groups: int, stride: Triple,
                         padding: Triple, dilation: Triple) -> torch.Tensor:
    """The inverse of :func:`pack_conv3d_phases`: scatter per-phase (C_out, C_in/g, Td, Th, Tw)
    tensors back into the transposed weight's layout (C_in, C_out/g, kD, kH, kW).

    Every tap belongs to exactly one phase, so this is a plain scatter with no sums:
    ``unpack(pack(w)) == w``; a phase's taps are a strided slice of each kernel axis, so each
    phase is one strided copy (no index_put: deterministic on every device).  An entry may
    be None (a phase whose gradient is known to be zero); its taps come back as zeros.  The
    reference engine's weight gradient is ``unpack(grad_weight_phases(...))``; differentiable
    in the entries.
    """
    c_in, c_out_g = int(weight_shape[0]), int(weight_shape[1])
    kernel = tuple(int(k) for k in weight_shape[2:])
    phase_taps = kernel_phase_taps(kernel, stride, padding, dilation)
    if len(phase_grads) != len(phase_taps):
        raise ValueError(f"unpack_conv3d_phases: got {len(phase_grads)} phases, the geometry "
                         f"has {len(phase_taps)}")
    template = next((g for g in phase_grads if g is not None), None)
    if template is None:
        return torch.zeros((c_in, c_out_g) + kernel)
    c_in_g = c_in // groups
    # Work in conv3d's layout (C_out, C_in/g, k...) flipped, where every phase is an ascending
    # strided slice (no flip per phase); every tap is written unless a phase is missing.
    shape = (groups * c_out_g, c_in_g) + kernel
    complete = all(g is not None for g in phase_grads)
    flipped = template.new_empty(shape) if complete else template.new_zeros(shape)
    for taps, index, g in zip(phase_taps, flipped_tap_slices(kernel, stride, padding, dilation),
                              phase_grads):
        if g is None:
            continue
        expected = (groups * c_out_g, c_in_g) + tuple(len(t) for t in taps)
        if tuple(g.shape) != expected:
            raise ValueError(f"unpack_conv3d_phases: a phase with taps {taps} needs shape "
                             f"{expected}, got {tuple(g.shape)}")
        flipped[(slice(None), slice(None)) + index] = g
    # (G*C_out/g, C_in/g, k...) -> (G, C_out/g, C_in/g, k...) -> (C_in, C_out/g, k...)
    w = flipped.flip((2, 3, 4))
    if groups == 1:
        return w.transpose(0, 1).contiguous()
    w = w.reshape((groups, c_out_g, c_in_g) + kernel).transpose(1, 2)
    return w.reshape((c_in, c_out_g) + kernel).contiguous()
