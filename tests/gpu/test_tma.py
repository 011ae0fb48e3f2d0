"""The TMA unit's boxes of a channels-last input, as a warpgroup loader would hand them to its
wgmma descriptors (csrc/phase_conv_tma.cuh; sm_90 and CUDA 12 or newer)."""
import pytest
import torch

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _engine():
    from phaseconv.engines import cuda
    return cuda.load()


def _unswizzle(raw: torch.Tensor, rows: int) -> torch.Tensor:
    """128-byte rows stored in the 128-byte swizzle (16-byte chunk j of row r at j ^ (r % 8))
    back in order: (rows, 128) bytes."""
    stored = raw.view(rows, 8, 16)
    chunk = torch.arange(8)[None, :] ^ (torch.arange(rows)[:, None] % 8)
    return torch.gather(stored, 1, chunk[:, :, None].expand(rows, 8, 16)).reshape(rows, 128)


def _box(xl: torch.Tensor, at, box) -> torch.Tensor:
    """The box {C, W, H, D, 1} of the (N, D, H, W, C) tensor xl at (c, w, h, d, n), zero
    outside it, as (D, H, W, C)."""
    c, w, h, d, n = at
    bc, bw, bh, bd = box
    out = torch.zeros((bd, bh, bw, bc), dtype=xl.dtype)
    for dd in range(bd):
        for hh in range(bh):
            for ww in range(bw):
                z, y, x = d + dd, h + hh, w + ww
                if (0 <= n < xl.shape[0] and 0 <= z < xl.shape[1] and 0 <= y < xl.shape[2]
                        and 0 <= x < xl.shape[3]):
                    lo, hi = max(c, 0), min(c + bc, xl.shape[4])
                    if lo < hi:
                        out[dd, hh, ww, lo - c:hi - c] = xl[n, z, y, x, lo:hi]
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tma_box_lands_zero_filled_and_swizzled(dtype):
    """Boxes inside the input, across each edge (negative and past-the-end coordinates, which
    are a phase's zero padding), wholly outside, and at the second 64-channel block: each
    lands as 128-byte voxel rows in the 128-byte swizzle, the bits of the input where the
    box meets it and zeros elsewhere."""
    if torch.cuda.get_device_capability()[0] < 9:
        with pytest.raises(RuntimeError, match="needs an sm_90 GPU"):
            x = torch.zeros((1, 64, 2, 2, 2), device="cuda", dtype=dtype)
            _engine().tma_box_copy(x.contiguous(memory_format=torch.channels_last_3d),
                                   torch.zeros((1, 5), dtype=torch.int32, device="cuda"),
                                   [64, 2, 2, 2])
        return
    gen = torch.Generator().manual_seed(7)
    x = torch.randn((2, 128, 5, 6, 9), generator=gen).to(dtype)
    xl = x.permute(0, 2, 3, 4, 1).contiguous()  # (N, D, H, W, C)
    xd = x.to("cuda").contiguous(memory_format=torch.channels_last_3d)
    box = (64, 8, 4, 2)  # 64 voxel rows of 128 bytes
    coords = [(0, 0, 0, 0, 0), (64, -3, -2, -1, 1), (0, 5, 4, 4, 0), (64, 7, 5, 3, 1),
              (0, -8, -4, -2, 0), (0, 1, 1, 1, 2)]
    got = _engine().tma_box_copy(xd, torch.tensor(coords, dtype=torch.int32, device="cuda"),
                                 list(box)).cpu()
    rows = box[1] * box[2] * box[3]
    assert got.shape == (len(coords), rows * 128)
    for i, at in enumerate(coords):
        want = _box(xl, at, box).reshape(rows, 64).view(torch.uint8).reshape(rows, 128)
        assert torch.equal(_unswizzle(got[i], rows), want), at
    assert got[4].eq(0).all() and got[5].eq(0).all()  # wholly outside (n = 2: past N too)
