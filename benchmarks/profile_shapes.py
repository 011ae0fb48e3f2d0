"""A few forward calls of kernel_dev's shapes, for Nsight Compute:

    ncu -k regex:gemm_cl python benchmarks/profile_shapes.py --shapes 2,4 --dtype bf16
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_dev import DTYPES, SHAPES, t3  # noqa: E402

from phaseconv.checks import check_conv_transpose3d  # noqa: E402
from phaseconv.engines import cuda  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--shapes", default="0")
ap.add_argument("--dtype", default="bf16")
ap.add_argument("--kernel", default="auto", choices=sorted(cuda.FORWARD_KERNELS),
                help="a forward kernel forced by name (cuda.FORWARD_KERNELS)")
ap.add_argument("--channels-last", action="store_true", help="pass a channels_last_3d input")
ap.add_argument("--calls", type=int, default=2)
args = ap.parse_args()
for i in (int(v) for v in args.shapes.split(",")):
    name, n, cin, cout, g, dhw, k, s, p, op = SHAPES[i]
    k, s, p, op = t3(k), t3(s), t3(p), t3(op)
    dtype = DTYPES[args.dtype]
    x = torch.rand((n, cin) + tuple(dhw), device="cuda").to(dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    w = (torch.rand((cin, cout // g) + k, device="cuda") * 0.1).to(dtype)
    conv = check_conv_transpose3d(x, w, None, s, p, op, g, (1, 1, 1))
    print(name, cuda.describe(conv, n, dtype, x.device, args.channels_last, args.kernel),
          flush=True)
    for _ in range(args.calls):
        cuda.forward(x, w, None, conv, kernel=args.kernel)
    torch.cuda.synchronize()
