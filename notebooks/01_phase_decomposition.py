# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Transposed convolution by phase decomposition
#
# `phaseconv` computes `torch.nn.functional.conv_transpose3d` as a handful of ordinary
# stride-1 convolutions, one per output *phase*, without inserting zeros and without scattering.
# This notebook derives the method on one axis, checks it numerically in 1-D, and then lifts
# it to 3-D, where a phase is just a product of three axis phases.
#
# Every table used below comes from the library's geometry (`phaseconv.geometry.axis_plan`);
# the notebook only reads it.
#
# Notation for one axis: input length $L$, kernel size $K$, stride $s$, padding $p$,
# dilation $d$, output padding $q$; input index $i$, tap $k$, output index $o$.

# %%
import itertools
import math
import random

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

import phaseconv
from phaseconv.bench import SWEEP
from phaseconv.geometry import axis_plan, phase_plan
from phaseconv.packing import pack_conv3d_phases

torch.manual_seed(0)
DT = torch.float64
TOL = 1e-12  # float64 round-off is ~1e-15; any indexing bug is O(1)

# %% [markdown]
# ## 1. Scatter view and output length
#
# A transposed convolution *scatters*: input sample $i$, weighted by tap $k$, is added to
#
# $$o = i\,s - p + k\,d .$$
#
# Over all $i \in [0, L)$ and $k \in [0, K)$ the scatter reaches $o \in [-p,\ (L-1)s - p + (K-1)d]$.
# torch keeps the outputs $o \in [0, L_\text{out})$ with
#
# $$L_\text{out} = (L-1)\,s - 2p + d\,(K-1) + q + 1,$$
#
# i.e. it drops $p$ positions at the start and $p - q$ at the end (if $q > p$, the last $q - p$
# outputs lie beyond the scatter's reach and hold only the bias). The output padding $q$ only
# chooses among the output lengths that a stride-$s$ convolution would map back to $L$
# (torch requires $q < \max(s, d)$); it never changes which tap meets which input.
#
# **Zero-insertion view.** The same result is an ordinary stride-1 correlation with the
# flipped kernel (dilation $d$) over an "upsampled" input: put $s-1$ zeros between neighbouring
# samples, then pad $d(K-1) - p$ zeros on the left and $d(K-1) - p + q$ on the right (a negative
# pad is a crop). Every output visits all $K$ taps, but consecutive real samples sit $s$ apart,
# so only about $K/s$ of those taps land on a real sample: a fraction $\approx 1 - 1/s$ of the
# multiplies hit inserted zeros. In 3-D that is $1 - 1/(s_d s_h s_w)$, e.g. 7/8 of the work
# for stride 2. The cell below builds this view with torch and counts the wasted multiplies.


# %%
def zero_insertion_conv_transpose1d(x, weight, stride, padding, dilation, output_padding):
    """The textbook method: zero-insert, pad, correlate with the flipped kernel (groups=1)."""
    n, c, length = x.shape
    k = weight.shape[-1]
    up = x.new_zeros(n, c, (length - 1) * stride + 1)
    up[..., ::stride] = x
    edge = dilation * (k - 1) - padding  # negative: F.pad crops
    up = F.pad(up, (edge, edge + output_padding))
    return F.conv1d(up, weight.flip(-1).transpose(0, 1), dilation=dilation)


for cfg in [{"stride": 2, "padding": 2, "dilation": 1, "output_padding": 1},
            {"stride": 3, "padding": 3, "dilation": 2, "output_padding": 1}]:
    x, w = torch.randn(1, 3, 8, dtype=DT), torch.randn(3, 2, 5, dtype=DT)
    y = zero_insertion_conv_transpose1d(x, w, **cfg)
    assert (y - F.conv_transpose1d(x, w, **cfg)).abs().max() < TOL
    # Multiplies that meet a real sample: the same method on an all-ones input and kernel.
    hits = zero_insertion_conv_transpose1d(torch.ones(1, 1, 8, dtype=DT),
                                           torch.ones(1, 1, 5, dtype=DT), **cfg)
    useful, total = int(hits.sum()), y.shape[-1] * w.shape[-1]
    print(f"{cfg}: {useful} of {total} tap visits touch a real sample "
          f"({1 - useful / total:.0%} wasted)")

# %% [markdown]
# (The "useful" count also excludes visits to the padding, so the waste is slightly above
# $1 - 1/s$.)
#
# ## 2. Gather view: phases
#
# Fix an output $o$ and ask which taps reach it. Tap $k$ contributes iff some integer $i$
# solves $o = i s - p + k d$, that is iff
#
# $$o + p - k\,d \equiv 0 \pmod s, \qquad\text{and then}\qquad i = \frac{o + p - k\,d}{s}$$
#
# (a read with $i \notin [0, L)$ is a read of zero padding). The condition depends on $o$ only
# through $r = o \bmod s$, so the outputs split into $s$ **phases**. Write $o = r + s\,j$;
# then tap $k$ of phase $r$ reads input
#
# $$i = j + \delta_k, \qquad \delta_k = \frac{r + p - k\,d}{s}\quad\text{(exact; floor division
# in code).}$$
#
# Which taps belong to phase $r$: $k\,d \equiv r + p \pmod s$. With $g = \gcd(s, d)$ this has a
# solution iff $g \mid r + p$, and the solutions form one residue class modulo $s/g$. So
#
# * the taps of a phase are **$s/g$ apart** in the kernel, and
# * consecutive taps $k$ and $k + s/g$ have offsets differing by $(s/g)\,d/s = $ **$d/g$**.
#
# Sorting the taps by ascending offset (= descending $k$):
#
# $$y[r + s j] = \sum_t w[k_t]\; x\!\left[j + \delta_{k_0} + t\,\tfrac{d}{g}\right],$$
#
# a **dense stride-1 correlation with dilation $d/g$** of the phase's *sub-kernel*
# $(w[k_0], w[k_1], \dots)$ — the kernel flipped and sampled every $s/g$ taps. Each tap
# belongs to exactly one phase, so the sub-kernels partition the kernel, and no multiply ever
# meets an inserted zero. `axis_plan` returns this table for the residues that receive taps
# (at most $K$ of them, found in $O(K)$ whatever the stride): per phase its `residue`, first
# output `first` $= r$, number of outputs `count`, `taps` (ascending offset), `offsets`
# $\delta$, and the phase's own `dilation` $d/g$.
#
# The corner cases all fall out of the same algebra:
#
# * **Kernel smaller than stride** ($K < s$): at most $K$ phases own a tap; the outputs of the
#   others receive only the bias (`axis_plan` counts them in `bias_only`).
# * **Dilation with $g > 1$**: only residues with $g \mid r + p$ get taps, about $Kg/s$ each; the
#   rest are bias-only. For $s = d = 2$ one phase takes *all* $K$ taps at dilation 1 and the
#   other takes none. For $s = 3, d = 2$ ($g = 1$) the taps are 3 apart and read inputs 2 apart.
# * **Padding beyond the kernel extent** ($p > d(K-1)$): nothing special. The offsets are all
#   positive, so a phase's input window starts inside the input (in the zero-insertion view
#   this is the negative pad, a crop).
# * **Output padding** changes neither taps nor offsets, only $L_\text{out}$ and hence how
#   many outputs each phase owns: $\lceil (L_\text{out} - r)/s \rceil$, which is 0 when
#   $L_\text{out} \le r$.
# * **Input window**: phase $r$ reads $x[\delta_{k_0} : \delta_{k_\text{last}} + \text{count})$;
#   the part outside $[0, L)$ is zero padding, so a phase needs at most a small crop or pad
#   of the input.

# %%
for plan in [axis_plan(5, 5, stride=3, padding=3, dilation=2, output_padding=1),  # g = 1
             axis_plan(6, 2, stride=3, padding=0, dilation=1, output_padding=2),  # K < s
             axis_plan(5, 3, stride=2, padding=1, dilation=2, output_padding=1),  # g = 2
             axis_plan(8, 3, stride=2, padding=4, dilation=1, output_padding=1)]:  # p > d(K-1)
    print(f"L={plan.in_size} K={plan.kernel} s={plan.stride} p={plan.padding} "
          f"d={plan.dilation} q={plan.output_padding} -> L_out={plan.out_size}, "
          f"{plan.bias_only} bias-only outputs")
    for ph in plan.phases:
        print(f"   r={ph.residue} count={ph.count:2d} taps={ph.taps!s:9} "
              f"offsets={ph.offsets!s:11} phase_dilation={ph.phase_dilation} "
              f"window={ph.input_window}")

# %% [markdown]
# ## 3. Picture: which tap reaches which output
#
# Each column is an output $o$, each row a tap $k$; a filled cell means tap $k$ contributes to
# output $o$, coloured by the phase of $o$, and the number is the input index it reads (pale
# cells read zero padding). Within a column the filled rows are $s/g$ apart; along a phase the
# input index grows by one per output. Top: the common case. Middle: $s = 3$, $d = 2$ — taps
# 3 apart read inputs 2 apart. Bottom: $s = d = 2$ — the even outputs take all five taps, the
# odd ones none. The figure is drawn from `axis_plan` alone.


# %%
def draw_plan(ax, plan, title):
    colours = plt.get_cmap("tab10").colors
    img = [[(1.0, 1.0, 1.0)] * plan.out_size for _ in range(plan.kernel)]
    for ph in plan.phases:
        colour = colours[ph.residue % 10]
        for j in range(ph.count):
            o = ph.first + plan.stride * j
            for k, off in zip(ph.taps, ph.offsets):
                i = j + off
                real = 0 <= i < plan.in_size
                img[k][o] = colour if real else tuple(0.75 + 0.25 * c for c in colour)
                ax.text(o, k, str(i), ha="center", va="center", fontsize=7,
                        color="black" if real else "0.55")
    ax.imshow(img, aspect="auto")
    ax.set_xticks(range(plan.out_size))
    ax.set_xticklabels([str(o) for o in range(plan.out_size)], fontsize=7)
    for o in range(plan.out_size):  # colour each output label by its phase
        ax.get_xticklabels()[o].set_color(colours[(o % plan.stride) % 10])
    ax.set_yticks(range(plan.kernel))
    ax.set_ylabel("tap k", fontsize=8)
    ax.set_title(title, fontsize=9)


plans = [axis_plan(6, 5, stride=2, padding=2, dilation=1),
         axis_plan(5, 5, stride=3, padding=3, dilation=2, output_padding=1),
         axis_plan(5, 5, stride=2, padding=2, dilation=2, output_padding=1)]
fig, axes = plt.subplots(len(plans), 1, figsize=(8, 6.3))
for ax, plan in zip(axes, plans):
    g = math.gcd(plan.stride, plan.dilation)
    draw_plan(ax, plan, f"L={plan.in_size} K={plan.kernel} s={plan.stride} p={plan.padding} "
              f"d={plan.dilation} q={plan.output_padding}  (gcd {g}: taps {plan.stride // g} "
              f"apart, phase dilation {plan.phases[0].phase_dilation})")
axes[-1].set_xlabel("output o (label colour = phase r = o mod s)", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Numeric check in 1-D
#
# The phase method, written directly from the table: for each phase, slice its input window
# (padding with zeros where it leaves the input), run `F.conv1d` with the sub-kernel
# `weight[:, :, taps]` at the phase's dilation, and write the result to `out[..., first::s]`.
# Phases without taps are left at zero and get only the bias.


# %%
def phase_conv_transpose1d(x, weight, bias, stride=1, padding=0, dilation=1, output_padding=0):
    """conv_transpose1d (groups=1) as one stride-1 conv1d per phase of ``axis_plan``."""
    n, _, length = x.shape
    plan = axis_plan(length, weight.shape[-1], stride, padding, dilation=dilation,
                     output_padding=output_padding)
    out = x.new_zeros(n, weight.shape[1], plan.out_size)
    for ph in plan.phases:
        if not ph.taps or ph.count == 0:
            continue  # bias only
        start, stop = ph.input_window
        lo, hi = max(0, -start), max(0, stop - length)
        window = F.pad(x, (lo, hi))[..., start + lo:stop + lo]
        sub = weight[:, :, list(ph.taps)].transpose(0, 1)  # (C_out, C_in, T): conv1d's layout
        y = F.conv1d(window, sub, dilation=ph.phase_dilation)
        assert y.shape[-1] == ph.count
        out[..., ph.first::stride] = y
    return out if bias is None else out + bias[:, None]


def max_error_1d(length, k, **cfg):
    x = torch.randn(2, 3, length, dtype=DT)
    w, b = torch.randn(3, 4, k, dtype=DT), torch.randn(4, dtype=DT)
    ref = F.conv_transpose1d(x, w, b, **cfg)
    ours = phase_conv_transpose1d(x, w, b, **cfg)
    assert ours.shape == ref.shape
    return (ours - ref).abs().max().item()


cases = [  # name, L, K, s, p, d, q
    ("picture 1", 6, 5, 2, 2, 1, 0),
    ("picture 2", 5, 5, 3, 3, 2, 1),
    ("picture 3", 5, 5, 2, 2, 2, 1),
    ("kernel < stride (K=1, s=3)", 6, 1, 3, 0, 1, 2),
    ("kernel < stride (K=2, s=3)", 6, 2, 3, 1, 1, 1),
    ("dilation 2, stride 2", 7, 3, 2, 1, 2, 1),
    ("dilation 2, stride 3", 6, 4, 3, 2, 2, 0),
    ("dilation 2, stride 4 (gcd 2)", 5, 5, 4, 3, 2, 3),
    ("padding > extent", 8, 3, 2, 4, 1, 1),
    ("stride 1", 5, 3, 1, 1, 1, 0),
]
for name, length, k, s, p, d, q in cases:
    err = max_error_1d(length, k, stride=s, padding=p, dilation=d, output_padding=q)
    print(f"{name:30} max |error| = {err:.1e}")
    assert err < TOL, name

# A small exhaustive sweep over valid 1-D geometries.
worst, n_cfg = 0.0, 0
for s in range(1, 5):
    for d in range(1, 4):
        for k in range(1, 6):
            for p in range(5):
                for q in range(max(s, d)):
                    for length in (1, 4):
                        if axis_plan(length, k, s, p, dilation=d, output_padding=q).out_size <= 0:
                            continue
                        err = max_error_1d(length, k, stride=s, padding=p, dilation=d,
                                           output_padding=q)
                        worst = max(worst, err)
                        n_cfg += 1
print(f"sweep: {n_cfg} configurations, worst max |error| = {worst:.1e}")
assert worst < TOL

# %% [markdown]
# ## 5. Three dimensions
#
# The scatter $o = i s - p + k d$ holds independently on each axis, so a 3-D output
# $(o_d, o_h, o_w)$ receives tap $(k_d, k_h, k_w)$ iff each axis condition holds. A 3-D phase
# is therefore a triple of axis phases $(r_d, r_h, r_w)$: it owns the outputs
# `out[..., r_d::s_d, r_h::s_h, r_w::s_w]`, its taps are the Cartesian product of the axis
# taps, and it is one dense stride-1 `conv3d` with the sub-kernel
# `w[..., taps_d, :, :][..., taps_h, :][..., taps_w]` at dilation $(d_d/g_d, d_h/g_h, d_w/g_w)$.
# There are at most $s_d s_h s_w$ phases, and only those with taps are listed (at most the
# kernel's $K_d K_h K_w$); groups and channels are untouched.
#
# Because both the outputs and the taps of a phase factor over the axes, so does the work:
# the phase method's multiply-adds are $\prod_\text{axes} \sum_r \text{count}_r\,|T_r|$
# against $\prod_\text{axes} L_\text{out} K$ for zero insertion.
#
# The founding example: `ConvTranspose3d(32, 32, kernel_size=(3, 5, 7), stride=2,
# padding=(1, 2, 3), output_padding=1, groups=4)` on an input of shape (8, 32, 12, 24, 48).

# %%
layer = nn.ConvTranspose3d(32, 32, kernel_size=(3, 5, 7), stride=2, padding=(1, 2, 3),
                           output_padding=1, groups=4)
info = phaseconv.explain(layer, (8, 32, 12, 24, 48))
print(info)

per_axis = [a.out_size * a.kernel / sum(ph.count * len(ph.taps) for ph in a.phases)
            for a in info.plan.axes]
print("\nsaving per axis:", per_axis, "-> product", math.prod(per_axis))
assert info.zero_insertion_macs == 8 * info.macs

packed = pack_conv3d_phases(layer.weight.detach(), layer.groups, layer.stride, layer.padding,
                            layer.dilation)
print("packed sub-kernels (C_out, C_in/groups, Td, Th, Tw):",
      [tuple(w.shape[2:]) for w in packed])

# %% [markdown]
# With even output lengths both phases of each axis own the same number of outputs and
# together hold all $K$ taps, so each axis saves exactly a factor $s = 2$: $2^3 = 8\times$
# fewer multiply-adds than zero insertion.
#
# Numeric check: the same layer in float64 on a small input (batch 1, spatial 3×4×5), and a
# second geometry mixing kernel < stride, dilation with $\gcd > 1$ and padding beyond the
# kernel extent.

# %%
with torch.no_grad():
    small = nn.ConvTranspose3d(32, 32, kernel_size=(3, 5, 7), stride=2, padding=(1, 2, 3),
                               output_padding=1, groups=4, dtype=DT)
    x = torch.randn(1, 32, 3, 4, 5, dtype=DT)
    ours = phaseconv.conv_transpose3d(x, small.weight, small.bias, stride=small.stride,
                                      padding=small.padding, output_padding=small.output_padding,
                                      groups=small.groups, dilation=small.dilation)
    ref = small(x)
    err = (ours - ref).abs().max().item()
    print(f"founding layer, input {tuple(x.shape)} -> output {tuple(ref.shape)}: "
          f"max |error| = {err:.1e}")
    assert ours.shape == ref.shape and err < TOL

    mixed = {"stride": (3, 2, 3), "padding": (0, 1, 5), "output_padding": (2, 1, 0),
             "dilation": (1, 2, 2), "groups": 2}
    x = torch.randn(2, 4, 3, 4, 5, dtype=DT)
    w, b = torch.randn(4, 3, 2, 3, 3, dtype=DT), torch.randn(6, dtype=DT)
    ref = F.conv_transpose3d(x, w, b, **mixed)
    err = (phaseconv.conv_transpose3d(x, w, b, **mixed) - ref).abs().max().item()
    print(f"mixed geometry, output {tuple(ref.shape)}: max |error| = {err:.1e}")
    assert err < TOL
    spec = {"in_channels": 4, "out_channels": 6, "kernel_size": (2, 3, 3), **mixed}
    print(str(phaseconv.explain(spec, x.shape)).splitlines()[-1])

# %% [markdown]
# ## 6. Two pieces of kernel arithmetic
#
# **Division by a launch constant.** The all-phase kernel splits flat item numbers into
# coordinates (halo positions, output rows) by divisors fixed for the launch. A signed
# division costs ~20 instructions; `FastDiv` (csrc/phase_conv_fwd_common.cuh) uses three. With
# $s = \lceil \log_2 d \rceil$ and $m = \lfloor 2^{32}(2^s - d)/d \rfloor + 1$ (so that
# $2^{32} + m = \lfloor 2^{32+s}/d \rfloor + 1$, a reciprocal rounded up),
# $$\lfloor n/d \rfloor = \big(\mathrm{umulhi}(n, m) + n\big) \gg s
# \quad\text{for } 0 \le n < 2^{31},\ 1 \le d \le 2^{31}.$$
# Why: the rounded-up reciprocal's excess $e = (2^{32} + m)\,d - 2^{32+s}$ lies in $[1, d]$, so
# $n(2^{32}+m)/2^{32+s} = n/d + n e/(d\,2^{32+s})$, and the second term stays below $1/d$ while
# $n < 2^{32} \le 2^{32+s}/e$: it never lifts the quotient past the next integer. The sum
# $\mathrm{umulhi} + n$ fits 32 bits because $n < 2^{31}$. The cell below evaluates the formula
# as the kernel does (32-bit words) against integer division, including the worst dividends
# (the largest multiples of $d$ and one below), and shows that a multiplier one too small fails.

# %%
def make_fastdiv(d):
    """(mul, shr) as csrc's make_fastdiv computes them."""
    shr = 0
    while (1 << shr) < d:
        shr += 1
    return (((1 << shr) - d) << 32) // d + 1, shr


def fast_div(n, mul, shr):
    """The device's (umulhi(n, mul) + n) >> shr on 32-bit words."""
    hi = (n * mul) >> 32
    total = hi + n
    assert total < 1 << 32  # no carry out of the 32-bit add
    return total >> shr


rng = random.Random(0)
divisors = (list(range(1, 3000)) + [1 << k for k in range(32)]
            + [(1 << k) - 1 for k in range(2, 32)] + [(1 << k) + 1 for k in range(1, 31)]
            + [rng.randrange(1, 1 << 31) for _ in range(3000)])
checked = 0
for d in divisors:
    mul, shr = make_fastdiv(d)
    assert mul < 1 << 32
    top = (1 << 31) - 1
    dividends = {0, 1, d - 1, d, d + 1, top, top - top % d, top - top % d - 1}
    dividends |= {rng.randrange(0, 1 << 31) for _ in range(20)}
    for n in dividends:
        if 0 <= n < 1 << 31:
            assert fast_div(n, mul, shr) == n // d, (n, d)
            checked += 1
print(f"{len(divisors)} divisors, {checked} dividends: the fast division equals n // d")

# a multiplier one too small breaks it (the reciprocal must be rounded up)
broken = [d for d in (3, 7, 24, 1000, 12345) if any(
    fast_div(n, make_fastdiv(d)[0] - 1, make_fastdiv(d)[1]) != n // d
    for n in range(d, 1 << 31, max(1, (1 << 31) // 4096) * d))]
print("a multiplier one too small fails for divisors", broken)
assert broken

# %% [markdown]
# **Paired W stores.** With stride 2 along W, the kernel's 8-warp tile computes the two W phases
# of an (rd, rh) pair back to back and stores outputs $o_w = 2 j_w$ and $2 j_w + 1$ as one vector.
# Its address of output $(o_d, o_h, o_w) = (r_d + s_d j_d,\ r_h + s_h j_h,\ 2 j_w)$ with
# $j = j_0 + l$ (tile origin $j_0$, position $l$ in the tile) splits into a part of the tile and
# phase and a part of the position alone, which the kernel computes once per block:
# $$\big((r_d + s_d j_{0d}) H + r_h + s_h j_{0h}\big) W + 2 j_{0w}
#   \;+\; (s_d l_d H + s_h l_h) W + 2 l_w .$$
# The cell checks the identity over a few geometries, and that the pair lands on
# consecutive elements of torch's output.

# %%
for (D, H, W), (sd, sh), (TD, TH, TW) in [((24, 48, 96), (2, 2), (4, 8, 8)),
                                          ((7, 10, 12), (3, 1), (2, 4, 8)),
                                          ((5, 6, 40), (1, 2), (1, 2, 16))]:
    flat = torch.arange(D * H * W).reshape(D, H, W)
    for rd in range(sd):
        for rh in range(sh):
            for j0 in [(0, 0, 0), (TD, TH, TW)]:
                base = ((rd + sd * j0[0]) * H + rh + sh * j0[1]) * W + 2 * j0[2]
                for ld in range(TD):
                    for lh in range(TH):
                        for lw in range(TW):
                            od, oh, ow = (rd + sd * (j0[0] + ld), rh + sh * (j0[1] + lh),
                                          2 * (j0[2] + lw))
                            if od >= D or oh >= H or ow + 1 >= W:
                                continue
                            addr = base + (sd * ld * H + sh * lh) * W + 2 * lw
                            assert addr == flat[od, oh, ow] and addr + 1 == flat[od, oh, ow + 1]
print("paired-store offsets: tile part + position part equal the flat output index")

# %% [markdown]
# ## 7. The warpgroup tile's shared-memory operands (sm_90a)
#
# On an H100/H200 the implicit GEMM's warpgroup tile hands its `cp.async` stages straight to
# `wgmma`, which reads each operand through a *matrix descriptor*: a start address, a leading
# and a stride byte offset (LBO, SBO, in 16-byte units) and a swizzle mode. No shared-memory
# copy is made for it, so the loader's layouts must *be* layouts the descriptor can name.
# Elements are 16-bit; $k$ indexes the reduction (8 input channels per 16-byte chunk).
#
# **A (rows × 64 channels, 128-byte swizzle).** The loader puts chunk $c$ (channels
# $8c \dots 8c+7$) of tile row $r$ at byte $128 r + 16\,(c \oplus (r \bmod 8))$ of a
# 1024-byte-aligned stage. The 128-byte swizzle reads logical byte $a$ of a K-major matrix
# with rows of 128 bytes at $a \oplus \big(((a \gg 7) \bmod 8) \ll 4\big)$, address bits 4-6
# XOR bits 7-9, which is why the stage must be 1024-byte aligned. Its SBO steps 8 rows
# (1024 bytes); a k16 step (two chunks) adds 32 bytes to the start address, and the XOR
# then acts on the sum. The cell checks that every element the descriptor names for each of
# the four k16 steps is the one the loader put there.

# %%
def swizzle128(addr):
    return addr ^ (((addr >> 7) & 7) << 4)


def loader_a(r, c):  # byte of chunk c of row r (csrc/phase_conv_fwd_gemm.cuh: a_swz<8>)
    return 128 * r + 16 * (c ^ (r & 7))


def descriptor_a(start, r, k, sbo=1024):  # byte of element (r, k) of a k16 step at `start`
    logical = start + (r // 8) * sbo + (r % 8) * 128 + 2 * k
    return swizzle128(logical)


for base in (0, 1024, 7 * 1024):  # stages and warpgroup row offsets are 1024-byte multiples
    for ks in range(4):
        for r in range(64):
            for k in range(16):
                c, e = divmod(16 * ks + k, 8)  # chunk and element of channel 16 ks + k
                assert descriptor_a(base + 32 * ks, r, k) == base + loader_a(r, c) + 2 * e
print("A: the 128-byte-swizzle descriptor reads the loader's rows, every k16 step")


# %% [markdown]
# **B (8 channel groups × BN columns, no swizzle).** The loader writes the weight's 16-byte
# run of (channel group $q$, column $n$) at byte $16\,(q \cdot BN + n)$. Without swizzle a
# K-major operand is made of core matrices of 8 rows × 16 bytes, each 128 contiguous bytes:
# element $(k, n)$ lies at
# $$\mathrm{SBO}\,\lfloor n/8 \rfloor + \mathrm{LBO}\,\lfloor k/8 \rfloor
#   + 16\,(n \bmod 8) + 2\,(k \bmod 8).$$
# With LBO $= 16\,BN$ (the next channel group) and SBO $= 128$ (the next 8 columns) that is
# the loader's byte; a k16 step starts $2 \cdot 16\,BN$ bytes further. The descriptor's
# 14-bit fields hold every offset the tile uses (addresses below $2^{18}$, LBO $\le 2048$).

# %%
def descriptor_b(start, k, n, lbo, sbo=128):
    return start + (n // 8) * sbo + (k // 8) * lbo + (n % 8) * 16 + (k % 8) * 2


def smem_desc(addr, lbo, sbo, swizzle):  # csrc/phase_conv_wgmma.cuh: smem_desc
    return (((addr & 0x3FFFF) >> 4) | (((lbo >> 4) & 0x3FFF) << 16) |
            (((sbo >> 4) & 0x3FFF) << 32) | (swizzle << 62))


for BN in (32, 64, 128):
    for ks in range(4):
        for k in range(16):
            for n in range(BN):
                q, e = divmod(16 * ks + k, 8)
                assert descriptor_b(32 * BN * ks, k, n, lbo=16 * BN) == 16 * (q * BN + n) + 2 * e
    d = smem_desc(227 * 1024 - 16, 16 * BN, 128, 0)
    assert ((d & 0x3FFF) << 4, ((d >> 16) & 0x3FFF) << 4, ((d >> 32) & 0x3FFF) << 4) == \
        (227 * 1024 - 16, 16 * BN, 128)
print("B: the no-swizzle descriptor (LBO = 16 BN, SBO = 128) reads the loader's runs; "
      "the fields round-trip")

# %% [markdown]
# ## 8. What the implicit GEMM moves: operand bytes per multiply-add
#
# The implicit GEMM (`csrc/phase_conv_fwd_gemm*.cu*`) gives a block a tile of $B_M$ rows (one
# phase's output voxels over the batch) by $B_N$ output channels. It walks the reduction in k
# steps of one tap and 64 input channels (16-bit elements). Each step copies the tile's A rows
# ($B_M \times 64$) and B columns ($64 \times B_N$) from global memory into shared memory, then
# does $64\,B_M B_N$ multiply-adds. Blocks share operands only through L2, so a layer moves
# $$\text{bytes} \approx \text{MACs}\cdot\frac{2\,(B_M + B_N)}{B_M B_N},\qquad
#   \text{i.e. } \frac{B_M B_N}{2\,(B_M + B_N)}\ \text{MACs a byte}$$
# (32 for the two-warpgroup tile at $B_N = 128$, 21.3 at 64; 42.7 and 25.6 with 256 rows).
# It is less where copies are zero-filled (rows past a phase's end, taps outside the input:
# those copies read nothing) and more where tiles are partial.
#
# The cell counts both exactly for one layer by walking every block and k step as the kernel
# does, including its test for a row inside the input at a tap. It checks the walk against a
# closed form built from per-axis counts. Then it tabulates the sweep's wide layers.

# %%
def plan_of(shape):
    return phase_plan(shape.size, shape.kernel, shape.stride, shape.padding,
                      dilation=(1, 1, 1), output_padding=shape.output_padding)


def inside(a, n_in):
    """Per tap of axis phase ``a``: how many of its outputs read a voxel inside the input."""
    return [sum(0 <= j + off < n_in for j in range(a.count)) for off in a.offsets]


def gemm_bytes(shape, bm, bn, bk=64, elem=2):
    """(useful MACs, bytes the copies would move, bytes they read) of the implicit GEMM on a
    layer, closed form: A is read once per (row tile, C_out block), B once per row tile."""
    cin_g, cout_g = shape.in_channels // shape.groups, shape.out_channels // shape.groups
    macs = moved = read = 0
    for ph in plan_of(shape).phases:
        rows = shape.batch * ph.num_outputs
        steps = ph.num_taps * math.ceil(cin_g / bk)
        m_tiles, co_blocks = math.ceil(rows / bm), math.ceil(cout_g / bn)
        macs += rows * ph.num_taps * cin_g * cout_g * shape.groups
        moved += shape.groups * m_tiles * co_blocks * steps * (bm + bn) * bk * elem
        valid = [inside(a, n) for a, n in zip(ph.axes, shape.size)]
        rows_read = shape.batch * sum(d * h * w for d in valid[0] for h in valid[1]
                                      for w in valid[2])
        read += shape.groups * co_blocks * rows_read * cin_g * elem        # A
        read += shape.groups * m_tiles * ph.num_taps * cin_g * cout_g * elem  # B
    return macs, moved, read


def gemm_bytes_walked(shape, bm, bn, bk=64, elem=2):
    """The same by walking the kernel's blocks, k steps and copies (small layers only)."""
    cin_g, cout_g = shape.in_channels // shape.groups, shape.out_channels // shape.groups
    moved = read = 0
    for ph in plan_of(shape).phases:
        counts = ph.out_shape
        rows = shape.batch * ph.num_outputs
        for _g in range(shape.groups):
            for m0 in range(0, rows, bm):
                for co0 in range(0, cout_g, bn):
                    for td, th, tw in itertools.product(*(a.offsets for a in ph.axes)):
                        for k0 in range(0, cin_g, bk):
                            moved += (bm + bn) * bk * elem
                            chans = min(bk, cin_g - k0)
                            for m in range(m0, m0 + bm):  # the kernel's row test
                                if m >= rows:
                                    continue
                                jw = m % counts[2]
                                jh = m // counts[2] % counts[1]
                                jd = m // (counts[2] * counts[1]) % counts[0]
                                if (0 <= jd + td < shape.size[0] and 0 <= jh + th < shape.size[1]
                                        and 0 <= jw + tw < shape.size[2]):
                                    read += chans * elem
                            read += chans * min(bn, cout_g - co0) * elem
    return moved, read


tiny = SWEEP[4]._replace(batch=2, size=(3, 4, 5), in_channels=80, out_channels=40)
for bm, bn in ((128, 64), (16, 32)):
    macs, moved, read = gemm_bytes(tiny, bm, bn)
    assert (moved, read) == gemm_bytes_walked(tiny, bm, bn), (bm, bn)
    assert macs == plan_of(tiny).macs_per_sample(80, 40, 1) * 2
print("the walk of every block and copy equals the closed form (bytes moved and read)")

L2_TB_S = 5.5  # assumed L2 bandwidth (TB/s), for scale only: not measured here
print(f"{'shape':>6} {'MACs':>9}  tile       MAC/B moved   MB moved  MB read  µs at {L2_TB_S} TB/s")
for shape in SWEEP[1:6]:
    cout_g = shape.out_channels // shape.groups
    bn = 32 if cout_g <= 32 else 64 if cout_g <= 64 else 128
    for bm in (128, 256):
        macs, moved, read = gemm_bytes(shape, bm, bn)
        print(f"{shape.name:>6} {macs:9.2e}  {bm:3d} x {bn:3d}  {macs / moved:8.1f} "
              f"{moved / 1e6:9.1f} {read / 1e6:8.1f} {moved / (L2_TB_S * 1e6):8.1f}")

# %% [markdown]
# **What phases could share.** Along an axis of stride 2 the phases' taps read the input at
# overlapping offsets: a block that held the accumulators of several phases could copy each
# offset's A rows once for all the phases that read it. Per axis, that saves the ratio of
# (phase, tap) pairs to distinct offsets. Over the three axes it is the product, the most a
# block holding every phase could save on A.

# %%
for shape in SWEEP[1:6]:
    factor, per_axis = 1.0, []
    for axis in range(3):
        phases = {p.axes[axis].residue: p.axes[axis] for p in plan_of(shape).phases}
        pairs = sum(len(a.offsets) for a in phases.values())
        distinct = len({off for a in phases.values() for off in a.offsets})
        per_axis.append(pairs / distinct)
        factor *= pairs / distinct
    print(f"shape {shape.name}: A reads per distinct offset " +
          " x ".join(f"{f:.2f}" for f in per_axis) + f" = {factor:.2f}")

# %% [markdown]
# ## 9. The weight's tensor-core layout, made without an index map
#
# The tensor-core kernels read phase $p$'s weight as `[groups][taps][G][C_out/g][CG]`: $CG$
# input channels (16 bytes: 8 in 16-bit types, 4 in float32) innermost, then the output
# channels, the $G = \lceil (C_\text{in}/g) / CG \rceil$ channel groups and the phase's taps.
# The weight `(C_in, C_out/g, kD, kH, kW)` has its taps innermost, so neighbours in the layout
# lie $C_\text{out}/g \cdot k_D k_H k_W$ elements apart in the weight.
#
# The pack (`pack_mma_kernel`, `csrc/phase_conv_pack.cu`) gives each thread one chunk: one
# (group $g$, kernel tap $k$, channel group $q$, column $co$). It issues the chunk's $CG$
# loads together and writes them as one 16-byte store (32 in float32 with octets);
# consecutive threads take consecutive columns, so a warp's stores are one contiguous run. It
# needs, per kernel tap $k$, where its block starts. Tap $k$ is the $t$-th of its phase's
# $T_p$ taps (C order over the phase's per-axis taps), and with
# $r = G \cdot C_\text{out}/g \cdot CG$ (one tap's block of one group), element $c$ of
# (group $g$, channel group $q$, column $co$) lands at
# $$\underbrace{m_p + t\,r}_{\text{base}(k)} + g\,\underbrace{T_p\,r}_{\text{step}(k)}
#   + (q\,C_\text{out}/g + co)\,CG + c,$$
# where $m_p$ is the phase block's offset. `host_tables` tabulates (base, step) per kernel tap
# as `mma_taps` (tested: it rebuilds the index map exactly). The input gradient's
# channels-last layout `[groups][kD][kH][kW][C_out/g / 8][C_in/g][8]` is the same rule with
# the roles of the channels swapped. Its octets run over the output channels, its columns over
# the input channels, and its taps come in C order: base $k\,r$, step $k_Dk_Hk_W\,r$.
#
# The reads are scattered (a 32-byte sector for each 2- or 4-byte element, as a gather
# through the index map), but the weights sit in L2. On an H200 (`benchmarks/NOTES.md`) a
# tiled transpose through shared memory, reading the weight in runs, measured 2-2.8x slower
# than the element gather; the chunk-a-thread pack measures within about 0.5 µs of it (shape
# 4's bf16 forward layout 5.1 µs against 6.5) and needs no index map on the device.
#
# The cell ports the kernel line by line, for both layouts. It reads the weight through its
# strides, as the kernel does, so a sliced or channels-last weight is covered too. It checks
# that every position of the layout is written once, with the gather's value.

# %%
from phaseconv.engines.cuda import forward_mma_index, grad_input_mma_index, host_tables  # noqa: E402


def pack_port(w, taps, groups, over_outputs, elem, cg=None):
    """pack_mma_kernel in Python; w a float64 tensor of any strides; cg the channel group
    (by default 16 bytes of them)."""
    c_in, cout_g = w.shape[:2]
    kh_n, kw_n = w.shape[3], w.shape[4]
    ksize, cin_g = math.prod(w.shape[2:]), c_in // groups
    st = w.stride()
    # the weight's storage from its first element on (the kernel's pointer)
    extent = sum((n - 1) * s for n, s in zip(w.shape, w.stride())) + 1
    flat = w.as_strided((w.storage_offset() + extent,), (1,), 0)[w.storage_offset():]
    cg = cg or 16 // elem
    chans, cols = (cout_g, cin_g) if over_outputs else (cin_g, cout_g)
    chan_stride, col_stride = (st[1], st[0]) if over_outputs else (st[0], st[1])
    group_stride = cin_g * st[0]
    ngrp = math.ceil(chans / cg)
    run = ngrp * cols * cg
    chunks = groups * ksize * ngrp * cols
    assert chunks <= w.numel()  # the kernel's 32-bit chunk arithmetic
    out = torch.full((chunks * cg,), math.nan, dtype=torch.float64)
    written = torch.zeros(out.numel(), dtype=torch.int64)
    for i in range(chunks):
        r, co = divmod(i, cols)
        r, q = divmod(r, ngrp)
        g, k = divmod(r, ksize)
        kd, kr = divmod(k, kh_n * kw_n)
        kh, kw = divmod(kr, kw_n)
        src = (g * group_stride + q * cg * chan_stride + co * col_stride + kd * st[2]
               + kh * st[3] + kw * st[4])
        valid = chans - q * cg
        v = [float(flat[src + c * chan_stride]) if c < valid else 0.0 for c in range(cg)]
        base = (int(taps[k, 0]) + g * int(taps[k, 1]) if taps is not None
                else (g * ksize + k) * run)
        pos = base + (q * cols + co) * cg
        assert pos * elem % 16 == 0  # the 16-byte stores' alignment
        out[pos:pos + cg] = torch.tensor(v, dtype=torch.float64)
        written[pos:pos + cg] += 1
    assert bool((written == 1).all())
    return out


def gather_port(w, index):
    idx = index.long()
    return torch.where(idx >= 0, w.contiguous().view(-1)[idx.clamp_min(0)],
                       torch.zeros((), dtype=torch.float64))


def weights_of(shape):
    big = torch.randn((shape[0], 2 * shape[1]) + shape[2:], dtype=DT)
    return big[:, ::2].contiguous(), big[:, ::2], big[:, ::2].contiguous(
        memory_format=torch.channels_last_3d)


for shape, groups, stride, padding, dilation in [
        ((20, 3, 3, 2, 5), 2, (2, 1, 3), (2, 0, 1), (1, 2, 1)),  # C_in/g 10: padded groups
        ((9, 5, 3, 4, 2), 3, (2, 2, 1), (1, 1, 0), (1, 1, 1)),
        ((4, 40, 1, 1, 2), 2, (1, 1, 2), (0, 0, 0), (1, 1, 1))]:
    for elem in (2, 4):
        t = host_tables(shape, groups, stride, padding, dilation, 16 // elem)
        index = forward_mma_index(shape, groups, stride, padding, dilation, 16 // elem)
        for w in weights_of(shape):
            got = pack_port(w, t.mma_taps, groups, False, elem)
            assert torch.equal(got, gather_port(w, index)), (shape, elem)
for shape, groups in [((32, 8, 3, 5, 7), 4), ((12, 24, 2, 1, 3), 2)]:
    for elem, cg in ((2, 8), (4, 8), (4, 4)):  # octets (narrow kernel), quads (float32 GEMM)
        index = grad_input_mma_index(shape, groups, cg)
        for w in weights_of(shape):
            got = pack_port(w, None, groups, True, elem, cg)
            assert torch.equal(got, gather_port(w, index)), (shape, elem, cg)
print("the pack writes every position of both layouts once, with the gather's value, "
      "for any weight strides")

# %% [markdown]
# ## 10. One `ldmatrix`, two dtypes: the implicit GEMM's float32 fragments
#
# The implicit GEMM's `mma.sync` tiles (`csrc/phase_conv_fwd_gemm_tiles.cuh`) stage a k step as
# 16-byte channel groups: A as BM rows of BKG groups (XOR-swizzled within the row), B as
# BKG × BN rows of one group each. A group holds 8 channels of a 16-bit type or 4 of
# float32. Each warp loads its fragments with `ldmatrix.m8n8.x4.b16`: lanes $8i \dots 8i+7$
# give the row addresses of matrix $i$, and thread $t$ receives, from each matrix $i$, the
# 32-bit word $t \bmod 4$ of row $\lfloor t/4 \rfloor$. The instruction moves words. Only
# the mma that reads them decides what they mean:
# - `m16n8k16` (bf16/fp16) wants, with $g = \lfloor t/4 \rfloor$ and $q = t \bmod 4$:
#   $a_0 = (g, \{2q, 2q{+}1\})$, $a_1 = (g{+}8, \cdot)$, $a_2 = (g, \{2q{+}8, 2q{+}9\})$,
#   $a_3 = (g{+}8, \cdot)$, and $b_0 = (\{2q, 2q{+}1\}, g)$, $b_1 = (\{2q{+}8, 2q{+}9\}, g)$;
# - `m16n8k8` (TF32) wants $a_0 = (g, q)$, $a_1 = (g{+}8, q)$, $a_2 = (g, q{+}4)$,
#   $a_3 = (g{+}8, q{+}4)$, and $b_0 = (q, g)$, $b_1 = (q{+}4, g)$ (PTX ISA, "Matrix
#   fragments for mma.m16n8k8").
#
# So the same lane addresses (a k16 step of 16-bit, a k8 step of float32: two groups either
# way) give both. The cell stores symbolic elements with the loader's layout and runs the
# kernel's lane addresses through a model of `ldmatrix`. It checks every register of every
# lane against both layouts, and that each matrix's 8 rows fall in distinct 16-byte bank
# groups.

# %%
def a_swz(row, bkg):  # csrc/phase_conv_fwd_gemm.cuh: a_swz<BKG>
    return ((row >> 1) & 3) if bkg == 4 else (row & 7)


def staged_words(bm, bn, bkg, cpg):
    """Shared memory of one k step as 32-bit words, each the tuple of (operand, row or
    column, channel) it holds: A at 0, B after it (csrc/phase_conv_fwd_gemm.cuh: GemmLoader)."""
    words = {}
    per_word = cpg // 4  # elements a word: 2 of 16 bits, 1 float32
    for r in range(bm):
        for c in range(bkg):
            byte = r * bkg * 16 + ((c ^ a_swz(r, bkg)) << 4)
            for w in range(4):
                words[byte // 4 + w] = tuple(("A", r, c * cpg + w * per_word + e)
                                             for e in range(per_word))
    b0 = bm * bkg * 16
    for c in range(bkg):
        for n in range(bn):
            for w in range(4):
                words[(b0 + (c * bn + n) * 16) // 4 + w] = tuple(
                    ("B", n, c * cpg + w * per_word + e) for e in range(per_word))
    return words, b0


def ldmatrix_x4(words, lane_addr):
    """Per thread, its four registers: matrix i's row t // 4, word t % 4."""
    return [[words[lane_addr[8 * i + t // 4] // 4 + t % 4] for i in range(4)]
            for t in range(32)]


def bank_groups_distinct(lane_addr):
    return all(len({(lane_addr[8 * i + r] // 16) % 8 for r in range(8)}) == 8
               for i in range(4))


def expected(op, t, reg, k0, cpg, row0=0, col=0):
    """What register `reg` of thread t must hold: A (rows row0..row0+15) or B (column col)."""
    g, q = t // 4, t % 4
    if cpg == 8:  # m16n8k16
        ks = [2 * q + 8 * (reg >> 1 if op == "A" else reg) + e for e in range(2)]
        if op == "A":
            return tuple(("A", row0 + g + 8 * (reg & 1), k0 + k) for k in ks)
        return tuple(("B", col, k0 + k) for k in ks)
    k = q + 4 * (reg >> 1 if op == "A" else reg)  # m16n8k8 TF32
    if op == "A":
        return (("A", row0 + g + 8 * (reg & 1), k0 + k),)
    return (("B", col, k0 + k),)


for cpg in (8, 4):  # 16-bit, float32
    for bm, bn, bkg, wm_tiles, wn_tiles in ((128, 32, 4, 4, 1), (128, 64, 8, 2, 2),
                                            (128, 128, 8, 2, 4)):
        words, b0 = staged_words(bm, bn, bkg, cpg)
        mt_n, nt_n = bm // (16 * wm_tiles), bn // (8 * wn_tiles)  # MT, NT
        for wm in range(wm_tiles):
            for wn in range(wn_tiles):
                for ks in range(bkg // 2):
                    k0 = ks * 2 * cpg  # the step's first channel
                    for mt in range(mt_n):
                        lanes = []
                        for lane in range(32):  # the kernel's A lane address
                            row = (wm * mt_n + mt) * 16 + (lane & 15)
                            kg = ks * 2 + (lane >> 4)
                            lanes.append(row * bkg * 16 + ((kg ^ a_swz(row, bkg)) << 4))
                        assert bank_groups_distinct(lanes)
                        regs = ldmatrix_x4(words, lanes)
                        for t in range(32):
                            for reg in range(4):
                                assert regs[t][reg] == expected(
                                    "A", t, reg, k0, cpg, row0=(wm * mt_n + mt) * 16)
                    for j in range(0, nt_n, 2):
                        lanes = []
                        for lane in range(32):  # the kernel's B lane address
                            bro, bhalf, bj = lane & 7, (lane >> 3) & 1, lane >> 4
                            row = (ks * 2 + bhalf) * bn + (wn * nt_n + j + bj) * 8 + bro
                            lanes.append(b0 + row * 16)
                        assert bank_groups_distinct(lanes)
                        regs = ldmatrix_x4(words, lanes)
                        for t in range(32):
                            for jj, pair in ((j, (0, 1)), (j + 1, (2, 3))):
                                col = (wn * nt_n + jj) * 8 + t // 4
                                for reg, r in enumerate(pair):
                                    assert regs[t][r] == expected("B", t, reg, k0, cpg,
                                                                  col=col)
print("one set of lane addresses gives the m16n8k16 fragments of 16-bit groups and the "
      "m16n8k8 TF32 fragments of float32 groups, bank-conflict free")

# %% [markdown]
# **3xTF32.** TF32 keeps 10 of float32's 23 fraction bits. Each operand is split as
# $x = x_\text{big} + x_\text{small}$, both TF32 (`cvt.rna`: nearest, ties away from zero),
# and a product is summed as $a_s b_b + a_b b_s + a_b b_b$, leaving out $a_s b_s$.
# $x_\text{big}$ is within $2^{-12}|x|$ of $x$, so rounding the remainder to TF32 leaves
# $|x - x_b - x_s|$ within about $2^{-23}|x|$, and the dropped term is within about
# $2^{-24}|ab|$. A product then carries a relative error of a few times float32's $2^{-24}$,
# against about $2^{-11}$ for one TF32 product. The cell measures both on random operands.

# %%
def to_tf32(x):
    """cvt.rna.tf32.f32 on float64 values that are float32: 10 fraction bits, nearest,
    ties away from zero."""
    m, e = torch.frexp(x)  # x = m 2^e, 0.5 <= |m| < 1
    scaled = m * 2.0 ** 11  # 11 significant bits (1 implicit + 10)
    return torch.sign(scaled) * torch.floor(scaled.abs() + 0.5) * 2.0 ** (e - 11)


gen = torch.Generator().manual_seed(1)
a = torch.randn(100_000, generator=gen, dtype=torch.float32).double()
b = torch.randn(100_000, generator=gen, dtype=torch.float32).double()
ab_, bb_ = to_tf32(a), to_tf32(b)
as_, bs_ = to_tf32((a - ab_).float().double()), to_tf32((b - bb_).float().double())
split_err = float(((a - ab_ - as_).abs() / a.abs()).max())
prod_err = float(((as_ * bb_ + ab_ * bs_ + ab_ * bb_ - a * b).abs() / (a * b).abs()).max())
one_tf32 = float(((ab_ * bb_ - a * b).abs() / (a * b).abs()).max())
print(f"split: max |x - big - small| / |x| = {split_err:.2e} (2^-23 = {2.0 ** -23:.2e})")
print(f"3xTF32 product: max relative error {prod_err:.2e}; one TF32 product {one_tf32:.2e}; "
      f"float32 rounding 2^-24 = {2.0 ** -24:.2e}")
assert split_err <= 2.0 ** -22 and prod_err <= 2.0 ** -20 < one_tf32

# %% [markdown]
# ## 11. When every phase reads the same input: the shared-A tile
#
# On one axis take $K = s$, $p = 0$, $q = 0$ and $d = 1$. Then $L_\text{out} = (L - 1)s + s =
# Ls$, and residue $r$ owns the taps $k \equiv r \pmod s$ with $0 \le k < s$: exactly one,
# $k = r$. Its output $o = sj + r$ reads $i = (o + p - kd)/s = j$. So every phase has $L$
# outputs, one tap, input offset 0, and **its row $j$ reads input $j$**, whatever the phase.
# In 3-D the same holds axis by axis: all $s_d s_h s_w$ phases read input voxel $m$ for their
# row $m$. The implicit GEMM's per-phase tiles reload that A once per phase, each with a
# reduction of only $C_\text{in}/g$; the shared-A tile (`explain()`: `phases-share-a`) makes
# the layer one GEMM whose rows are the input voxels and whose columns are (phase, output
# channel), holds a row tile's A once, and stores each column block at its phase's position
# (a pixel shuffle).
#
# The plan tests the condition on the tables, not on the arguments (every phase: one tap,
# offset 0, $L$ rows). The cell checks, over small geometries, that the tables say so exactly
# when $K = s$, $p = q = 0$, and $d = 1$ or $K = 1$ (a single tap ignores the dilation), and
# that the one GEMM with its pixel-shuffled store is `conv_transpose3d`.

# %%
def phases_share_a(plan):
    """The plan's condition on one axis (csrc/phase_conv_plan.cpp: phases_share_a)."""
    return (len(plan.phases) == plan.stride and plan.bias_only == 0 and
            all(len(ph.taps) == 1 and ph.offsets == (0,) and ph.count == plan.in_size
                for ph in plan.phases))


checked = 0
for L, K, s, p, d, q in itertools.product(range(1, 5), range(1, 5), range(1, 5), range(3),
                                          range(1, 3), range(3)):
    if q >= max(s, d) or (L - 1) * s - 2 * p + d * (K - 1) + q + 1 <= 0:
        continue  # not a layer torch takes
    plan = axis_plan(L, K, s, p, dilation=d, output_padding=q)
    assert phases_share_a(plan) == (K == s and p == 0 and q == 0 and (d == 1 or K == 1)), \
        (L, K, s, p, d, q)
    checked += 1
print(f"{checked} axis geometries: the tables share A exactly when K = s, p = q = 0 "
      "(d = 1 or K = 1)")

gen = torch.Generator().manual_seed(2)
n, c_in, c_out, size, s3 = 2, 6, 5, (3, 4, 5), (2, 1, 3)
x = torch.randn((n, c_in) + size, generator=gen, dtype=torch.float64)
w = torch.randn((c_in, c_out) + s3, generator=gen, dtype=torch.float64)
# rows: input voxels (n, d, h, w); columns: (phase (a, b, c), output channel)
rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c_in)
cols = w.permute(0, 2, 3, 4, 1).reshape(c_in, -1)
gemm = (rows @ cols).reshape((n,) + size + s3 + (c_out,))
# the store: row (n, d, h, w), phase (a, b, c) -> output (n, s d + a, s h + b, s w + c)
y = gemm.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(
    (n, c_out) + tuple(k * sz for k, sz in zip(s3, size)))
ref = F.conv_transpose3d(x, w, stride=s3)
print(f"one GEMM of {rows.shape[0]} rows x {cols.shape[1]} (phase, channel) columns, stored "
      f"by phase: max |difference| {float((y - ref).abs().max()):.1e}")
assert torch.allclose(y, ref, atol=1e-12)

# %% [markdown]
# ## 12. A box of output voxels: the TMA tile's operands (sm_90a)
#
# The TMA unit copies boxes of a tensor: a start coordinate per dimension, a size per
# dimension, and zeros wherever the box leaves the tensor. The TMA tile (kinds 8 and 9 of the
# implicit GEMM) shapes its rows to fit. A block's $BM$ rows are a box of
# $B_d \times B_h \times B_w = BM$ output voxels $j$ of one phase and one sample, with corner
# $j_0$.
#
# Along each axis, output $j$ of a phase reads input $j + \delta_t$ at tap $t$ (section 2).
# So at tap $t = (t_d, t_h, t_w)$ the rows' A operand is the input box of the same size at
# corner $j_0 + \delta_t$, one channel chunk deep. The zeros the hardware fills outside the
# input are the phase's padding. The rows past the phase's own outputs, at its far edge,
# compute values that are never stored.
#
# The plan picks the box with the fewest padded rows over the largest phase (ties: the
# longest W run). The cell does the TMA tile's arithmetic in float64 for a geometry with
# groups, dilation, a kernel smaller than the stride on one axis, and ragged phases:
# - each (phase, box, tap) product of the box of x with the sub-kernel's tap;
# - the box's rows stored at $o = s j + r$.
#
# It checks that every output is written exactly once, and that the result is
# `conv_transpose3d`.

# %%
def best_box(extents, bm):
    """The plan's box (csrc/phase_conv_plan.cpp: gemm_tma_tile) of bm voxels over the phase
    extents (D, H, W)."""
    best = None
    for bw in (128, 64, 32, 16, 8, 4):
        bh = 1
        while bw * bh <= bm:
            bd = bm // (bw * bh)
            rows = math.prod(-(-e // b) * b for e, b in zip(extents, (bd, bh, bw)))
            if best is None or rows < best[0]:
                best = (rows, (bd, bh, bw))
            bh *= 2
    return best[1]


def input_box(x, n, corner, size):
    """x[n, :, corner : corner + size] per axis, zeros outside x (what the TMA unit lands)."""
    out = torch.zeros((x.shape[1],) + tuple(size), dtype=x.dtype)
    src, dst = [], []
    for c, b, full in zip(corner, size, x.shape[2:]):
        lo, hi = max(c, 0), min(c + b, full)
        if lo >= hi:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - c, hi - c))
    out[(slice(None),) + tuple(dst)] = x[(n, slice(None)) + tuple(src)]
    return out


geometry = dict(stride=(2, 3, 2), padding=(1, 0, 2), output_padding=(1, 2, 0),
                dilation=(1, 1, 2), groups=2)
k3 = (3, 2, 4)  # 2 < 3 along H: one H residue without taps (bias only)
gen = torch.Generator().manual_seed(12)
x = torch.randn((2, 8, 3, 4, 5), generator=gen, dtype=torch.float64)
w = torch.randn((8, 3) + k3, generator=gen, dtype=torch.float64)
ref = F.conv_transpose3d(x, w, **geometry)
plan3 = phase_plan(x.shape[2:], k3, geometry["stride"], geometry["padding"],
                   dilation=geometry["dilation"], output_padding=geometry["output_padding"])
groups, cin_g, cout_g = geometry["groups"], 4, 3
extents = tuple(max(ph.count for ph in a.phases) for a in plan3.axes)
y = torch.zeros_like(ref)
written = torch.zeros(ref.shape, dtype=torch.int64)
for bm in (128, 256):
    box = best_box(extents, bm)
    y.zero_()
    written.zero_()
    for phase in plan3.phases:
        ad, ah, aw = phase.axes
        starts = itertools.product(*(range(0, max(a.count, 1), b)
                                     for a, b in zip(phase.axes, box)))
        for n, g, j0 in itertools.product(range(x.shape[0]), range(groups), starts):
            xg = x[:, g * cin_g:(g + 1) * cin_g]
            acc = torch.zeros((cout_g,) + box, dtype=torch.float64)
            for (kd, od), (kh, oh), (kw, ow) in itertools.product(
                    *(zip(a.taps, a.offsets) for a in phase.axes)):
                a_box = input_box(xg, n, (j0[0] + od, j0[1] + oh, j0[2] + ow), box)
                acc += torch.einsum("cdhw,co->odhw", a_box, w[g * cin_g:(g + 1) * cin_g, :, kd,
                                                                kh, kw])
            # rows inside the phase, stored at o = s j + r per axis
            keep = [min(b, a.count - j) for a, b, j in zip(phase.axes, box, j0)]
            if min(keep) <= 0:
                continue
            out = tuple(slice(a.first + a_plan.stride * j, None, a_plan.stride)
                        for a, a_plan, j in zip(phase.axes, plan3.axes, j0))
            out = tuple(slice(o.start, o.start + a_plan.stride * (kk - 1) + 1, o.step)
                        for o, a_plan, kk in zip(out, plan3.axes, keep))
            sel = (n, slice(g * cout_g, (g + 1) * cout_g)) + out
            y[sel] += acc[:, :keep[0], :keep[1], :keep[2]]
            written[sel] += 1
    covered = written > 0
    bias_only = int((~covered[0, 0]).sum())
    assert int(written.max()) == 1 and bias_only == plan3.bias_only_outputs
    err = float((y - ref).abs().max())
    print(f"BM {bm}: box (D, H, W) = {box} over phase extents {extents}; every output written "
          f"once ({bias_only} bias-only voxels a channel), max |difference| {err:.1e}")
    assert err < 1e-12

# %% [markdown]
# ## 13. The input gradient's boxes step at the stride
#
# The input gradient of a transposed convolution is a plain strided convolution of grad_y:
# $\partial x[j] = \sum_t \partial y[s\,j - p + t\,d] \cdot W[t]$ per axis, with no inserted
# zeros to skip (the forward's phases came from inserting them). On the TMA tile a block's
# rows are a box of grad_x voxels with corner $j_0$. At tap $t$ its A operand is therefore
# grad_y's voxels $s\,j - p + t\,d$ for $j$ in the box: a box of grad_y at corner
# $s\,j_0 - p + t\,d$ that keeps every $s$-th voxel. The tensor map says exactly that with
# its element strides: a box spans $B \cdot s$ voxels of grad_y along an axis and lands $B$ of
# them, zeros outside grad_y. So the hardware limit of 256 elements a box side caps
# $B \cdot s$. The plan keeps to that, and to strides of at most 8.
#
# The cell computes grad_x this way in float64, box by box over every tap, for a geometry with
# strides 3, 1 and 2, dilation, groups and padding. It checks the result against autograd's
# gradient of `conv_transpose3d`.

# %%
def strided_box(t, n, corner, size, step):
    """t[n, :, corner + step * i for i < size] per axis, zeros outside t (the TMA unit's box
    with element strides `step`)."""
    out = torch.zeros((t.shape[1],) + tuple(size), dtype=t.dtype)
    idx = [torch.arange(b) * s + c for c, b, s in zip(corner, size, step)]
    ok = [(i >= 0) & (i < full) for i, full in zip(idx, t.shape[2:])]
    sel = [i[m] for i, m in zip(idx, ok)]
    if min(len(v) for v in sel) == 0:
        return out
    dst = [torch.nonzero(m).flatten() for m in ok]
    out[:, dst[0][:, None, None], dst[1][None, :, None], dst[2][None, None, :]] = \
        t[n][:, sel[0][:, None, None], sel[1][None, :, None], sel[2][None, None, :]]
    return out


geometry = dict(stride=(3, 1, 2), padding=(1, 1, 0), output_padding=(2, 0, 1),
                dilation=(2, 1, 1), groups=2)
k3 = (3, 3, 2)
gen = torch.Generator().manual_seed(13)
x = torch.randn((2, 8, 3, 4, 5), generator=gen, dtype=torch.float64, requires_grad=True)
w = torch.randn((8, 3) + k3, generator=gen, dtype=torch.float64)
y = F.conv_transpose3d(x, w, **geometry)
gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
(gx_ref,) = torch.autograd.grad(y, x, gy)
s, p, d = geometry["stride"], geometry["padding"], geometry["dilation"]
groups, cin_g, cout_g = geometry["groups"], 4, 3
box = best_box(tuple(x.shape[2:]), 128)
assert all(b * st <= 256 for b, st in zip(box, s))
gx = torch.zeros_like(x)
for n, g in itertools.product(range(x.shape[0]), range(groups)):
    gyg = gy[:, g * cout_g:(g + 1) * cout_g]
    for j0 in itertools.product(*(range(0, e, b) for e, b in zip(x.shape[2:], box))):
        acc = torch.zeros((cin_g,) + box, dtype=torch.float64)
        for t in itertools.product(*(range(k) for k in k3)):
            corner = tuple(si * ji - pi + ti * di for si, ji, pi, ti, di in zip(s, j0, p, t, d))
            a_box = strided_box(gyg, n, corner, box, s)
            acc += torch.einsum("odhw,co->cdhw", a_box, w[g * cin_g:(g + 1) * cin_g, :, t[0],
                                                          t[1], t[2]])
        keep = [min(b, e - j) for b, e, j in zip(box, x.shape[2:], j0)]
        gx[(n, slice(g * cin_g, (g + 1) * cin_g)) + tuple(
            slice(j, j + kk) for j, kk in zip(j0, keep))] = acc[:, :keep[0], :keep[1], :keep[2]]
err = float((gx - gx_ref).abs().max())
print(f"box (D, H, W) = {box}, spanning {tuple(b * st for b, st in zip(box, s))} voxels of "
      f"grad_y; max |difference| from autograd {err:.1e}")
assert err < 1e-12
