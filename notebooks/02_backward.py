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
# # The backward pass in phase form
#
# Notebook 1 split the transposed convolution into one stride-1 correlation per output phase.
# Training also needs the gradients with respect to the input and the weight. This notebook
# derives both on one axis, shows that they split into phases along the *same* table (same
# sub-kernels, same input windows, same phase dilation), and then checks the library's
# pure-torch versions (`phaseconv.engines.reference.grad_input`, `grad_weight_phases`,
# `grad_bias` and `phaseconv.packing.unpack_conv3d_phases`) against torch autograd in 3-D.
#
# Notation as in notebook 1: input length $L$, kernel $K$, stride $s$, padding $p$, dilation
# $d$, output padding $q$, output length $L_\text{out}$; $g = \gcd(s, d)$. A phase $r$ owns
# the outputs $o = r + s\,j$, $0 \le j < \text{count}_r$; its taps $k_0, k_1, \dots$ (ascending
# offset) read input $j + \delta_{k_t}$ with $\delta_{k_t} = \delta_{k_0} + t\,d/g$.
# $L$ is the training loss, $\bar y = \partial L / \partial y$ the incoming gradient.

# %%
import torch
import torch.nn.functional as F

from phaseconv.engines import reference
from phaseconv.engines.cuda import grad_input_mma_index
from phaseconv.geometry import axis_plan, phase_plan
from phaseconv.packing import pack_conv3d_phases, unpack_conv3d_phases

torch.manual_seed(0)
DT = torch.float64
TOL = 1e-12  # relative; float64 round-off is ~1e-15, any indexing bug is O(1)


def err(ours, ref):
    """Max |error| relative to the reference's largest entry (absolute below 1)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if not ref.numel():
        return 0.0
    return (ours - ref).abs().max().item() / max(1.0, ref.abs().max().item())


# %% [markdown]
# ## 1. The input gradient: a gather, i.e. a strided convolution
#
# With one channel, the transposed convolution is a linear map $y = A x$ that scatters
#
# $$y[i s - p + k d] \mathrel{+}= w[k]\, x[i] \qquad (0 \le i < L,\ 0 \le k < K),$$
#
# dropping the terms that land outside $[0, L_\text{out})$. So $A[o, i] = w[k]$ exactly when
# $o = i s - p + k d$. The input gradient is $\bar x = A^\top \bar y$: the same edges walked the
# other way, a **gather**,
#
# $$\bar x[i] = \sum_{k} w[k]\; \bar y[i s - p + k d] \qquad (\bar y \text{ read as } 0
# \text{ outside } [0, L_\text{out})).$$
#
# Read as a function of $i$, this is an ordinary cross-correlation of $\bar y$ with the
# kernel (no flip) at **stride $s$, padding $p$, dilation $d$**: precisely the convolution
# that the transposed convolution is the transpose of. With channels, $w[k]$ is a
# $C_\text{in} \times C_\text{out}$ matrix and $A^\top$ uses its transpose; torch's
# transposed weight $(C_\text{in}, C_\text{out}/\text{groups}, K)$ is already laid out as the
# conv weight $(\text{out}, \text{in}/\text{groups}, K)$ of that convolution, groups
# included. One detail: a strided convolution of $L_\text{out}$ samples returns
# $L + \lfloor q / s \rfloor$ of them; torch allows $q \ge s$ when $d > s$, and the extra
# rows (fed only by outputs beyond the scatter's reach) are dropped.

# %%
for cfg in [{"stride": 2, "padding": 2, "dilation": 1, "output_padding": 1},
            {"stride": 2, "padding": 1, "dilation": 3, "output_padding": 2},  # q >= s
            {"stride": 3, "padding": 3, "dilation": 2, "output_padding": 1, "groups": 2}]:
    x = torch.randn(2, 4, 7, dtype=DT, requires_grad=True)
    w = torch.randn(4, 3, 5, dtype=DT)
    y = F.conv_transpose1d(x, w, **cfg)
    gy = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, gy)
    conv = F.conv1d(gy, w, stride=cfg["stride"], padding=cfg["padding"],
                    dilation=cfg["dilation"], groups=cfg.get("groups", 1))
    print(f"{cfg}: conv1d gives {conv.shape[-1]} rows for L={x.shape[-1]}, "
          f"error = {err(conv[..., :x.shape[-1]], gx):.1e}")
    assert err(conv[..., :x.shape[-1]], gx) < TOL

# %% [markdown]
# ## 2. Split by residue: one stride-1 transposed correlation per phase
#
# The strided convolution above still visits, for every $i$, all $K$ taps; the output index
# $i s - p + k d$ they read has residue $r = (k d - p) \bmod s$, which depends on $k$ only.
# So each tap reads exactly one phase of $\bar y$, the phase that owns the tap in the forward
# ($k d \equiv r + p \pmod s$ is the same condition). Group the sum by phase and write the
# read position as $r + s j$, so $j = i - \delta_k$:
#
# $$\bar x[i] = \sum_r \sum_t w[k_t]\; \bar y_r[i - \delta_{k_t}], \qquad
# \bar y_r[j] = \bar y[r + s j],\quad \delta_{k_t} = \delta_{k_0} + t\, d/g .$$
#
# With $m = i - \delta_{k_0}$ the inner sum is $\sum_t w[k_t]\, \bar y_r[m - t\,d/g]$: a
# **stride-1 transposed convolution** (a "full" correlation) of the phase slice $\bar y_r$
# with the phase's sub-kernel at the phase dilation $d/g$, i.e. exactly the adjoint of the
# forward phase's stride-1 correlation. Its result has
# $\text{count}_r + (T_r - 1)\,d/g$ entries, $m = 0$ being input $\delta_{k_0}$: it covers the
# forward's input window $[\delta_{k_0}, \delta_{k_\text{last}} + \text{count}_r)$. Crop that
# window to $[0, L)$ (the rest was zero padding in the forward, whose gradient is discarded)
# and add the phases up. Every term of the strided convolution appears exactly once. (The
# strided convolution on its own multiplies no inserted zeros either; what the split buys is
# that the backward runs on the forward's own packed sub-kernels, input windows and phase
# slices, so one phase kernel can serve both directions.) Phases without taps or outputs
# contribute nothing.

# %% [markdown]
# The same in code, straight from the `axis_plan` table. The forward phase runs
# `F.conv1d(window, sub)` with `sub = weight[:, :, taps].transpose(0, 1)` of shape
# $(C_\text{out}, C_\text{in}, T)$ (notebook 1); its adjoint is `F.conv_transpose1d` with the
# *same* tensor, which reads it as mapping $C_\text{out}$ channels back to $C_\text{in}$.


# %%
def phase_grad_input_1d(gy, weight, length, stride, padding, dilation, output_padding):
    """Input gradient of conv_transpose1d (groups=1): one conv_transpose1d per phase."""
    plan = axis_plan(length, weight.shape[-1], stride, padding, dilation=dilation,
                     output_padding=output_padding)
    gx = gy.new_zeros(gy.shape[0], weight.shape[0], length)
    for ph in plan.phases:
        if not ph.taps or ph.count == 0:
            continue
        sub = weight[:, :, list(ph.taps)].transpose(0, 1)  # the forward phase's conv1d weight
        win = F.conv_transpose1d(gy[..., ph.first::stride], sub, dilation=ph.phase_dilation)
        start, stop = ph.input_window
        assert win.shape[-1] == stop - start  # exactly the forward's input window
        lo, hi = max(start, 0), min(stop, length)
        if hi > lo:
            gx[..., lo:hi] += win[..., lo - start:hi - start]
    return gx


# %% [markdown]
# ## 3. The weight gradient: a correlation of the input with a phase slice
#
# Differentiating the scatter with respect to $w[k]$ collects every edge that uses tap $k$:
#
# $$\bar w[k] = \sum_i x[i]\; \bar y[i s - p + k d]$$
#
# (with channels, $x[i]\,\bar y[\cdot]^\top$, an outer product; summed over the batch too).
# Tap $k$ belongs to exactly one phase $r$, and with $i = j + \delta_k$ the read position is
# $r + s j$:
#
# $$\bar w[k] = \sum_j \bar y_r[j]\; x[j + \delta_k], \qquad k = k_t,\ \delta_k =
# \delta_{k_0} + t\,d/g .$$
#
# That is the correlation of the input with the phase slice $\bar y_r$ evaluated at lag
# $\delta_k$: for the forward phase $y_r[j] = \sum_t w[k_t]\,\text{window}[j + t\,d/g]$ it is
# just $\partial L / \partial w[k_t] = \sum_j \bar y_r[j]\,\text{window}[j + t\,d/g]$, the
# weight gradient of an ordinary stride-1 correlation, computed on the phase's input window
# (zero-padded as in the forward) and reduced over $j$ and the batch. The result for sub-kernel
# entry $t$ belongs at kernel index $k_t$ of the original layout. Because the phases partition
# the taps, putting the per-phase results back is a pure scatter, no sums: it is the inverse
# of packing (`unpack_conv3d_phases`). A tap whose phase owns no outputs, or whose reads all
# fall in the padding, gets exactly zero.
#
# The bias is added once to every output, so $\bar b = \sum_{n, o} \bar y[n, :, o]$.


# %%
def phase_grad_weight_1d(x, gy, kernel, stride, padding, dilation, output_padding):
    """Weight gradient of conv_transpose1d (groups=1) in the original (C_in, C_out, K) layout."""
    length = x.shape[-1]
    plan = axis_plan(length, kernel, stride, padding, dilation=dilation,
                     output_padding=output_padding)
    gw = x.new_zeros(x.shape[1], gy.shape[1], kernel)
    margin = kernel * dilation + padding + stride  # more than any read leaves [0, L) by
    xp = F.pad(x, (margin, margin))  # reads outside [0, L) see zeros
    for ph in plan.phases:
        gr = gy[..., ph.first::stride]  # (N, C_out, count)
        for k, off in zip(ph.taps, ph.offsets):
            start = off + margin
            gw[:, :, k] = torch.einsum("nij,noj->io", xp[..., start:start + ph.count], gr)
    return gw


worst, n_cfg = 0.0, 0
for s in range(1, 5):
    for d in range(1, 4):
        for k in range(1, 6):
            for p in range(4):
                for q in range(max(s, d)):
                    for length in (1, 3):
                        cfg = {"stride": s, "padding": p, "dilation": d, "output_padding": q}
                        if axis_plan(length, k, s, p, dilation=d, output_padding=q).out_size <= 0:
                            continue
                        x = torch.randn(2, 3, length, dtype=DT, requires_grad=True)
                        w = torch.randn(3, 2, k, dtype=DT, requires_grad=True)
                        y = F.conv_transpose1d(x, w, **cfg)
                        gy = torch.randn_like(y)
                        gx, gw = torch.autograd.grad(y, (x, w), gy)
                        e_x = err(phase_grad_input_1d(gy, w.detach(), length, **cfg), gx)
                        e_w = err(phase_grad_weight_1d(x.detach(), gy, k, **cfg), gw)
                        worst = max(worst, e_x, e_w)
                        n_cfg += 1
print(f"1-D sweep: {n_cfg} configurations, worst error (input and weight) = {worst:.1e}")
assert worst < TOL

# %% [markdown]
# ## 4. Three dimensions and groups
#
# The scatter condition holds per axis, so a 3-D phase is a triple of axis phases and
# everything above factors: the phase slice is `grad_out[:, :, rd::sd, rh::sh, rw::sw]`, the
# adjoint of the phase is `F.conv_transpose3d(slice, w_phase, stride=1,
# dilation=phase_dilation, groups=groups)` over the 3-D input window, and
#
# $$\bar w[k_d, k_h, k_w] = \sum_{n,\,j_d, j_h, j_w} \bar y_r[n, :, j]\;
# x[n, :, j_d + \delta_{k_d}, j_h + \delta_{k_h}, j_w + \delta_{k_w}]$$
#
# per 3-D tap. Groups change nothing in the geometry: each group is an independent
# transposed convolution on its own channel block, so in the weight gradient output channel
# $o$ only meets the input channels of its own group. The library keeps the packed layout
# $(C_\text{out}, C_\text{in}/\text{groups}, T_d, T_h, T_w)$, where a group is a contiguous
# block of output rows, and computes each tap as one `einsum` over (batch, space) per group.
#
# The library's versions, against torch autograd: the founding layer's geometry on a small
# input, a mixed geometry (kernel < stride, $\gcd(s, d) > 1$, padding beyond the kernel
# extent, $q \ge s$), and an empty batch.

# %%
geometries = {
    "founding layer (small input)": dict(
        x=(1, 32, 3, 4, 5), kernel=(3, 5, 7), stride=(2, 2, 2), padding=(1, 2, 3),
        output_padding=(1, 1, 1), dilation=(1, 1, 1), groups=4, out_channels=32),
    "mixed": dict(
        x=(2, 4, 3, 4, 2), kernel=(2, 3, 3), stride=(3, 2, 2), padding=(0, 5, 2),
        output_padding=(2, 1, 2), dilation=(1, 2, 3), groups=2, out_channels=6),
    "empty batch": dict(
        x=(0, 4, 2, 3, 2), kernel=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1),
        output_padding=(1, 0, 1), dilation=(1, 1, 1), groups=1, out_channels=2),
}
for name, g in geometries.items():
    c_in, groups, c_out = g["x"][1], g["groups"], g["out_channels"]
    conv = {key: g[key] for key in ("stride", "padding", "output_padding", "dilation", "groups")}
    x = torch.randn(g["x"], dtype=DT, requires_grad=True)
    w = torch.randn((c_in, c_out // groups) + g["kernel"], dtype=DT, requires_grad=True)
    b = torch.randn(c_out, dtype=DT, requires_grad=True)
    y = F.conv_transpose3d(x, w, b, **conv)
    gy = torch.randn_like(y)
    gx_ref, gw_ref, gb_ref = torch.autograd.grad(y, (x, w, b), gy, allow_unused=True)
    if gx_ref is None:  # autograd's zero for an empty batch
        gx_ref, gw_ref = torch.zeros_like(x), torch.zeros_like(w)

    plan = phase_plan(g["x"][2:], g["kernel"], g["stride"], g["padding"],
                      dilation=g["dilation"], output_padding=g["output_padding"])
    packed = pack_conv3d_phases(w.detach(), groups, g["stride"], g["padding"], g["dilation"])
    gx = reference.grad_input(gy, packed, plan, groups, c_in)
    per_phase = reference.grad_weight_phases(x.detach(), gy, plan, groups, c_out, w.shape)
    gw = unpack_conv3d_phases(per_phase, w.shape, groups, g["stride"], g["padding"],
                              g["dilation"])
    gb = reference.grad_bias(gy)
    errors = (err(gx, gx_ref), err(gw, gw_ref), err(gb, gb_ref))
    shapes = sorted({tuple(t.shape[2:]) for t in per_phase if t is not None})
    print(f"{name}: output {tuple(y.shape)}, {len(plan.phases)} phases, sub-kernels {shapes}; "
          f"error input {errors[0]:.1e}, weight {errors[1]:.1e}, bias {errors[2]:.1e}")
    assert max(errors) < TOL

# %% [markdown]
# ## 5. Cost
#
# Each backward product does one multiply-add per (output, tap of its phase) pair and per
# channel pair, the forward's count (`PhasePlan.macs_per_sample`); the zero-insertion method's
# backward, like its forward, would spend $1 - 1/(s_d s_h s_w)$ of its work on inserted zeros.
# The weight gradient is a reduction over batch and space; here it is a fixed sequence of
# dense torch ops (one `einsum` per tap), with no scatter-adds.

# %% [markdown]
# ## 6. Depthwise layers: one box of $\bar y$ per tile, one list of offsets
#
# With one input and one output channel per group there is nothing to multiply across
# channels, and the CUDA engine computes both gradients straight from the gather form of
# sections 1 and 3, per channel:
#
# $$\bar x[i] = \sum_k w[k]\,\bar y[s i - p + k d], \qquad
# \bar w[k] = \sum_{n,\,i} x[i]\,\bar y[s i - p + k d].$$
#
# Every tap of every phase appears once in the sum over $k$ (a phase only groups taps), so the
# kernels walk one list of taps. A tile of $T$ consecutive inputs from $i_0$ reads $\bar y$ only
# in the **box** $[s i_0 - p,\ s (i_0 + T - 1) - p + (K - 1) d]$, of
# $s (T - 1) + (K - 1) d + 1$ samples (zero outside $[0, L_\text{out})$). In box coordinates
# input $i_0 + l$ and tap $k$ read position $s\,l + k d$. Stored with its positions split by
# residue, position $b$ at word $(b \bmod s)\cdot\lceil B/s \rceil + \lfloor b/s \rfloor$, that
# read is word $\text{off}_k + l$ with $\text{off}_k = (k d \bmod s)\lceil B/s\rceil +
# \lfloor k d / s \rfloor$: for a fixed tap, consecutive inputs read consecutive words (on the
# GPU, lanes on distinct shared-memory banks), and a tap is one offset. In 3-D the box is the
# product of the three axes' boxes and an offset is the sum of the axes' offsets. The check
# below emulates that in 1-D, tile by tile, against torch autograd.


# %%
def depthwise_box_gradients_1d(x, w, gy, stride, padding, dilation, tile):
    """Both gradients of a depthwise conv_transpose1d from per-tile boxes of grad_y."""
    n, c, length = x.shape
    k = w.shape[-1]
    box = stride * (tile - 1) + (k - 1) * dilation + 1
    cols = -(-box // stride)
    offsets = [(t * dilation) % stride * cols + t * dilation // stride for t in range(k)]
    gx, gw = torch.zeros_like(x), torch.zeros_like(w)
    for i0 in range(0, length, tile):
        start = stride * i0 - padding
        words = gy.new_zeros(n, c, stride * cols)
        for b in range(box):  # the box, zero outside grad_y, split by residue
            if 0 <= start + b < gy.shape[-1]:
                words[..., b % stride * cols + b // stride] = gy[..., start + b]
        count = min(tile, length - i0)
        for t in range(k):
            read = words[..., offsets[t]:offsets[t] + count]  # inputs i0 .. i0 + count - 1
            gx[..., i0:i0 + count] += w[:, 0, t].view(1, c, 1) * read
            gw[:, 0, t] += (x[..., i0:i0 + count] * read).sum(dim=(0, 2))
    return gx, gw


for cfg in [dict(stride=2, padding=1, dilation=1, output_padding=0, k=4),
            dict(stride=3, padding=2, dilation=2, output_padding=1, k=3),
            dict(stride=2, padding=0, dilation=1, output_padding=1, k=1)]:  # empty phases
    k = cfg.pop("k")
    x = torch.randn(2, 3, 11, dtype=DT, requires_grad=True)
    w = torch.randn(3, 1, k, dtype=DT, requires_grad=True)
    y = F.conv_transpose1d(x, w, groups=3, **cfg)
    gy = torch.randn_like(y)
    gx_ref, gw_ref = torch.autograd.grad(y, (x, w), gy)
    gx, gw = depthwise_box_gradients_1d(x.detach(), w.detach(), gy, cfg["stride"],
                                        cfg["padding"], cfg["dilation"], tile=4)
    print(f"k={k} {cfg}: error input {err(gx, gx_ref):.1e}, weight {err(gw, gw_ref):.1e}")
    assert max(err(gx, gx_ref), err(gw, gw_ref)) < TOL

# %% [markdown]
# ## 7. Wide layers: the input gradient as one implicit GEMM
#
# Section 1's gather form, $\bar x[i] = \sum_k w[k]\,\bar y[s i - p + k d]$, is itself an
# ordinary strided convolution, and it has no inserted zeros to avoid: every tap of every
# phase is a useful product. So for wide float16/bfloat16 layers the CUDA engine does not split
# it by phase at all. It runs the forward's implicit GEMM on it as one stride-1 "phase":
#
# * rows: the voxels $i$ of $\bar x$ over the batch;
# * reduction: (tap $k$, channel group of 8, channel in the group), $\bar y$ read
#   channels-last at $s i - p + k d$ (zero outside it), 16 bytes per row and step;
# * columns: the input channels of the group.
#
# The weight reaches the kernel as $[g][k_D][k_H][k_W][C_\text{out}/g/8][C_\text{in}/g][8]$,
# packed without an index map (`csrc/phase_conv_pack.cu`). The check below reads the weight
# through that layout's index map (`engines.cuda.grad_input_mma_index`) and computes $\bar x$ as one
# matrix product per (group, tap), against torch autograd.


# %%
def grad_input_implicit_gemm(gy, w, x_shape, groups, stride, padding, dilation):
    """grad_x of conv_transpose3d as the implicit GEMM's rows x (taps, channel groups)."""
    n, c_out = gy.shape[:2]
    c_in, k = w.shape[0], w.shape[2:]
    cin_g, cout_g = c_in // groups, c_out // groups
    index = grad_input_mma_index(w.shape, groups).long()  # the kernel's layout
    taps = k[0] * k[1] * k[2]
    wm = w.reshape(-1)[index].view(groups, taps, cout_g // 8, cin_g, 8)
    gy_cl = gy.permute(0, 2, 3, 4, 1)  # (N, OD, OH, OW, C_out)
    gx = gy.new_zeros((n, c_in) + tuple(x_shape))
    for g in range(groups):
        acc = gy.new_zeros((n,) + tuple(x_shape) + (cin_g,))
        for t in range(taps):
            tap = (t // (k[1] * k[2]), t // k[2] % k[1], t % k[2])
            a = gy_cl[..., g * cout_g:(g + 1) * cout_g]
            for axis in range(3):  # grad_y positions s * i - p + k * d, zero outside
                pos = (stride[axis] * torch.arange(x_shape[axis]) - padding[axis]
                       + tap[axis] * dilation[axis])
                inside = (pos >= 0) & (pos < gy.shape[2 + axis])
                a = a.index_select(1 + axis, pos.clamp(0, gy.shape[2 + axis] - 1))
                a = a * inside.view([-1 if d == 1 + axis else 1 for d in range(5)]).to(a)
            b = wm[g, t].permute(0, 2, 1).reshape(cout_g, cin_g)  # row: channel G * 8 + e
            acc += a @ b
        gx[:, g * cin_g:(g + 1) * cin_g] = acc.permute(0, 4, 1, 2, 3)
    return gx


for cfg in [dict(stride=(2, 2, 2), padding=(1, 1, 1), dilation=(1, 1, 1),
                 output_padding=(1, 1, 1), k=(3, 3, 3), groups=1),
            dict(stride=(3, 1, 2), padding=(0, 1, 2), dilation=(2, 1, 3),
                 output_padding=(2, 0, 1), k=(2, 3, 4), groups=2)]:
    k, groups = cfg.pop("k"), cfg.pop("groups")
    x = torch.randn(2, 8 * groups, 3, 4, 5, dtype=DT, requires_grad=True)
    w = torch.randn(8 * groups, 16, *k, dtype=DT)
    y = F.conv_transpose3d(x, w, groups=groups, **cfg)
    gy = torch.randn_like(y)
    gx_ref, = torch.autograd.grad(y, x, gy)
    gx = grad_input_implicit_gemm(gy, w, x.shape[2:], groups, cfg["stride"], cfg["padding"],
                                  cfg["dilation"])
    print(f"k={k} groups={groups} {cfg}: error input {err(gx, gx_ref):.1e}")
    assert err(gx, gx_ref) < TOL


# %% [markdown]
# Where $\bar y$ (or $x$, for the weight gradient) arrives contiguous, one copy lays it out
# channels-last first. For 16-bit tensors with $C$ and $P = D H W$ multiples of 8 a thread
# moves an 8 x 8 block: eight 16-byte loads, one per channel, each holding 8 positions as four
# 32-bit words of position pairs; one byte permute per (channel pair, position) takes the
# low or high halves of two channels' words, which is the word of that channel pair at that
# position; eight 16-byte stores, one per position (`to_channels_last_octets_kernel` in
# `csrc/phase_conv_layout.cu`). The check below runs that arithmetic on 16-bit words
# (`__byte_perm` emulated) and compares it with torch's permute.


# %%
def byte_perm(a, b, selector):
    """CUDA's __byte_perm: result byte i is byte (selector nibble i) of the 8 bytes b:a."""
    pool = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(pool[(selector >> (4 * i)) & 0xF] << (8 * i) for i in range(4))


def channels_last_octets(x):
    """(N, C, P) 16-bit words -> (N, P, C) by the kernel's 8 x 8 blocks."""
    n, c, p = x.shape
    y = torch.empty(n, p, c, dtype=torch.int64)
    for b in range(n):
        for cb in range(c // 8):
            for pb in range(p // 8):
                # channel i's 16-byte row: word k holds positions 2k (low) and 2k + 1 (high)
                row = [x[b, cb * 8 + i, pb * 8:pb * 8 + 8].tolist() for i in range(8)]
                v = [[row[i][2 * k] | row[i][2 * k + 1] << 16 for k in range(4)]
                     for i in range(8)]
                for k in range(4):
                    for q in range(4):
                        lo, hi = v[2 * q][k], v[2 * q + 1][k]
                        for pos, sel in ((2 * k, 0x5410), (2 * k + 1, 0x7632)):
                            word = byte_perm(lo, hi, sel)  # channels 2q (low), 2q + 1 (high)
                            y[b, pb * 8 + pos, cb * 8 + 2 * q] = word & 0xFFFF
                            y[b, pb * 8 + pos, cb * 8 + 2 * q + 1] = word >> 16
    return y


words = torch.randint(0, 1 << 16, (2, 24, 40), generator=torch.Generator().manual_seed(3))
assert torch.equal(channels_last_octets(words), words.permute(0, 2, 1))
print("8 x 8 blocks by byte permutes = the channels-last layout")


# %% [markdown]
# ## 8. The weight gradient's rows: walked by carries, stored by runs
#
# Section 3's weight gradient of one (phase, tap) is a GEMM whose reduction runs over the
# phase's outputs over the batch: row $k \leftrightarrow (n, j_D, j_H, j_W)$ in the mixed radix
# $(N, c_D, c_H, c_W)$, $j_W$ fastest. A CUDA thread copies rows $k_0, k_0 + B, k_0 + 2B,
# \dots$ ($B = 32$ rows a chunk). Dividing each row into its digits costs three divisions;
# instead `KStep` splits $B$ once into the same radix, $B \leftrightarrow (b_N, b_D, b_H, b_W)$,
# and `KRow` adds it digit by digit from $j_W$ up: a digit plus its step digit plus an incoming
# carry stays below twice its radix, so one conditional subtraction leaves it in range and
# passes a carry on. The row's element offsets in $x$ and $\bar y$ are linear in the digits, so
# they follow by adding what each step digit adds and what each carry adds (a carry out of
# $j_W$ adds one $j_H$ step and removes $c_W$ $j_W$ steps). Rows past the reduction are
# exactly those whose $n$ reached $N$.
#
# The check below walks rows of ragged phase shapes (counts 1 and 2 included, where $b_W$ or
# $b_H$ wrap several times) and compares digits and offsets with direct division.


# %%
def digits(k, radix):
    """k -> (n, jd, jh, jw) in the radix (cd, ch, cw), jw fastest."""
    cd, ch, cw = radix
    return k // (cd * ch * cw), k // (ch * cw) % cd, k // cw % ch, k % cw


def walk(k0, step, rows, radix, strides):
    """Rows k0, k0 + step, ...: digits and offset by adding the step with carries."""
    cd, ch, cw = radix
    sn, sd, sh, sw = strides
    n, d, h, w = digits(k0, radix)
    off = n * sn + d * sd + h * sh + w * sw
    bn, bd, bh, bw = digits(step, radix)
    by = bn * sn + bd * sd + bh * sh + bw * sw
    carry = (sh - cw * sw, sd - ch * sh, sn - cd * sd)
    out = []
    for _ in range(rows):
        out.append(((n, d, h, w), off))
        w, off = w + bw, off + by
        if w >= cw:
            w, h, off = w - cw, h + 1, off + carry[0]
        h += bh
        if h >= ch:
            h, d, off = h - ch, d + 1, off + carry[1]
        d += bd
        if d >= cd:
            d, n, off = d - cd, n + 1, off + carry[2]
        n += bn
    return out


gen = torch.Generator().manual_seed(8)
for radix in [(3, 5, 7), (1, 1, 1), (2, 1, 33), (4, 2, 1), (5, 6, 16)]:
    strides = tuple(int(v) for v in torch.randint(1, 1000, (4,), generator=gen))
    k0 = int(torch.randint(0, 40, (1,), generator=gen))
    for k, (dig, off) in zip(range(k0, 10**6, 32), walk(k0, 32, 200, radix, strides)):
        assert dig == digits(k, radix), (radix, k)
        assert off == sum(a * b for a, b in zip(dig, strides)), (radix, k)
print("rows walked by carries = rows decoded by division")

# %% [markdown]
# Each split of the reduction writes its own workspace slice in the packed layout (per phase,
# $[g][c_\text{in}][\text{tap}][c_\text{out}/g]$), and a second kernel adds the slices in
# order. Stored element by element at its place in the weight $(C_\text{in}, C_\text{out}/g,
# k_D, k_H, k_W)$, consecutive packed elements (consecutive output channels) land
# $k_D k_H k_W$ apart. So the reduction takes the weight in runs instead: input channel
# $c_\text{in}$ and a block of output channels own one contiguous run of the weight; the kernel
# enumerates the run's (tap row, channel) pairs, tap rows in phase-table order, finds each
# pair's packed element from the table's offsets, and writes its sum into shared memory at its
# place in the run, which it then stores in order. The kernel tabulates the layer's tap rows
# once a block: where row $r$'s pairs of input channel 0 start in the packed layout, its
# phase's tap count (one input channel's stride there), and the weight tap it is, read from
# the index at input channel 0, output channel 0. A pair's packed element and its place in the
# run then follow by arithmetic. Below, that enumeration (the kernel's arithmetic, over the
# engine's own phase table and index) finds the place the index gives every pair, and lands on
# every element of every run exactly once, for ragged, empty, grouped and dilated layers.

# %%
from phaseconv.engines.cuda import TABLE_STRIDE, host_tables  # noqa: E402

PT_TAPS, PT_WOFS = (3, 4, 5), 9


def tap_rows(table, index, cout_g):
    """The rows kernel's table: per tap row (phases in table order), its packed element at
    input channel 0, output channel 0; its phase's taps; its weight tap."""
    rows = []
    for row in table:
        tq = row[PT_TAPS[0]] * row[PT_TAPS[1]] * row[PT_TAPS[2]]
        for t in range(tq):
            ofs = row[PT_WOFS] + t * cout_g
            rows.append((ofs, tq, index[ofs]))
    return rows


def reduction_runs(weight_shape, groups, stride, padding, dilation, co_block):
    """Each run's pairs as the rows kernel places them (gw_reduce_rows_kernel), beside the
    places the index gives them."""
    host = host_tables(weight_shape, groups, stride, padding, dilation, 0)
    table = host.table.view(-1, TABLE_STRIDE).tolist()
    index = host.index.tolist()  # packed element -> weight element
    c_in, cout_g = weight_shape[:2]
    taps = weight_shape[2] * weight_shape[3] * weight_shape[4]
    rows = tap_rows(table, index, cout_g)
    assert len(rows) == taps
    runs = []
    for ci in range(c_in):
        for co0 in range(0, cout_g, co_block):
            ncols = min(co_block, cout_g - co0)
            base = (ci * cout_g + co0) * taps
            slots, places = [], []
            for j in range(ncols * taps):
                r, col = j // ncols, j % ncols
                ofs, tp, tap = rows[r]
                at = ofs + ci * tp * cout_g + co0 + col
                slots.append(col * taps + tap)
                places.append(index[at] - base)
            runs.append((ncols * taps, slots, places))
    return runs


for shape, groups, stride, padding, dilation, co_block in [
        ((4, 3, 3, 5, 7), 2, (2, 2, 2), (1, 2, 3), (1, 1, 1), 32),  # ragged phases, groups
        ((2, 40, 2, 2, 2), 1, (2, 2, 2), (0, 0, 0), (1, 1, 1), 32),  # 2 channel blocks
        ((3, 2, 1, 2, 3), 3, (3, 2, 4), (0, 1, 1), (1, 2, 1), 64),   # kernel < stride: empty
        ((2, 5, 3, 3, 3), 1, (2, 2, 2), (1, 1, 1), (2, 2, 2), 32)]:  # dilation
    for length, slots, places in reduction_runs(shape, groups, stride, padding, dilation,
                                                co_block):
        assert slots == places, (shape, slots, places)
        assert sorted(slots) == list(range(length)), (shape, slots)
print("every run of the weight written exactly once")

# %% [markdown]
# ## 9. Narrow layers: one staged window, every tap at its shift
#
# With 8 channels per group on one side, section 3's per-tap GEMM is a $16 \times 8$ (or
# $8 \times 8$) matrix over a long reduction: a $64 \times 32$ tensor-core tile would be mostly
# empty. The narrow kernel (`csrc/phase_conv_bwd_narrow.cu`) turns the taps into rows
# instead. A block takes one phase and all its taps; per tile of the phase's outputs
# ($t_D \times t_H \times t_W$ of one sample) it stages two things, channels-last:
#
# - the input window every tap of the tile reads: $(t_D + (T_D - 1) d'_D) \times
#   (t_H + (T_H - 1) d'_H) \times (t_W + (T_W - 1) d'_W)$ positions from the phase's first
#   input offset, zero outside the input ($d'$ the phase dilation, $T$ the phase's taps);
# - $\bar y$ at the tile's outputs, zero past the phase's counts and in the padding to a
#   multiple of 16 outputs.
#
# Output $q = (q_D, q_H, q_W)$ of the tile and tap $(t_D, t_H, t_W)$ meet the window position
# $\text{pos}(q) + \text{shift}(t)$, both linear in the window's radix. So every tap is the same
# table of positions plus one offset: the kernel's `ldmatrix` row addresses. An m16n8 tile's
# 16 rows are two (tap, 8-channel input octet) pairs; with one input octet, two taps share a
# tile, and an odd tap count repeats the last pair (its rows computed, never stored).
#
# Below: that decomposition in float64, over the engine's own phase table and packed-weight
# index (`host_tables`), tiles that do not divide the counts, against torch autograd.

# %%
import itertools  # noqa: E402
import math  # noqa: E402

PT_RES, PT_OFF = (0, 1, 2), (6, 7, 8)


def narrow_grad_weight(x, gy, weight_shape, groups, stride, padding, dilation, tile):
    """The narrow kernel's decomposition: per phase, tile and pair of (tap, input octet)
    rows, a 16 x 8 product over the tile's outputs; the sums land in the packed layout and
    the index scatters them into the weight."""
    host = host_tables(weight_shape, groups, stride, padding, dilation, 0)
    table = host.table.view(-1, TABLE_STRIDE).tolist()
    pdil = host.phase_dilation
    n_batch, c_in = x.shape[:2]
    cin_g, cout_g = c_in // groups, weight_shape[1]
    out_sz, in_sz = gy.shape[2:], x.shape[2:]
    packed = torch.zeros(host.index.numel(), dtype=x.dtype)
    for row in table:
        taps = [row[PT_TAPS[0]], row[PT_TAPS[1]], row[PT_TAPS[2]]]
        ntaps = taps[0] * taps[1] * taps[2]
        if ntaps == 0:
            continue
        counts = [len(range(row[PT_RES[a]], out_sz[a], stride[a])) for a in range(3)]
        win = [tile[a] + (taps[a] - 1) * pdil[a] for a in range(3)]
        # the tile's outputs (flattened, padded to a multiple of 16) and their window positions
        qs = [(qd, qh, qw) for qd in range(tile[0]) for qh in range(tile[1])
              for qw in range(tile[2])]
        qp = -(-len(qs) // 16) * 16
        pos = [(qd * win[1] + qh) * win[2] + qw for qd, qh, qw in qs] + [0] * (qp - len(qs))
        shift = [(td * pdil[0] * win[1] + th * pdil[1]) * win[2] + tw * pdil[2]
                 for td in range(taps[0]) for th in range(taps[1]) for tw in range(taps[2])]
        for g in range(groups):
            # (tap, input octet) pairs, two a tile; an odd count repeats the last
            octets = [(t, o) for t in range(ntaps) for o in range(cin_g // 8)]
            pairs = [octets[i:i + 2] if i + 1 < len(octets) else [octets[i], octets[i]]
                     for i in range(0, len(octets), 2)]
            sums = torch.zeros(len(pairs), 16, cout_g, dtype=x.dtype)
            for n in range(n_batch):
                for t0 in itertools.product(*(range(0, counts[a], tile[a]) for a in range(3))):
                    lo = [t0[a] + row[PT_OFF[a]] for a in range(3)]  # window's first input
                    xs = torch.zeros(cin_g, *win, dtype=x.dtype)
                    src = [slice(max(lo[a], 0), min(lo[a] + win[a], in_sz[a])) for a in range(3)]
                    dst = [slice(s.start - lo[a], s.stop - lo[a]) for a, s in enumerate(src)]
                    if all(s.start < s.stop for s in src):
                        xs[(slice(None), *dst)] = x[(n, slice(g * cin_g, (g + 1) * cin_g),
                                                     *src)]
                    xs = xs.reshape(cin_g, -1)
                    gq = torch.zeros(qp, cout_g, dtype=x.dtype)
                    for i, q in enumerate(qs):
                        j = [t0[a] + q[a] for a in range(3)]
                        if all(j[a] < counts[a] for a in range(3)):
                            o = [row[PT_RES[a]] + stride[a] * j[a] for a in range(3)]
                            gq[i] = gy[(n, slice(g * cout_g, (g + 1) * cout_g), *o)]
                    for k, pair in enumerate(pairs):
                        a_rows = torch.cat([xs[8 * o:8 * o + 8][:, [p + shift[t] for p in pos]]
                                            for t, o in pair])  # 16 x qp
                        sums[k] += a_rows @ gq
            for k, pair in enumerate(pairs):
                for half, (t, o) in enumerate(pair):
                    if half and pair[0] == pair[1]:
                        continue  # the repeated pair: computed, never stored
                    for c in range(8):
                        ci = g * cin_g + 8 * o + c
                        at = row[PT_WOFS] + (ci * ntaps + t) * cout_g
                        packed[at:at + cout_g] = sums[k, 8 * half + c]
    grad = torch.zeros(math.prod(weight_shape), dtype=x.dtype)
    grad[host.index.long()] = packed
    return grad.view(weight_shape)


for c_in, c_out, groups, size, k, s, p, op, d, tile in [
        (8, 8, 1, (3, 4, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1), (2, 3, 4)),
        (32, 32, 4, (3, 4, 6), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1), (2, 2, 5)),
        (16, 8, 1, (3, 5, 4), (2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 0, 1), (2, 1, 3), (1, 4, 3)),
        (8, 16, 1, (2, 3, 3), (1, 2, 1), (3, 4, 2), (0, 0, 0), (0, 0, 1), (1, 1, 1), (3, 1, 2))]:
    x = torch.randn(2, c_in, *size, dtype=DT, requires_grad=True)
    w = torch.randn(c_in, c_out // groups, *k, dtype=DT, requires_grad=True)
    y = F.conv_transpose3d(x, w, None, s, p, op, groups, d)
    gy = torch.randn_like(y)
    (ref,) = torch.autograd.grad(y, w, gy)
    ours = narrow_grad_weight(x.detach(), gy, tuple(w.shape), groups, s, p, d, tile)
    assert err(ours, ref) < TOL, (c_in, c_out, groups, err(ours, ref))
print("one window per tile, every tap at its shift, two (tap, octet) pairs a tile = autograd")

# %% [markdown]
# ## 10. Narrow layers' input gradient: one window, W stored by residue
#
# Section 1's input gradient is the plain strided correlation
# $\bar x[i] = \sum_{k, c_o} w[c_i, c_o, k]\, \bar y[s i - p + k d]$, every term a real
# $\bar y$ element. With 8 or 16 $\bar y$ channels per group, the per-phase kernels would run
# 8-channel reductions in 16-wide tensor-core steps. The narrow kernel
# (`csrc/phase_conv_bwd_input_narrow.cu`) takes a tile of $t_D \times t_H \times t_W$ input
# positions and stages the $\bar y$ window all its taps read: $s (t - 1) + (K - 1) d + 1$
# positions per axis from $s\, i_0 - p$, zero outside $\bar y$.
#
# Position $m$ of the tile and tap $k$ meet window position $s\, m + k d$, linear in both, so
# a fragment row is a table entry plus the tap's offset. Along W, though, 8 neighbours
# $m .. m + 7$ sit $s$ rows apart: 16-byte rows at stride 2 fall on 4 of shared memory's 8
# bank groups, a two-way conflict on every `ldmatrix`. The window therefore stores its W axis
# by residue: position $w$ at $(w \bmod s)\, n_s + \lfloor w / s \rfloor$ with
# $n_s = \lceil W_{win} / s \rceil$. For $w = s\, m + c$ that is $m + (c \bmod s)\, n_s +
# \lfloor c / s \rfloor$: still the row's entry ($m$) plus the tap's offset, now with the 8
# neighbours on 8 consecutive rows, at every stride.
#
# A k step of `m16n8k16` holds two (tap, $\bar y$ octet) pairs; the weight is gathered as
# $[g][k_D][k_H][k_W][C_{out}/g / 8][C_{in}/g][8]$ (the implicit GEMM's layout), and an odd pair
# count is padded by a pair of zero weights. Below: that decomposition in float64 against torch
# autograd, tiles that do not divide the sizes.

# %%
def narrow_grad_input(gy, w, x_shape, groups, stride, padding, dilation, tile):
    """The narrow kernel's decomposition: per tile, a window with W by residue; per k step two
    (tap, octet) pairs of 8 channels; rows at the tile position's entry plus the pair's
    offset."""
    n_batch, c_in = x_shape[:2]
    x_sz, y_sz = x_shape[2:], gy.shape[2:]
    cin_g, cout_g = c_in // groups, w.shape[1]
    kernel = w.shape[2:]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    octets = cout_g // 8
    # the gathered weight: [g][tap][octet][ci][8]
    wg = (w.view(groups, cin_g, octets, 8, *kernel).permute(0, 4, 5, 6, 2, 1, 3)
          .reshape(groups, len(taps) * octets, cin_g, 8))
    pairs = [(t, o) for t in range(len(taps)) for o in range(octets)]
    if len(pairs) % 2:
        pairs.append(None)  # the padding pair: zero weights
    win = [stride[a] * (tile[a] - 1) + (kernel[a] - 1) * dilation[a] + 1 for a in range(3)]
    ns = -(-win[2] // stride[2])  # W positions per residue
    wdim = (win[0], win[1], stride[2] * ns)

    def slot(dd, hh, ww):  # a window position's row: W by residue
        return (dd * wdim[1] + hh) * wdim[2] + (ww % stride[2]) * ns + ww // stride[2]

    entry = {m: slot(stride[0] * m[0], stride[1] * m[1], stride[2] * m[2])
             for m in itertools.product(*(range(t) for t in tile))}
    # W neighbours are consecutive rows (distinct bank groups for ldmatrix), at any stride
    assert all(entry[(a, b, c + 1)] == entry[(a, b, c)] + 1
               for (a, b, c) in entry if c + 1 < tile[2])
    offset = []
    for pair in pairs:
        if pair is None:
            offset.append(0)
            continue
        (kd, kh, kw), o = taps[pair[0]], pair[1]
        # the tap's shift, as a row offset: (c mod s) n_s + c // s along W
        shift = slot(kd * dilation[0], kh * dilation[1], kw * dilation[2])
        offset.append(o * math.prod(wdim) + shift)
    for m in entry:  # linear: the row of (m, tap) is entry + offset
        for pair, off in zip(pairs, offset):
            if pair is not None:
                (kd, kh, kw), o = taps[pair[0]], pair[1]
                assert entry[m] + off == o * math.prod(wdim) + slot(
                    stride[0] * m[0] + kd * dilation[0], stride[1] * m[1] + kh * dilation[1],
                    stride[2] * m[2] + kw * dilation[2])
    grad = torch.zeros(x_shape, dtype=gy.dtype)
    for n, g in itertools.product(range(n_batch), range(groups)):
        for i0 in itertools.product(*(range(0, x_sz[a], tile[a]) for a in range(3))):
            lo = [stride[a] * i0[a] - padding[a] for a in range(3)]
            rows = torch.zeros(octets * math.prod(wdim), 8, dtype=gy.dtype)
            for dd, hh, ww in itertools.product(*(range(v) for v in win)):
                o_ = (lo[0] + dd, lo[1] + hh, lo[2] + ww)
                if all(0 <= o_[a] < y_sz[a] for a in range(3)):
                    for o in range(octets):
                        c0 = g * cout_g + 8 * o
                        rows[o * math.prod(wdim) + slot(dd, hh, ww)] = gy[(n, slice(c0, c0 + 8),
                                                                          *o_)]
            for m, e in entry.items():
                i = [i0[a] + m[a] for a in range(3)]
                if not all(i[a] < x_sz[a] for a in range(3)):
                    continue  # a ragged tile's rows: computed, never stored
                acc = torch.zeros(cin_g, dtype=gy.dtype)
                for step in range(0, len(pairs), 2):  # one m16n8k16 step: two pairs
                    for pair, off in zip(pairs[step:step + 2], offset[step:step + 2]):
                        b = (torch.zeros(cin_g, 8, dtype=gy.dtype) if pair is None
                             else wg[g, pair[0] * octets + pair[1]])
                        acc += b @ rows[e + off]
                grad[(n, slice(g * cin_g, (g + 1) * cin_g), *i)] = acc
    return grad


for c_in, c_out, groups, size, k, s, p, op, d, tile in [
        (8, 8, 1, (3, 4, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1), (2, 2, 8)),
        (32, 32, 4, (2, 3, 6), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1), (1, 2, 4)),
        (16, 8, 1, (3, 3, 4), (2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 0, 1), (2, 1, 3), (2, 1, 3)),
        (8, 16, 1, (2, 3, 5), (1, 2, 4), (3, 4, 4), (0, 0, 1), (0, 0, 3), (1, 1, 1), (1, 2, 2))]:
    x = torch.randn(2, c_in, *size, dtype=DT, requires_grad=True)
    w = torch.randn(c_in, c_out // groups, *k, dtype=DT)
    y = F.conv_transpose3d(x, w, None, s, p, op, groups, d)
    gy = torch.randn_like(y)
    (ref,) = torch.autograd.grad(y, x, gy)
    ours = narrow_grad_input(gy, w, tuple(x.shape), groups, s, p, d, tile)
    assert err(ours, ref) < TOL, (c_in, c_out, groups, err(ours, ref))
print("one window per tile, W by residue, two (tap, octet) pairs a step = autograd")

# %% [markdown]
# ## 11. Wide layers' weight gradient on warpgroups: the stage is already an MN-major operand
#
# Section 8's GEMM of one (phase, tap), $\partial w[c, o] = \sum_k x_k[c]\,\bar y_k[o]$, has
# both operands *channel-contiguous*: a reduction row $k$ of the channels-last $x$ (or
# $\bar y$) is a run of channels. `gw_cl_kernel` copies each row's 16-byte chunks into a
# `[k][channel]` stage and transposes them with `ldmatrix.trans` into `mma.sync` fragments.
# On sm_90a, `wgmma` reads 16-bit operands from shared memory in either major-ness
# (`imm-trans` 1: "MN-major", M or N contiguous), so `gw_wgmma_kernel` hands the very same
# stage to the tensor cores through descriptors, with no fragments in registers.
#
# The MN-major canonical layouts (16-bit elements, 8 to a 16-byte chunk), element $(m, k)$
# of an $M \times 16$ step at logical byte
# $$2\,(m \bmod 8) + 16\,(\lfloor m/8 \rfloor \bmod S) + \mathrm{LBO}\,\lfloor m/8S \rfloor
#   + 16 S\,(k \bmod 8) + \mathrm{SBO}\,\lfloor k/8 \rfloor,$$
# $S = 8$ chunks a row for the 128-byte swizzle, $S = 4$ for the 64-byte one; the swizzle
# then XORs address bits 4-6 with bits 7-9 (128-byte) or bits 4-5 with bits 7-8 (64-byte).
#
# The loader (`GwWgOperand::offset`) puts chunk $c$ of row $k$ of an operand of $C$ channels
# in slab $\lfloor c/8 \rfloor$ (64 channels, $64 \cdot 128$ bytes of a 64-row chunk) at
# $128 k + 16\,((c \bmod 8) \oplus (k \bmod 8))$; a 32-channel operand (one slab of 64-byte
# rows) at $64 k + 16\,(c \oplus (\lfloor k/2 \rfloor \bmod 4))$. With SBO $= 8$ rows
# ($1024$ or $512$ bytes), LBO $=$ one slab, and a k16 step starting 16 rows further, the
# cell checks that every element each descriptor names, in each of the chunk's four k16
# steps, is the one the loader put there: A (one warpgroup's 64 input channels: its slab) and
# B (32, 64 or 128 output channels).

# %%
BK = 64  # k rows a chunk (csrc/phase_conv_plan.h: kGwWgBK)


def row_bytes(c):
    return 128 if c >= 64 else 64


def loader(c, k, chunk):  # csrc/phase_conv_bwd.cu: GwWgOperand<C, 64>::offset
    if c >= 64:
        return (chunk // 8) * BK * 128 + 128 * k + 16 * ((chunk % 8) ^ (k % 8))
    return 64 * k + 16 * (chunk ^ ((k // 2) % 4))


def swizzled(addr, chunks):  # the hardware's 128-byte (8 chunks) or 64-byte (4) swizzle
    return addr ^ (((addr >> 7) & (chunks - 1)) << 4)


def mn_major(start, m, k, lbo, sbo, chunks):  # the canonical layout's byte of (m, k)
    logical = (start + 2 * (m % 8) + 16 * ((m // 8) % chunks) + lbo * (m // (8 * chunks))
               + 16 * chunks * (k % 8) + sbo * (k // 8))
    return swizzled(logical, chunks)


for c, extent in ((64, 64), (128, 64), (32, 32), (64, 64), (128, 128)):
    rb = row_bytes(c)
    chunks, lbo, sbo = rb // 16, BK * rb, 8 * rb
    for base in (0, 32 * 1024):  # stages are 1024-byte multiples
        for slab in range(c // extent if c >= 64 else 1):  # A: each warpgroup's own slab
            for ks in range(BK // 16):
                start = base + slab * lbo + ks * 16 * rb
                for m in range(extent):
                    ch, e = divmod(slab * extent + m, 8)
                    for k in range(16):
                        assert mn_major(start, m, k, lbo, sbo, chunks) == \
                            base + loader(c, 16 * ks + k, ch) + 2 * e
print("the [k][channel] stage read MN-major: A by warpgroup slab, B of 32, 64 and 128 "
      "channels, every k16 step of a chunk")


# %% [markdown]
# ## 12. The weight gradient on TMA boxes: a chunk of the reduction is a box of phase outputs
#
# Section 3's weight gradient of one (phase, tap) sums over the phase's outputs: on one axis,
# phase $r$ owns $o = r + s\,j$ for $0 \le j < \text{count}_r = \lceil (L_\text{out} - r)/s
# \rceil$, and tap $k$ (where $r + p - k\,d \equiv 0 \pmod s$) reads input $j + \delta$ with
# $\delta = (r + p - k\,d)/s$:
# $$\partial w[c, o', k] = \sum_n \sum_j x[n, c, j + \delta]\;\bar y[n, o', r + s\,j].$$
# `tensor-cores-tma` (`gw_tma_kernel`, sm_90a) cuts the sum over $j$ into boxes of
# $B_d \times B_h \times B_w = 64$ phase outputs, and the TMA unit copies each operand's box
# as a whole: x's at corner $j_0 + \delta$ with unit steps, $\bar y$'s at corner $r + s\,j_0$
# taking every $s$-th voxel (the tensor map's element strides, as for the input gradient's
# boxes in notebook 1, section 13; each side of $\bar y$'s box, $B \cdot s$, at most 256).
#
# A box may pass the phase's end. Its rows there are exactly the ones the TMA unit fills with
# zeros, and no guard is needed: $j \ge \text{count}_r \iff s\,j \ge L_\text{out} - r \iff
# r + s\,j \ge L_\text{out}$, so $\bar y$'s box reads past $\bar y$ on precisely those rows.
# They multiply x (real values, or zeros past x) by zero. A non-finite x there would make
# $0 \cdot \infty$ a NaN, and the reduction's non-finite fix-up recomputes such sums from
# real pairs only.
#
# The padded rows still cost multiply-adds. The plan picks the box that pads the largest
# phase least. The rule runs this kernel only where the padded rows, over every (phase, tap)
# pair (each phase's extent rounded up to whole boxes, times its taps), exceed the useful
# ones by 5% or less, so executed MACs stay within 1.05x of the useful ones. The cell prints
# that ratio for the benchmark's wide layers and for MONAI UNet's 384 -> 64 layer, whose 6^3
# phases the warpgroup kernel keeps. It then computes a weight gradient box by box in
# float64, with groups, dilation and output padding, and checks it against autograd.

# %%
from phaseconv.bench import SWEEP  # noqa: E402


def cdiv(a, b):
    return -(-a // b)


def tma_box(extents, strides, rows=64):
    """The box of `rows` phase outputs that pads the largest phase least, ties to the longest
    W run, each side times its stride at most 256 (csrc/phase_conv_plan.cpp: gm_tma_box)."""
    best = None
    for tw in (64, 32, 16, 8, 4, 2, 1):
        for th in (1, 2, 4, 8, 16, 32, 64):
            if tw * th > rows:
                continue
            box = (rows // (tw * th), th, tw)
            if any(b * s > 256 for b, s in zip(box, strides)):
                continue
            padded = math.prod(-(-e // b) * b for e, b in zip(extents, box))
            if best is None or padded < best[0]:
                best = (padded, box)
    return best[1]


def reduction_rows(out, kernel, strides, padding, box, boxed=True):
    """The rows the kernel multiplies over every (phase, tap) pair: each phase's outputs
    (rounded up to whole boxes where `boxed`) times its taps, axis by axis; dilation 1, as
    in these layers (csrc/phase_conv_plan.cpp: gm_tma_rows)."""
    total = 1
    for o, k, s, p, b in zip(out, kernel, strides, padding, box):
        taps = [sum((r + p - t) % s == 0 for t in range(k)) for r in range(min(s, o))]
        total *= sum(n * (cdiv(cdiv(o - r, s), b) * b if boxed else cdiv(o - r, s))
                     for r, n in enumerate(taps))
    return total


def out_size(size, k, s, p, op, d=(1, 1, 1)):
    return tuple((n - 1) * st - 2 * pp + dd * (kk - 1) + oo + 1
                 for n, kk, st, pp, oo, dd in zip(size, k, s, p, op, d))


layers = [(f"sweep {i + 1}", sh.size, sh.kernel, sh.stride, sh.padding, sh.output_padding)
          for i, sh in enumerate(SWEEP) if 2 <= i + 1 <= 6]
layers.append(("UNet 384->64", (6, 6, 6), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1)))
for name, size, k, s, p, op in layers:
    out = out_size(size, k, s, p, op)
    box = tma_box([-(-o // st) for o, st in zip(out, s)], s)
    ratio = reduction_rows(out, k, s, p, box) / reduction_rows(out, k, s, p, box, False)
    print(f"{name:13s} output {out}, box (D, H, W) {box}: {ratio:.3f}x the useful rows, "
          f"{'the TMA form' if ratio <= 1.05 else 'the warpgroup kernel'}")


def strided_box(t, n, c0, nc, corner, size, step):
    """t[n, c0:c0 + nc, corner + step * i for i < size], zeros outside t, as (rows W-fastest,
    channels): the TMA unit's box with element strides `step`."""
    out = torch.zeros((nc,) + tuple(size), dtype=t.dtype)
    idx = [torch.arange(b) * st + c for c, b, st in zip(corner, size, step)]
    ok = [(i >= 0) & (i < full) for i, full in zip(idx, t.shape[2:])]
    if all(m.any() for m in ok):
        src = [i[m] for i, m in zip(idx, ok)]
        dst = [torch.nonzero(m).flatten() for m in ok]
        out[:, dst[0][:, None, None], dst[1][None, :, None], dst[2][None, None, :]] = \
            t[n, c0:c0 + nc][:, src[0][:, None, None], src[1][None, :, None],
                             src[2][None, None, :]]
    return out.reshape(nc, -1).t()


conf = dict(stride=(3, 1, 2), padding=(1, 1, 0), output_padding=(2, 0, 1),
            dilation=(2, 1, 1), groups=2)
kernel = (3, 3, 2)
gen = torch.Generator().manual_seed(12)
x = torch.randn((2, 8, 3, 4, 5), generator=gen, dtype=DT)
w = torch.randn((8, 3) + kernel, generator=gen, dtype=DT, requires_grad=True)
y = F.conv_transpose3d(x, w, **conf)
gy = torch.randn(y.shape, generator=gen, dtype=DT)
(gw_ref,) = torch.autograd.grad(y, w, gy)
s, p, d, groups = conf["stride"], conf["padding"], conf["dilation"], conf["groups"]
cin_g, cout_g = 4, 3
out = tuple(y.shape[2:])
box = tma_box([-(-o // st) for o, st in zip(out, s)], s)
gw = torch.zeros_like(gw_ref)
for r in itertools.product(*(range(st) for st in s)):  # a phase: its residue per axis
    count = [-(-(o - ri) // st) for o, ri, st in zip(out, r, s)]
    for k in itertools.product(*(range(kk) for kk in kernel)):
        if any((ri + pi - ki * di) % st for ri, pi, ki, di, st in zip(r, p, k, d, s)):
            continue  # the tap does not reach this phase
        delta = [(ri + pi - ki * di) // st for ri, pi, ki, di, st in zip(r, p, k, d, s)]
        for n, g in itertools.product(range(x.shape[0]), range(groups)):
            acc = torch.zeros(cin_g, cout_g, dtype=DT)
            for j0 in itertools.product(*(range(0, c, b) for c, b in zip(count, box))):
                a = strided_box(x, n, g * cin_g, cin_g, [j + e for j, e in zip(j0, delta)],
                                box, (1, 1, 1))
                b = strided_box(gy, n, g * cout_g, cout_g,
                                [ri + st * j for ri, st, j in zip(r, s, j0)], box, s)
                acc += a.t() @ b  # 64 rows of the reduction: one box each
            gw[g * cin_g:(g + 1) * cin_g, :, k[0], k[1], k[2]] += acc
largest = [cdiv(o, st) for o, st in zip(out, s)]
assert any(c % b for c, b in zip(largest, box))  # boxes pass the phases: zero-filled rows
print(f"box (D, H, W) = {box}; grad_y's box spans {tuple(b * st for b, st in zip(box, s))} "
      f"voxels; relative error against autograd {err(gw, gw_ref):.1e}")
assert err(gw, gw_ref) < TOL
