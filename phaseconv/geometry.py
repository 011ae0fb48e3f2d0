"""Phase geometry of a transposed convolution: pure functions on integers.

Along one axis a transposed convolution scatters input ``i`` through tap ``k`` to output

    o = i * stride - padding + k * dilation.

Read the other way round, output ``o`` receives tap ``k`` exactly when
``(o + padding - k * dilation) % stride == 0``, from input
``i = (o + padding - k * dilation) / stride``.
Which taps qualify depends only on ``r = o % stride``: the outputs split into ``stride``
*phases*.  Writing ``o = r + stride * j``, a tap of phase ``r`` reads input ``j + offset`` with
``offset = (r + padding - k * dilation) // stride`` (an exact division).  So every phase is an
ordinary stride-1 correlation of the input with a slice of the kernel; its taps sit
``stride / gcd(stride, dilation)`` apart in the kernel and their offsets
``dilation / gcd(stride, dilation)`` apart in the input: the phase's own dilation.

Nothing here needs a tensor; engines, packing, ``explain`` and the notebooks all read these
tables.
"""
import functools
import itertools
import math
from typing import NamedTuple, Sequence, Tuple

Triple = Tuple[int, int, int]


def transposed_output_size(in_size: int, kernel: int, stride: int = 1, padding: int = 0, *,
                           dilation: int = 1, output_padding: int = 0) -> int:
    """Length of one output axis, exactly as torch computes it (may be <= 0 for bad args).

    ``dilation`` and ``output_padding`` are keyword-only: torch orders them differently in
    different signatures, and a silent swap would still return a plausible number."""
    return (in_size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def output_padding_for_size(in_sizes: Sequence[int], output_size: Sequence[int],
                            kernel: Sequence[int], stride: Sequence[int],
                            padding: Sequence[int], dilation: Sequence[int]) -> Triple:
    """The output_padding that makes the output ``output_size`` (torch's ``output_size=``).

    ``output_size`` may name the three spatial sizes or, like torch, the whole output shape
    (batch and channels first; channels first for an unbatched input).  Sizes torch rejects are
    rejected with torch's ValueError.
    """
    spatial = len(in_sizes)
    sizes = [int(s) for s in output_size]
    if len(sizes) > spatial:
        sizes = sizes[len(sizes) - spatial:]
    min_sizes = [transposed_output_size(n, k, s, p, dilation=d)
                 for n, k, s, p, d in zip(in_sizes, kernel, stride, padding, dilation)]
    max_sizes = [lo + s - 1 for lo, s in zip(min_sizes, stride)]
    for size, lo, hi in zip(sizes, min_sizes, max_sizes):
        if size < lo or size > hi:
            raise ValueError(
                f"output_size: requested an output size of {sizes}, but valid sizes range from "
                f"{min_sizes} to {max_sizes} (for an input of {list(in_sizes)})")
    return tuple(size - lo for size, lo in zip(sizes, min_sizes))  # type: ignore[return-value]


class AxisPhase(NamedTuple):
    """One phase of one axis: outputs ``first + stride * j`` for ``j in range(count)``.

    ``taps`` are kernel indices ordered by ascending ``offsets``; tap ``taps[t]`` sends input
    ``j + offsets[t]`` to output ``first + stride * j``.  Offsets are ``phase_dilation``
    apart (``dilation / gcd(stride, dilation)``), so the taps form a dense correlation.  A
    phase may own no outputs (``count == 0``: the output is shorter than the stride) or have
    no taps (kernel smaller than the stride, or stride and dilation sharing a factor: only the
    bias lands there).
    """
    residue: int
    first: int
    count: int
    taps: Tuple[int, ...]
    offsets: Tuple[int, ...]
    phase_dilation: int

    @property
    def input_window(self) -> Tuple[int, int]:
        """Half-open range ``[start, stop)`` of input indices this phase reads (may leave
        ``[0, in_size)``: those reads are the zero padding).  Empty when no taps or outputs."""
        if not self.taps or self.count == 0:
            return (0, 0)
        start = self.offsets[0]
        return (start, self.offsets[-1] + self.count)


class AxisPlan(NamedTuple):
    """The phases of one axis of a transposed convolution: one per residue that has taps
    (at most ``kernel`` of them, whatever the stride)."""
    in_size: int
    out_size: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    output_padding: int
    phases: Tuple[AxisPhase, ...]  # the residues with taps, ascending
    bias_only: int  # outputs in the residues without taps: they receive only the bias


def axis_taps(kernel: int, stride: int = 1, padding: int = 0, *,
              dilation: int = 1) -> Tuple[Tuple[int, Tuple[int, ...], Tuple[int, ...]], ...]:
    """The residues that receive taps, ascending, each as (residue, taps, offsets).

    Tap ``k`` lands on residue ``(k * dilation - padding) % stride``, so at most ``kernel``
    residues have taps and the rest receive only the bias: the table costs O(kernel), however
    large the stride.  Independent of the input size: this is all that packing the weight
    needs.
    """
    by_residue = {}
    # Descending k is ascending offset: the sub-kernel is the flipped slice of the kernel.
    for k in reversed(range(kernel)):
        by_residue.setdefault((k * dilation - padding) % stride, []).append(k)
    return tuple((r, tuple(taps), tuple((r + padding - k * dilation) // stride for k in taps))
                 for r, taps in sorted(by_residue.items()))


def axis_plan(in_size: int, kernel: int, stride: int = 1, padding: int = 0, *,
              dilation: int = 1, output_padding: int = 0) -> AxisPlan:
    """The phase table of one axis (arguments assumed valid; see ``checks``): the residues
    with taps, and how many outputs no tap reaches."""
    out_size = transposed_output_size(in_size, kernel, stride, padding, dilation=dilation,
                                      output_padding=output_padding)
    phase_dilation = dilation // math.gcd(stride, dilation)
    phases = []
    for r, taps, offsets in axis_taps(kernel, stride, padding, dilation=dilation):
        count = max(0, -(-(out_size - r) // stride))
        phases.append(AxisPhase(r, r, count, taps, offsets, phase_dilation))
    bias_only = max(out_size, 0) - sum(ph.count for ph in phases)
    return AxisPlan(in_size, out_size, kernel, stride, padding, dilation, output_padding,
                    tuple(phases), bias_only)


class Phase(NamedTuple):
    """A 3-D phase: the product of one phase per axis (depth, height, width)."""
    index: Triple
    axes: Tuple[AxisPhase, AxisPhase, AxisPhase]
    in_shape: Triple

    @property
    def out_shape(self) -> Triple:
        return tuple(a.count for a in self.axes)  # type: ignore[return-value]

    @property
    def tap_shape(self) -> Triple:
        return tuple(len(a.taps) for a in self.axes)  # type: ignore[return-value]

    @property
    def phase_dilation(self) -> Triple:
        return tuple(a.phase_dilation for a in self.axes)  # type: ignore[return-value]

    @property
    def num_outputs(self) -> int:
        return _prod(self.out_shape)

    @property
    def num_taps(self) -> int:
        return _prod(self.tap_shape)

    @property
    def reads_input(self) -> bool:
        """True when some tap of this phase meets a real (non-padding) input voxel; otherwise
        the phase's outputs hold only the bias."""
        for a, size in zip(self.axes, self.in_shape):
            start, stop = a.input_window
            if stop <= max(start, 0) or start >= size:
                return False
        return True


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


class PhasePlan(NamedTuple):
    """The whole 3-D phase decomposition: three axis plans and their product."""
    axes: Tuple[AxisPlan, AxisPlan, AxisPlan]

    @property
    def in_shape(self) -> Triple:
        return tuple(a.in_size for a in self.axes)  # type: ignore[return-value]

    @property
    def out_shape(self) -> Triple:
        return tuple(a.out_size for a in self.axes)  # type: ignore[return-value]

    @property
    def kernel(self) -> Triple:
        return tuple(a.kernel for a in self.axes)  # type: ignore[return-value]

    @property
    def stride(self) -> Triple:
        return tuple(a.stride for a in self.axes)  # type: ignore[return-value]

    @property
    def phases(self) -> Tuple[Phase, ...]:
        """The phases with taps (at most the kernel's taps many), in (depth, height, width)
        row-major order over their residues."""
        return _product_phases(self.axes)

    @property
    def bias_only_outputs(self) -> int:
        """Output voxels (per sample and channel) in a residue without taps along some axis:
        they hold only the bias (0 without one)."""
        covered = _prod(a.out_size - a.bias_only for a in self.axes)
        return _prod(max(a.out_size, 0) for a in self.axes) - covered

    def macs_per_sample(self, in_channels: int, out_channels: int, groups: int) -> int:
        """Multiply-adds of the phase method for one sample: every tap of every output of
        every phase (taps that read the zero padding at the borders included)."""
        per_voxel = (in_channels // groups) * out_channels
        return per_voxel * sum(p.num_outputs * p.num_taps for p in self.phases)

    def zero_insertion_macs_per_sample(self, in_channels: int, out_channels: int,
                                       groups: int) -> int:
        """Multiply-adds of the textbook method: a dense convolution over the zero-inserted,
        padded input, every output visiting every tap."""
        per_voxel = (in_channels // groups) * out_channels
        return per_voxel * _prod(self.out_shape) * _prod(self.kernel)


# Plans are pure functions of a few ints and every call of a layer asks for one: memoise them
# (the Python cost of a call matters next to a fast kernel).
@functools.lru_cache(maxsize=512)
def _product_phases(axes: Tuple[AxisPlan, AxisPlan, AxisPlan]) -> Tuple[Phase, ...]:
    in_shape = tuple(a.in_size for a in axes)
    return tuple(Phase(tuple(a.residue for a in combo), combo, in_shape)  # type: ignore
                 for combo in itertools.product(*(a.phases for a in axes)))


@functools.lru_cache(maxsize=512)
def _phase_plan(in_shape: Triple, kernel: Triple, stride: Triple, padding: Triple,
                dilation: Triple, output_padding: Triple) -> PhasePlan:
    return PhasePlan(tuple(  # type: ignore[arg-type]
        axis_plan(n, k, s, p, dilation=d, output_padding=op) for n, k, s, p, d, op
        in zip(in_shape, kernel, stride, padding, dilation, output_padding)))


def phase_plan(in_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], *, dilation: Sequence[int],
               output_padding: Sequence[int]) -> PhasePlan:
    """The 3-D phase plan for spatial input ``in_shape`` (D, H, W)."""
    return _phase_plan(*(tuple(int(v) for v in seq) for seq in  # type: ignore[arg-type]
                         (in_shape, kernel, stride, padding, dilation, output_padding)))


