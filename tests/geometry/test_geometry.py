"""The phase tables, checked by hand and against a brute-force scatter."""
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phaseconv.geometry import (
    axis_plan,
    output_padding_for_size,
    phase_plan,
    transposed_output_size,
)
from phaseconv.packing import kernel_phase_taps


def test_output_size_formula():
    assert transposed_output_size(12, 3, 2, 1, output_padding=1) == 24
    assert transposed_output_size(24, 5, 2, 2, dilation=1, output_padding=1) == 48
    assert transposed_output_size(48, 7, 2, 3, output_padding=1) == 96
    assert transposed_output_size(1, 1, 4, 0) == 1
    assert transposed_output_size(3, 3, 1, 5) == -5  # torch refuses this later


def test_stride2_kernel3_hand_checked():
    # out[2j] = w1 x[j];  out[2j+1] = w2 x[j] + w0 x[j+1]
    plan = axis_plan(4, kernel=3, stride=2, padding=1)
    assert plan.out_size == 7
    even, odd = plan.phases
    assert (even.first, even.count, even.taps, even.offsets) == (0, 4, (1,), (0,))
    assert (odd.first, odd.count, odd.taps, odd.offsets) == (1, 3, (2, 0), (0, 1))
    assert even.phase_dilation == odd.phase_dilation == 1


def test_kernel_smaller_than_stride_leaves_phases_empty():
    plan = axis_plan(3, kernel=1, stride=3, padding=0, output_padding=2)
    assert plan.out_size == 9
    # only residue 0 has a tap: residues 1 and 2 (6 outputs) receive only the bias
    assert [(p.residue, p.taps, p.count) for p in plan.phases] == [(0, (0,), 3)]
    assert plan.bias_only == 6


def test_dilation_sharing_a_factor_with_stride():
    # s=2, d=2: every tap lands on even outputs, one input apart; odd outputs get nothing.
    plan = axis_plan(3, kernel=3, stride=2, padding=0, dilation=2)
    assert plan.out_size == 9
    (even,) = plan.phases
    assert even.residue == 0
    assert even.taps == (2, 1, 0) and even.offsets == (-2, -1, 0) and even.phase_dilation == 1
    assert plan.bias_only == 4


def test_dilation_coprime_with_stride():
    # s=2, d=3: taps alternate between the phases and each phase has dilation 3.
    plan = axis_plan(2, kernel=4, stride=2, padding=0, dilation=3)
    even, odd = plan.phases
    assert even.taps == (2, 0) and even.offsets == (-3, 0) and even.phase_dilation == 3
    assert odd.taps == (3, 1) and odd.offsets == (-4, -1)


def test_padding_beyond_kernel_extent_and_size_one_axis():
    plan = axis_plan(1, kernel=2, stride=4, padding=1, output_padding=3)
    assert plan.out_size == 3  # fewer outputs than phases: phase 3 owns none
    assert [p.residue for p in plan.phases] == [0, 3]
    assert [p.count for p in plan.phases] == [1, 0]
    assert [p.taps for p in plan.phases] == [(1,), (0,)]
    assert plan.phases[0].offsets == (0,) and plan.phases[1].offsets == (1,)
    assert plan.bias_only == 2


def test_phase_plan_is_the_product_of_axes():
    plan = phase_plan((12, 24, 48), (3, 5, 7), (2, 2, 2), (1, 2, 3), dilation=(1, 1, 1),
                      output_padding=(1, 1, 1))
    assert plan.out_shape == (24, 48, 96)
    assert len(plan.phases) == 8
    assert sum(p.num_outputs for p in plan.phases) == 24 * 48 * 96
    # Every kernel tap is used by exactly one phase.
    assert sum(p.num_taps for p in plan.phases) == 3 * 5 * 7
    assert plan.phases[5].index == (1, 0, 1) and plan.phases[5].tap_shape == (2, 3, 4)
    assert plan.macs_per_sample(32, 32, 4) * 8 == 2972712960


def test_kernel_phase_taps_match_plan():
    taps = kernel_phase_taps((3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1))
    plan = phase_plan((4, 4, 4), (3, 5, 7), (2, 2, 2), (1, 2, 3), dilation=(1, 1, 1),
                      output_padding=(0, 0, 0))
    assert taps == tuple(tuple(a.taps for a in p.axes) for p in plan.phases)


def test_output_padding_for_size():
    args = dict(kernel=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1), dilation=(1, 1, 1))
    assert output_padding_for_size((4, 4, 4), (7, 8, 8), **args) == (0, 1, 1)
    assert output_padding_for_size((4, 4, 4), (2, 5, 7, 8, 8), **args) == (0, 1, 1)
    with pytest.raises(ValueError, match="output_size"):
        output_padding_for_size((4, 4, 4), (9, 8, 8), **args)
    with pytest.raises(ValueError, match="output_size"):
        output_padding_for_size((4, 4, 4), (6, 8, 8), **args)


@given(n=st.integers(1, 6), k=st.integers(1, 6), s=st.integers(1, 5), d=st.integers(1, 4),
       data=st.data())
def test_phase_table_equals_brute_force_scatter(n, k, s, d, data):
    op = data.draw(st.integers(0, max(s, d) - 1))
    p = data.draw(st.integers(0, ((n - 1) * s + d * (k - 1) + op) // 2))
    plan = axis_plan(n, k, s, p, dilation=d, output_padding=op)
    # The definition: input i meets tap k at output o = i*s - p + k*d, when o is in range.
    scatter = {(i * s - p + kk * d, kk, i) for i, kk in itertools.product(range(n), range(k))
               if 0 <= i * s - p + kk * d < plan.out_size}
    gathered = set()
    for phase in plan.phases:
        assert phase.first == phase.residue
        assert phase.count == len(range(phase.residue, plan.out_size, s))
        offs = phase.offsets
        assert list(offs) == sorted(offs)
        assert all(b - a == phase.phase_dilation for a, b in zip(offs, offs[1:]))
        for j in range(phase.count):
            for tap, off in zip(phase.taps, offs):
                if 0 <= j + off < n:
                    gathered.add((phase.first + s * j, tap, j + off))
    assert gathered == scatter
    # Each tap belongs to exactly one phase; the outputs no phase owns are counted.
    assert sorted(t for ph in plan.phases for t in ph.taps) == list(range(k))
    assert all(ph.taps for ph in plan.phases)
    assert plan.bias_only == plan.out_size - sum(ph.count for ph in plan.phases)
    assert plan.bias_only == sum(1 for o in range(plan.out_size)
                                 if not any((o + p - kk * d) % s == 0 for kk in range(k)))


def test_huge_stride_is_o_of_taps():
    """A stride of 10**9 plans instantly: only residues with taps are listed."""
    plan = phase_plan((1, 2, 1), (3, 2, 1), (10**9, 10**9, 7), (0, 1, 0), dilation=(1, 1, 1),
                      output_padding=(0, 0, 0))
    assert [len(a.phases) for a in plan.axes] == [3, 2, 1]
    assert plan.out_shape == (3, 10**9 + 1 - 1, 1)
    assert sum(p.num_taps for p in plan.phases) == 6
    # depth: 3 outputs, one per tap; height: taps 0 and 1 at residues 10**9 - 1 and 0
    assert [a.residue for a in plan.axes[1].phases] == [0, 10**9 - 1]
    assert plan.bias_only_outputs == 3 * (10**9 - 2)
