"""A reduced GPU workload for compute-sanitizer (memcheck, racecheck): every kernel path of
the CUDA engine on a few small, awkward configurations, checked against torch.

    compute-sanitizer --tool memcheck python tests/gpu/gpu_sanitize.py [--part K/N]

``--part K/N`` runs every N-th case from the K-th (1-based), the channels-last results with
part 1 only: racecheck of the whole workload takes minutes, so a call can take one part.
"""
import sys

import torch
import torch.nn.functional as F

import phaseconv
from phaseconv.checks import check_conv_transpose3d
from phaseconv.engines import cuda
from phaseconv.engines.cuda import ForwardKernel

# (N, C_in, C_out, groups, in DHW, kernel, stride, padding, output_padding, dilation)
CASES = [
    (2, 8, 8, 1, (3, 4, 5), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1)),
    (1, 8, 16, 2, (2, 3, 4), (2, 3, 4), (3, 2, 1), (0, 1, 2), (2, 1, 0), (1, 2, 1)),
    (2, 4, 4, 4, (3, 3, 3), (1, 2, 3), (4, 3, 2), (0, 0, 1), (3, 2, 1), (1, 1, 1)),
    (1, 16, 8, 1, (2, 2, 3), (3, 3, 3), (2, 2, 2), (4, 4, 4), (1, 1, 1), (3, 3, 3)),
    (3, 12, 12, 3, (1, 2, 1), (4, 1, 2), (2, 3, 2), (1, 0, 0), (0, 2, 1), (2, 1, 3)),
    (2, 48, 40, 2, (3, 5, 4), (3, 4, 2), (2, 3, 1), (1, 2, 0), (1, 2, 0), (1, 2, 1)),
    (2, 40, 36, 1, (3, 4, 5), (3, 5, 4), (2, 2, 2), (1, 2, 1), (1, 1, 1), (1, 1, 1)),
    (1, 3, 3, 3, (2, 3, 20), (3, 3, 4), (2, 1, 2), (1, 0, 1), (1, 0, 1), (1, 2, 1)),
    (2, 40, 24, 1, (3, 4, 5), (3, 4, 3), (2, 3, 2), (1, 1, 1), (1, 2, 1), (1, 1, 2)),
    (1, 136, 72, 1, (3, 4, 3), (3, 3, 2), (2, 2, 2), (1, 1, 0), (1, 0, 1), (1, 1, 1)),
    # whole and partial all-phase tiles (paired W stores and the per-element stores)
    (1, 32, 32, 4, (5, 16, 20), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1)),
    # C_in/groups 64 and C_out 64: the implicit GEMM's warpgroup tile (sm_90a builds), forward
    # (forced below) and the input gradient (the rule: 1728 reduction terms)
    (1, 64, 64, 1, (3, 4, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    # the warpgroup weight gradient's 128 x 128 and 64 x 32 tiles (sm_90a builds); the TMA
    # form's one split storing its sums, and (the last two) 2 and 4 splits added in a cluster
    (1, 128, 128, 1, (2, 3, 3), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1)),
    (1, 64, 32, 1, (3, 3, 4), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    (1, 128, 128, 1, (8, 8, 8), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1)),
    (2, 128, 64, 1, (8, 8, 8), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1)),
    # 64 taps of 8 -> 16 channels: the narrow weight gradient's eight warp groups
    (1, 8, 16, 1, (2, 3, 3), (4, 4, 4), (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1)),
    # 3 output channels: the narrow weight gradient's zero-padded octet, the all-phase forward's
    # and the per-phase input gradient's zero-padded groups
    (2, 16, 3, 1, (3, 4, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    # 32 -> 2: float32's all-phase halo staged once and split at each fragment load (two
    # copies do not fit)
    (1, 32, 2, 1, (3, 4, 5), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
]
# every forward kernel by name (csrc/phase_conv_plan.h), and its variants; channels-last: the
# input comes channels-last.  A kernel that refuses a case is skipped (tests/plan/test_plan.py).
KERNELS = [(k, False) for k in ("auto", "tiled", "naive", "tensor-cores", "mma", "gemm",
                                 "depthwise")] + [
    (ForwardKernel("gemm", gemm_one_phase=True), False),
    (ForwardKernel("gemm", gemm_tile=4), False),
    (ForwardKernel("gemm", gemm_tile=4, gemm_one_phase=True), True),
    (ForwardKernel("gemm", gemm_tile=5), True),
    (ForwardKernel("gemm", gemm_tile=8), True),
    (ForwardKernel("gemm", gemm_tile=9), True),
    (ForwardKernel("gemm", gemm_tile=10), True),
    (ForwardKernel("gemm", gemm_tile=11), True),
    (ForwardKernel("tensor-cores", contiguous_input=True), False),
    (ForwardKernel("tensor-cores", direct_stores=True), False),
    (ForwardKernel("tensor-cores", allph_tile=4), False),
    (ForwardKernel("tensor-cores", allph_tile=4), True),
    ("tensor-cores", True),
]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _nonfinite(n, ci, co, g, size, k, s, p, op, d) -> int:
    """The fix-up path (csrc/phase_conv_exact.cuh): an Inf in the weight and a NaN in the
    input; the non-finite pattern must be the float64 reference's (torch's CPU forward and
    the real pairs of the gradients)."""
    failures = 0
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn((n, ci) + size, dtype=torch.float64)
        w = torch.randn((ci, co // g) + k, dtype=torch.float64)
        w.view(-1)[0] = float("inf")
        x.view(-1)[-1] = float("nan")
        x, w = (t.to(dtype).double() for t in (x, w))
        ref = F.conv_transpose3d(x, w, None, s, p, op, g, d)
        xc, wc = (t.to("cuda", dtype).requires_grad_() for t in (x, w))
        out = phaseconv.conv_transpose3d(xc, wc, stride=s, padding=p, output_padding=op,
                                         groups=g, dilation=d)
        torch.autograd.grad(out, (xc, wc), torch.ones_like(out))  # runs the gradients' paths
        got = out.detach().double().cpu()
        if not (torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.isinf(), ref.isinf())):
            failures += 1
            print("FAIL non-finite", (n, ci, co, g, size, k, s, p, op, d), dtype)
    return failures


def _channels_last_results() -> int:
    """Channels-last results: written by the implicit GEMM (the k == s layer: its shared-A
    tile) and by the all-phase kernel (8 input channels: one output channel to 24, pairs of
    channels as vectors where the count is even)."""
    failures = 0
    cl = torch.channels_last_3d
    for co, dtype in ((1, torch.float32), (2, torch.bfloat16), (4, torch.float32),
                      (8, torch.bfloat16), (16, torch.float32), (24, torch.bfloat16),
                      (48, torch.bfloat16), (72, torch.bfloat16), (64, torch.bfloat16)):
        ci, k, p, op = ((32, 3, 1, 1) if co == 48 else (64, 2, 0, 0) if co in (72, 64)
                        else (8, 3, 1, 1))
        # 64: 8192 rows, several (phase, column) chunks a block of the shared-A tile
        size = (16, 16, 16) if co == 64 else (3, 4, 5)
        x = torch.randn((2, ci) + size, device="cuda").to(dtype).contiguous(memory_format=cl)
        w = torch.randn(ci, co, k, k, k, device="cuda").to(dtype)
        y = phaseconv.conv_transpose3d(x, w, stride=2, padding=p, output_padding=op)
        ref = F.conv_transpose3d(x.double(), w.double(), stride=2, padding=p, output_padding=op)
        err = (y.double() - ref).abs().max().item() / max(1.0, ref.abs().max().item())
        tol = 3e-2 if dtype == torch.bfloat16 else 2e-5
        if not (err <= tol and y.is_contiguous(memory_format=cl)):
            failures += 1
            print("FAIL channels-last result", co, dtype, err)
    # a channels-last input read through the all-phase kernel's one halo buffer (eight channel
    # groups a position: two buffers do not fit), refilled for each of a block's tiles: the
    # bits of the contiguous input's path
    x = torch.randn((2, 64, 20, 32, 32), device="cuda").to(torch.bfloat16)
    w = (torch.randn(64, 16, 3, 3, 3, device="cuda") / 40).to(torch.bfloat16)
    kw = dict(stride=2, padding=1, output_padding=1)
    y = phaseconv.conv_transpose3d(x.contiguous(memory_format=cl), w, **kw)
    if not torch.equal(y.contiguous(), phaseconv.conv_transpose3d(x, w, **kw)):
        failures += 1
        print("FAIL channels-last input in one halo buffer")
    return failures


def _part(argv) -> tuple:
    """(K, N, the cases of part K) of ``--part K/N``; (1, 1, every case) without it."""
    if not argv:
        return 1, 1, CASES
    if len(argv) != 2 or argv[0] != "--part":
        raise SystemExit("usage: gpu_sanitize.py [--part K/N]")
    k, n = (int(v) for v in argv[1].split("/"))
    if not 1 <= k <= n:
        raise SystemExit(f"--part K/N needs 1 <= K <= N, got {argv[1]}")
    return k, n, CASES[k - 1::n]


def main(argv=()) -> int:
    part, parts, cases = _part(list(argv))
    failures = runs = refused = 0
    warpgroups = cuda.warpgroup_kernels()
    for n, ci, co, g, size, k, s, p, op, d in cases:
        for dtype in DTYPES:
            x = torch.randn((n, ci) + size, device="cuda").to(dtype)
            w = torch.randn((ci, co // g) + k, device="cuda").to(dtype)
            b = torch.randn(co, device="cuda").to(dtype)
            ref = F.conv_transpose3d(x.double(), w.double(), b.double(), s, p, op, g, d)
            args = check_conv_transpose3d(x, w, b, s, p, op, g, d)
            w_cl = w.contiguous(memory_format=torch.channels_last_3d)
            for kernel, channels_last in KERNELS:
                xin = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
                # the TMA tiles also read a channels-last weight in place
                tma = isinstance(kernel, ForwardKernel) and kernel.gemm_tile >= 8
                for win in (w, w_cl) if tma and dtype != torch.float32 else (w,):
                    try:
                        y = cuda.forward(xin, win, b, args, kernel=kernel)
                    except RuntimeError as exc:
                        if "was forced and" not in str(exc):
                            raise
                        refused += 1
                        continue
                    runs += 1
                    err = (y.double() - ref).abs().max().item() / max(1.0,
                                                                      ref.abs().max().item())
                    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 2e-5
                    if not err <= tol:
                        failures += 1
                        print("FAIL", (n, ci, co, g, size, k, s, p, op, d), dtype, kernel,
                              "weight", "channels-last" if win is w_cl else "", err)
        # the CUDA backward by the rule, then every kernel forced: grad_input on the
        # tensor-core kernel (where it applies) and the naive kernel, grad_weight on tensor
        # cores (where they apply) and the SIMT kernel, both depthwise kernels on depthwise
        # layers, both channels-last kernels on wide 16-bit layers
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.randn((n, ci) + size, device="cuda").to(dtype).requires_grad_()
            w = torch.randn((ci, co // g) + k, device="cuda").to(dtype).requires_grad_()
            out = phaseconv.conv_transpose3d(x, w, stride=s, padding=p, output_padding=op,
                                             groups=g, dilation=d)
            gx, gw = torch.autograd.grad(out, (x, w), torch.ones_like(out))
            x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
            ref = F.conv_transpose3d(x64, w64, None, s, p, op, g, d)
            rx, rw = torch.autograd.grad(ref, (x64, w64), torch.ones_like(ref))
            for a, e in ((gx, rx), (gw, rw)):
                err = (a.double() - e).abs().max().item() / max(1.0, e.abs().max().item())
                tol = 3e-2 if dtype == torch.bfloat16 else 2e-5
                if not err <= tol:
                    failures += 1
                    print("FAIL backward", (n, ci, co, g, size, k, s, p, op, d), dtype, err)
            if dtype == torch.float64:
                continue
            gy = torch.ones_like(out).detach()
            args = check_conv_transpose3d(x, w, None, s, p, op, g, d)
            xd, wd = x.detach(), w.detach()
            forced = [cuda.backward(gy, xd, wd, args, grad_input_kernel="naive",
                                    grad_weight_kernel="simt")]
            if min(ci, co) // g >= 4:
                forced.append(cuda.backward(gy, xd, wd, args, need_weight=False,
                                            grad_input_kernel="tensor-cores"))
            if ci == co == g:
                forced.append(cuda.backward(gy, xd, wd, args, grad_input_kernel="depthwise",
                                            grad_weight_kernel="depthwise"))
            if min(ci, co) // g >= 16:
                forced.append(cuda.backward(gy, xd, wd, args, need_input=False,
                                            grad_weight_kernel="tensor-cores"))
            # a channels_last_3d weight: its gradient's sums stored in that layout (the
            # channels-last reduction where the kernel splits)
            forced.append(cuda.backward(gy, xd, wd.contiguous(memory_format=torch.channels_last_3d),
                                        args, need_input=False))
            if dtype == torch.bfloat16 and ci // g >= 32 and (co // g) % 8 == 0 and co // g >= 16:
                # the channels-last kernels, operands copied and read in place
                cl = torch.channels_last_3d
                for gy_, x_ in ((gy, xd), (gy.contiguous(memory_format=cl),
                                           xd.contiguous(memory_format=cl))):
                    forced.append(cuda.backward(gy_, x_, wd, args,
                                                grad_input_kernel="implicit-gemm",
                                                grad_weight_kernel="tensor-cores-cl"))
            if (dtype == torch.bfloat16 and warpgroups and ci // g >= 64 and co // g >= 32
                    and (ci // g) % 8 == 0 and (co // g) % 8 == 0):
                # the weight gradient's warpgroup form and its TMA form, named
                for kernel in ("tensor-cores-wgmma", "tensor-cores-tma"):
                    forced.append(cuda.backward(gy, xd, wd, args, need_input=False,
                                                grad_weight_kernel=kernel))
            if dtype == torch.bfloat16 and warpgroups and (co // g) % 32 == 0:
                # the input gradient's TMA tiles (grad_y's boxes at the stride), named: 64- or
                # 32-channel k steps (256 rows: 64 only), and their persistent forms (10, 11)
                for tile in (8, 9, 10, 11) if ci // g > 64 and (co // g) % 64 == 0 else (8, 10):
                    forced.append(cuda.backward(gy, xd, wd, args, need_weight=False,
                                                grad_input_kernel="implicit-gemm",
                                                grad_input_tile=tile))
            if (ci // g) % 8 == 0 and ((co // g) % 8 == 0 and min(ci, co) // g == 8
                                       or co // g < 8):
                # the narrow weight gradient, operands copied and read in place
                cl = torch.channels_last_3d
                for gy_, x_ in ((gy, xd), (gy.contiguous(memory_format=cl),
                                           xd.contiguous(memory_format=cl))):
                    forced.append(cuda.backward(gy_, x_, wd, args, need_input=False,
                                                grad_weight_kernel="tensor-cores-narrow"))
            if dtype == torch.float32 and (co // g) % 8 == 0 and co // g >= 16:
                # float32's input gradient on the implicit GEMM (3xTF32, only by name)
                for gy_ in (gy, gy.contiguous(memory_format=torch.channels_last_3d)):
                    forced.append(cuda.backward(gy_, xd, wd, args, need_weight=False,
                                                grad_input_kernel="implicit-gemm"))
            if (co // g in (8, 16) or co // g < 8) and (ci // g) % 8 == 0:
                # the narrow input gradient, grad_y copied and read in place
                for gy_ in (gy, gy.contiguous(memory_format=torch.channels_last_3d)):
                    forced.append(cuda.backward(gy_, xd, wd, args, need_weight=False,
                                                grad_input_kernel="tensor-cores-narrow"))
            forced = [t for pair in forced for t in pair if t is not None]
            for a in forced:
                e = rx if a.shape == rx.shape else rw
                err = (a.double() - e).abs().max().item() / max(1.0, e.abs().max().item())
                tol = 3e-2 if dtype == torch.bfloat16 else 2e-5
                if not err <= tol:
                    failures += 1
                    print("FAIL forced backward", (n, ci, co, g, size, k, s, p, op, d), dtype,
                          a.shape, err)
        failures += _nonfinite(n, ci, co, g, size, k, s, p, op, d)
    if part == 1:
        failures += _channels_last_results()
    torch.cuda.synchronize()
    print(f"gpu_sanitize (part {part}/{parts}): {runs} forward runs ({refused} forced kernels "
          f"refused a case), {len(cases) * 5} backward and non-finite runs and the forced "
          f"backward kernels, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
