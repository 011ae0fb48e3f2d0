"""The CUDA engine's layer tables, checked on the CPU: the index maps, read as the kernels
read them (gather on the way in, scatter for the weight gradient), give torch's results.

No GPU is needed: the maps are made on the host (``engines.cuda.host_tables``), and the
gather and scatter are written here with torch ops exactly as ``csrc/phase_conv_pack.cu`` and
the weight-gradient reduction apply them.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from phaseconv.engines import cuda

GEOMETRIES = [  # (weight shape, groups, stride, padding, dilation)
    ((32, 8, 3, 5, 7), 4, (2, 2, 2), (1, 2, 3), (1, 1, 1)),   # the founding layer
    ((8, 3, 4, 4, 4), 1, (2, 2, 2), (1, 1, 1), (1, 1, 1)),    # windows past both ends
    ((12, 5, 2, 3, 4), 2, (3, 1, 2), (0, 1, 2), (2, 1, 3)),   # dilation sharing a factor
    ((6, 4, 1, 2, 1), 1, (3, 4, 2), (0, 0, 0), (1, 1, 1)),    # kernel < stride: empty phases
    ((5, 7, 3, 1, 2), 5, (1, 2, 1), (1, 0, 1), (1, 1, 2)),    # depthwise-like, odd channels
]


def _gather(w: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[i] = w[index[i]]`` (C-order element), 0 where the index is -1."""
    flat = w.reshape(-1)
    out = flat[index.clamp_min(0).long()]
    return torch.where(index >= 0, out, torch.zeros_like(out))


def _correlate(src, block, taps, first, pdil, extent):
    """``out[j] = sum_t block[t] . src[j + first + t * pdil]`` (zero outside ``src``) over a
    table row's taps, ``block`` viewed (groups, C_src/g, *taps, C_out/g): what both kinds of
    kernel compute from a row, written with torch ops.  Returns (N, C_out, *extent)."""
    n, c_src = src.shape[:2]
    groups, c_src_g = block.shape[:2]
    out = None
    for t in itertools.product(*(range(k) for k in taps)):
        shifted = src.new_zeros((n, c_src) + tuple(extent))
        dst, cut = [slice(None)] * 2, [slice(None)] * 2
        for a in range(3):
            shift = first[a] + t[a] * pdil[a]
            lo, hi = max(0, -shift), min(extent[a], src.shape[2 + a] - shift)
            dst.append(slice(lo, max(lo, hi)))
            cut.append(slice(lo + shift, max(lo, hi) + shift))
        shifted[tuple(dst)] = src[tuple(cut)]
        shifted = shifted.view((n, groups, c_src_g) + tuple(extent))
        tap = block[(slice(None), slice(None)) + t]  # (groups, C_src/g, C_out/g)
        term = torch.einsum("ngcxyz,gco->ngoxyz", shifted, tap)
        out = term if out is None else out + term
    return out.reshape((n, -1) + tuple(extent))


def _forward_from_packed(x, packed, table, groups, c_out_g, stride, pdil, out_shape):
    """The transposed convolution as the SIMT kernels compute it from the packed layout and
    the phase table: per phase, per tap, a channel contraction of the shifted input (phase
    output j reads input j + first + t * pdil)."""
    n, c_in = x.shape[:2]
    cin_g = c_in // groups
    y = x.new_zeros((n, groups * c_out_g) + tuple(out_shape))
    for row in table.tolist():
        res, taps, first, wofs = row[0:3], row[3:6], row[6:9], row[9]
        ntaps = taps[0] * taps[1] * taps[2]
        if ntaps == 0:
            continue
        counts = [max(0, -(-(o - r) // s)) for o, r, s in zip(out_shape, res, stride)]
        block = packed[wofs:wofs + groups * cin_g * ntaps * c_out_g]
        block = block.view((groups, cin_g) + tuple(taps) + (c_out_g,))
        y[:, :, res[0]::stride[0], res[1]::stride[1], res[2]::stride[2]] += _correlate(
            x, block, taps, first, pdil, counts)
    return y


def _grad_input_from_blocks(gy, blocks, gi_table, groups, in_channels, stride, pdil, in_shape):
    """What the one-launch input-gradient kernels compute from the concatenated blocks and
    the grad-input table (grad_x voxel i reads phase index i + first + t * pdil)."""
    n, c_out = gy.shape[:2]
    cout_g, cin_g = c_out // groups, in_channels // groups
    gx = gy.new_zeros((n, in_channels) + tuple(in_shape))
    for row in gi_table.tolist():
        res, taps, first, wofs = row[0:3], row[3:6], row[6:9], row[9]
        ntaps = taps[0] * taps[1] * taps[2]
        block = blocks[wofs:wofs + groups * cout_g * ntaps * cin_g]
        block = block.view((groups, cout_g) + tuple(taps) + (cin_g,))
        phase = gy[:, :, res[0]::stride[0], res[1]::stride[1], res[2]::stride[2]]
        gx += _correlate(phase, block, taps, first, pdil, in_shape)
    return gx


def _case(geometry, seed=0):
    shape, groups, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    x = torch.randn((2, shape[0], 4, 3, 5), generator=gen, dtype=torch.float64)
    return w, x, dict(stride=stride, padding=padding, groups=groups, dilation=dilation)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_index_maps_are_permutations(geometry):
    shape, groups, stride, padding, dilation = geometry
    numel = torch.Size(shape).numel()
    for cg in (0, 4, 8):
        t = cuda.host_tables(shape, groups, stride, padding, dilation, cg)
        assert t.index.dtype == torch.int32 and t.gi_index.dtype == torch.int32
        assert sorted(t.index.tolist()) == list(range(numel))
        assert sorted(t.gi_index.tolist()) == list(range(numel))
        if cg:
            index_mma = cuda.forward_mma_index(shape, groups, stride, padding, dilation, cg)
            assert index_mma.dtype == torch.int32
            real = index_mma[index_mma >= 0]
            assert sorted(real.tolist()) == list(range(numel))  # the rest is zero padding
            assert index_mma.numel() % cg == 0
        else:
            assert t.mma_taps is None


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_packed_layout_computes_the_forward(geometry):
    w, x, kw = _case(geometry)
    shape, groups, stride, padding, dilation = geometry
    t = cuda.host_tables(shape, groups, stride, padding, dilation, 0)
    expected = F.conv_transpose3d(x, w, **kw)
    got = _forward_from_packed(x, _gather(w, t.index), t.table, groups, shape[1], stride,
                               t.phase_dilation, expected.shape[2:])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cg", [4, 8])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_tensor_core_layout_holds_the_packed_blocks(geometry, cg):
    """[groups][taps][G][C_out/g][CG] per phase: the same weights as the packed block
    [groups][C_in/g][taps][C_out/g], zero-padded to whole channel groups."""
    w, _, _ = _case(geometry)
    shape, groups, stride, padding, dilation = geometry
    t = cuda.host_tables(shape, groups, stride, padding, dilation, cg)
    packed = _gather(w, t.index)
    mma = _gather(w, cuda.forward_mma_index(shape, groups, stride, padding, dilation, cg))
    cin_g, cout_g = shape[0] // groups, shape[1]
    ngrp = -(-cin_g // cg)
    for row in t.table.tolist():
        ntaps = row[3] * row[4] * row[5]
        if ntaps == 0:
            continue
        block = packed[row[9]:row[9] + groups * cin_g * ntaps * cout_g]
        block = block.view(groups, cin_g, ntaps, cout_g)
        m = mma[row[10]:row[10] + groups * ntaps * ngrp * cout_g * cg]
        m = m.view(groups, ntaps, ngrp, cout_g, cg).permute(0, 2, 4, 1, 3)
        m = m.reshape(groups, ngrp * cg, ntaps, cout_g)
        assert torch.equal(m[:, :cin_g], block)
        assert not m[:, cin_g:].any()


@pytest.mark.parametrize("cg", [4, 8])
@pytest.mark.parametrize("geometry", GEOMETRIES + [
    ((16, 24, 4, 4, 4), 1, (2, 2, 2), (1, 1, 1), (1, 1, 1)),   # shape 5's layer, narrowed
    ((20, 3, 3, 2, 5), 2, (2, 1, 3), (2, 0, 1), (1, 2, 1))])   # C_in/g 10: a padded group
def test_tensor_core_layout_from_its_tap_table(geometry, cg):
    """``mma_taps`` (the structured pack's table, csrc/phase_conv_pack.cu): element c of
    channel group q, column co, group g of kernel tap k lies at
    ``base[k] + g * step[k] + (q * C_out/g + co) * CG + c``, holding the weight's
    ``(g * C_in/g + q * CG + c, co, k)`` or zero past C_in/g: exactly the layout's index map
    (forward_mma_index)."""
    shape, groups, stride, padding, dilation = geometry
    t = cuda.host_tables(shape, groups, stride, padding, dilation, cg)
    cin_g, cout_g, ksize = shape[0] // groups, shape[1], shape[2] * shape[3] * shape[4]
    ngrp = -(-cin_g // cg)
    assert t.mma_taps.shape == (ksize, 2) and t.mma_taps.dtype == torch.int64
    g, q, co, k, c = torch.meshgrid(*(torch.arange(n) for n in (groups, ngrp, cout_g, ksize, cg)),
                                    indexing="ij")
    pos = t.mma_taps[k, 0] + g * t.mma_taps[k, 1] + (q * cout_g + co) * cg + c
    ci = q * cg + c
    src = ((g * cin_g + ci) * cout_g + co) * ksize + k
    index_mma = cuda.forward_mma_index(shape, groups, stride, padding, dilation, cg)
    rebuilt = torch.full((index_mma.numel(),), -2, dtype=torch.int64)
    rebuilt[pos.reshape(-1)] = torch.where(ci < cin_g, src, torch.full_like(src, -1)).reshape(-1)
    assert torch.equal(rebuilt, index_mma.long())  # every position written, as the map says
    assert cuda.host_tables(shape, groups, stride, padding, dilation, 0).mma_taps is None


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_grad_input_blocks_compute_the_input_gradient(geometry):
    w, x, kw = _case(geometry)
    shape, groups, stride, padding, dilation = geometry
    t = cuda.host_tables(shape, groups, stride, padding, dilation, 0)
    x = x.requires_grad_()
    out = F.conv_transpose3d(x, w, **kw)
    gy = torch.randn_like(out)
    expected, = torch.autograd.grad(out, x, gy)
    got = _grad_input_from_blocks(gy, _gather(w, t.gi_index), t.gi_table, groups, shape[0],
                                  stride, t.phase_dilation, x.shape[2:])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _strided_offsets(t: torch.Tensor) -> torch.Tensor:
    """Per logical (C-order) element, its storage offset: phaseconv_strided_offset."""
    grids = torch.meshgrid(*(torch.arange(n) for n in t.shape), indexing="ij")
    return sum(g * s for g, s in zip(grids, t.stride())).reshape(-1)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_weight_gradient_scatter_restores_the_weight_layout(geometry, fmt):
    """The reduction writes packed element i to grad_w[index[i]] through grad_w's strides:
    scattering the packed weight back gives the weight, in either memory format."""
    w, _, _ = _case(geometry)
    shape, groups, stride, padding, dilation = geometry
    t = cuda.host_tables(shape, groups, stride, padding, dilation, 0)
    packed = _gather(w, t.index)
    out = torch.empty(shape, dtype=w.dtype, memory_format=fmt)
    storage = torch.full((out.numel(),), float("nan"), dtype=w.dtype)
    storage[_strided_offsets(out)[t.index.long()]] = packed
    out = torch.as_strided(storage, out.shape, out.stride())
    assert torch.equal(out, w)
