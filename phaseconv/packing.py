"""Packing: split the transposed-convolution weight into per-phase sub-kernels.

Each kernel tap belongs to exactly one phase per axis, so the phase sub-kernels are a
partition of the weight: packing is a gather, and its gradient is the matching scatter.
The split depends only on kernel size, stride, padding and dilation (not on the input size),
so a layer packs once and reuses the result until its weight changes.
"""
import weakref
from typing import Callable, Optional, Tuple

import torch

from .geometry import Triple, axis_taps

PhaseTaps = Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


def kernel_phase_taps(kernel: Triple, stride: Triple, padding: Triple,
                      dilation: Triple) -> Tuple[PhaseTaps, ...]:
    """Per 3-D phase (row-major over the residues), the taps of each axis in offset order."""
    per_axis = [[taps for taps, _ in axis_taps(k, s, p, dilation=d)]
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
    """The reference engine's layout: per phase a conv3d weight (C_out, C_in/g, Td, Th, Tw)
    holding the flipped, strided slice of the kernel, or None for a phase with no taps.
    Differentiable with respect to ``weight``."""
    w = grouped_conv_weight(weight, groups)
    out = []
    for taps in kernel_phase_taps(tuple(weight.shape[2:]), stride, padding, dilation):
        if not all(taps):
            out.append(None)
            continue
        sub = w
        for axis, t in enumerate(taps):
            index = torch.tensor(t, dtype=torch.long, device=weight.device)
            sub = sub.index_select(2 + axis, index)
        out.append(sub.contiguous())
    return tuple(out)


def unpack_conv3d_phases(phase_grads, weight_shape, groups: int, stride: Triple,
                         padding: Triple, dilation: Triple) -> torch.Tensor:
    """The inverse of :func:`pack_conv3d_phases`: scatter per-phase (C_out, C_in/g, Td, Th, Tw)
    tensors back into the transposed weight's layout (C_in, C_out/g, kD, kH, kW).

    Every tap belongs to exactly one phase, so this is a plain scatter with no sums:
    ``unpack(pack(w)) == w``.  An entry may be None (a phase with no taps, or one whose
    gradient is known to be zero); its taps come back as zeros.  The reference engine's
    weight gradient is ``unpack(grad_weight_phases(...))``; differentiable in the entries.
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
        if g is None or not all(taps):
            continue
        expected = (groups * c_out_g, c_in_g) + tuple(len(t) for t in taps)
        if tuple(g.shape) != expected:
            raise ValueError(f"unpack_conv3d_phases: a phase with taps {taps} needs shape "
                             f"{expected}, got {tuple(g.shape)}")
        td, th, tw = (torch.tensor(t, dtype=torch.long, device=w.device) for t in taps)
        # The index tensors broadcast to (Td, Th, Tw): the phase's taps in offset order.
        w[:, :, td.view(-1, 1, 1), th.view(1, -1, 1), tw.view(1, 1, -1)] = g
    # (G*C_out/g, C_in/g, k...) -> (G, C_out/g, C_in/g, k...) -> (C_in, C_out/g, k...)
    w = w.reshape((groups, c_out_g, c_in_g) + kernel).transpose(1, 2)
    return w.reshape((c_in, c_out_g) + kernel)


class PhaseCache:
    """Holds one packed weight and knows when it went stale.

    The key is everything that can change a weight's values without our seeing it as a new
    call: the tensor object itself (held weakly), its storage address, torch's version counter
    (bumped by every in-place op: optimizer steps, ``mul_``, ``load_state_dict``'s ``copy_``),
    dtype, device, shape and strides.  One blind spot is torch's, not ours: writes through
    ``weight.data`` bypass the version counter, so call :meth:`clear` after such a write.
    """

    def __init__(self) -> None:
        self._ref = None  # type: Optional[weakref.ref]
        self._key = None  # type: Optional[tuple]
        self._packed = None  # type: Optional[object]
        self.packs = 0  # how many times a pack really ran (tests and explain() read it)

    def clear(self) -> None:
        self._ref = self._key = self._packed = None

    # A pickled or deep-copied layer starts with an empty cache (weak references don't pickle,
    # and the copy's weight is another tensor anyway).
    def __getstate__(self):
        return {"packs": 0}

    def __setstate__(self, state) -> None:
        self.__init__()

    @staticmethod
    def _key_of(weight: torch.Tensor, extra: tuple) -> Optional[tuple]:
        try:
            version = weight._version
        except RuntimeError:  # inference-mode tensors have no version counter: never cache
            return None
        return (weight.data_ptr(), version, weight.dtype, weight.device, tuple(weight.shape),
                weight.stride()) + extra

    def get(self, weight: torch.Tensor, extra: tuple, pack: Callable[[torch.Tensor], object]):
        """The packed form of ``weight`` (packed from a detached view: no autograd history)."""
        key = self._key_of(weight, extra)
        fresh = (key is not None and key == self._key and self._ref is not None
                 and self._ref() is weight)
        if not fresh:
            with torch.no_grad():
                packed = pack(weight.detach())
            self.packs += 1
            if key is None:
                self.clear()
                return packed
            self._ref, self._key, self._packed = weakref.ref(weight), key, packed
        return self._packed
