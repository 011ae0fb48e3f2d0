"""A reduced GPU workload for compute-sanitizer (memcheck, racecheck): every kernel path of
the CUDA engine on a few small, awkward configurations, checked against torch.

    compute-sanitizer --tool memcheck python tests/gpu_sanitize.py
"""
import sys

import torch
import torch.nn.functional as F

import phaseconv
from phaseconv.engines import cuda
from phaseconv.geometry import phase_plan
from phaseconv.packing import pack_conv3d_phases

# (N, C_in, C_out, groups, in DHW, kernel, stride, padding, output_padding, dilation)
CASES = [
    (2, 8, 8, 1, (3, 4, 5), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1)),
    (1, 8, 16, 2, (2, 3, 4), (2, 3, 4), (3, 2, 1), (0, 1, 2), (2, 1, 0), (1, 2, 1)),
    (2, 4, 4, 4, (3, 3, 3), (1, 2, 3), (4, 3, 2), (0, 0, 1), (3, 2, 1), (1, 1, 1)),
    (1, 16, 8, 1, (2, 2, 3), (3, 3, 3), (2, 2, 2), (4, 4, 4), (1, 1, 1), (3, 3, 3)),
    (3, 12, 12, 3, (1, 2, 1), (4, 1, 2), (2, 3, 2), (1, 0, 0), (0, 2, 1), (2, 1, 3)),
    (2, 48, 40, 2, (3, 5, 4), (3, 4, 2), (2, 3, 1), (1, 2, 0), (1, 2, 0), (1, 2, 1)),
    (2, 40, 36, 1, (3, 4, 5), (3, 5, 4), (2, 2, 2), (1, 2, 1), (1, 1, 1), (1, 1, 1)),
]
# 0 auto, 1 SIMT tiled, 2 naive, 3 tensor cores (where the dtype allows), 4 per-phase tensor
# cores, 5 implicit GEMM (16-bit, C_in/groups % 8 == 0), 16 + 3: tensor cores, contiguous
# input, 32 + 3: the all-phase kernel without staged output, 64 + 5: implicit GEMM, one phase
# per block; -3: path 3, channels-last input
PATHS = (0, 1, 2, 3, 4, 5, 64 + 5, 16 + 3, 32 + 3, -3)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def main() -> int:
    failures = 0
    for n, ci, co, g, size, k, s, p, op, d in CASES:
        plan = phase_plan(size, k, s, p, dilation=d, output_padding=op)
        for dtype in DTYPES:
            x = torch.randn((n, ci) + size, device="cuda").to(dtype)
            w = torch.randn((ci, co // g) + k, device="cuda").to(dtype)
            b = torch.randn(co, device="cuda").to(dtype)
            ref = F.conv_transpose3d(x.double(), w.double(), b.double(), s, p, op, g, d)
            packed = cuda.pack(w, g, s, p, d)
            for path in PATHS:
                xin = x.contiguous(memory_format=torch.channels_last_3d) if path < 0 else x
                y = cuda.forward(xin, packed, b, plan, g, co, force_path=abs(path))
                err = (y.double() - ref).abs().max().item() / max(1.0, ref.abs().max().item())
                tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 2e-5
                if not err <= tol:
                    failures += 1
                    print("FAIL", (n, ci, co, g, size, k, s, p, op, d), dtype, path, err)
        # the CUDA backward (grad_input: one launch where the rule allows, else per phase on
        # the forward kernels; grad_weight: tensor cores where the rule allows, else SIMT),
        # then both alternatives forced
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
            packed = cuda.pack(w.detach(), g, s, p, d)
            phases = pack_conv3d_phases(w.detach(), g, s, p, d)
            gi = cuda.pack_grad_input(phases, g, k, s, p, d)
            forced = [cuda.grad_input(gy, phases, gi, plan, g, ci, one_launch=False)]
            if cuda.describe_grad_input(gy, gi, plan, g, ci).startswith("mma"):
                forced.append(cuda.grad_input(gy, phases, gi, plan, g, ci, one_launch=True))
            forced.append(cuda.grad_weight(x.detach(), gy, packed, tuple(w.shape), "simt"))
            if min(ci, co) // g >= 16:
                forced.append(cuda.grad_weight(x.detach(), gy, packed, tuple(w.shape),
                                               "tensor-cores"))
            for a in forced:
                e = rx if a.shape == rx.shape else rw
                err = (a.double() - e).abs().max().item() / max(1.0, e.abs().max().item())
                tol = 3e-2 if dtype == torch.bfloat16 else 2e-5
                if not err <= tol:
                    failures += 1
                    print("FAIL forced backward", (n, ci, co, g, size, k, s, p, op, d), dtype,
                          a.shape, err)
    torch.cuda.synchronize()
    print(f"gpu_sanitize: {len(CASES) * (len(DTYPES) * len(PATHS) + 3)} runs and the forced "
          f"backward kernels, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
