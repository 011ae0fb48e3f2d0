"""Packing: split the transposed-convolution weight into per-phase sub-kernels.

Each kernel tap belongs to exactly one phase per axis, so the phase sub-kernels are a
partition of the weight: packing is a gather, and its gradient is the matching scatter.
The split depends only on kernel size, stride, padding and dilation (not on the input size or
the weight's values): the CUDA engine turns it, once per geometry, into index maps on the
device (``engines/cuda.py``), and every call gathers the weight through them.
"""
from typing import Optional, Tuple

import torch

from .geometry import Triple, axis_taps

PhaseTaps = Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


def kernel_phase_taps(kernel: Triple, stride: Triple, padding: Triple,
                      dilation: Triple) -> Tuple[PhaseTaps, ...]:
    """Per 3-D phase with taps (row-major over the residues), the taps of each axis in offset
    order: the phases of ``geometry.PhasePlan.phases``, in the same order."""
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
    w = grouped_conv_weight(weight, groups)
    return tuple(select_taps(w, 2, taps).contiguous() for taps in
                 kernel_phase_taps(tuple(weight.shape[2:]), stride, padding, dilation))


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
    # Work in conv3d's layout (C_out, C_in/g, k...), the one the phases are packed in.
    w = template.new_zeros((groups * c_out_g, c_in_g) + kernel)
    for taps, g in zip(phase_taps, phase_grads):
        if g is None:
            continue
        expected = (groups * c_out_g, c_in_g) + tuple(len(t) for t in taps)
        if tuple(g.shape) != expected:
            raise ValueError(f"unpack_conv3d_phases: a phase with taps {taps} needs shape "
                             f"{expected}, got {tuple(g.shape)}")
        index, flip = [slice(None), slice(None)], []
        for axis, t in enumerate(taps):
            sl, backwards = _tap_slice(t)
            index.append(sl)
            if backwards:  # packed in offset order: descending kernel index
                flip.append(2 + axis)
        w[tuple(index)] = g.flip(flip) if flip else g
    # (G*C_out/g, C_in/g, k...) -> (G, C_out/g, C_in/g, k...) -> (C_in, C_out/g, k...)
    w = w.reshape((groups, c_out_g, c_in_g) + kernel).transpose(1, 2)
    return w.reshape((c_in, c_out_g) + kernel).contiguous()
