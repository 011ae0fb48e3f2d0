"""A few forward (or backward) calls of kernel_dev's shapes, for Nsight Compute:

    ncu -k regex:gemm_cl python benchmarks/profile_shapes.py --shapes 2,4 --dtype bf16
    ncu -k regex:gw_ python benchmarks/profile_shapes.py --shapes 3 --backward weight

or with --kernels, the CUDA time of every kernel a call launches (torch.profiler, the mean of
--calls calls after one warm-up), what a backward's copies, gathers and reductions cost
beside its main kernel.  --torch makes the same calls through torch (cuDNN), for its kernels
on the same layer, input and weight:

    python benchmarks/profile_shapes.py --shapes 3 --channels-last --weight-channels-last \
        --backward both --kernels --torch
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

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
ap.add_argument("--weight-channels-last", action="store_true",
                help="pass a channels_last_3d weight (as the bench's channels-last rows do: a "
                     "model moved to that memory format)")
ap.add_argument("--backward", choices=("weight", "input", "both"),
                help="time the backward (of the weight, the input or both) instead")
ap.add_argument("--grad-weight-kernel", default="auto")
ap.add_argument("--grad-input-kernel", default="auto")
ap.add_argument("--grad-input-tile", type=int, default=None,
                help="the input gradient's implicit-GEMM tile (its kind), named")
ap.add_argument("--kernels", action="store_true",
                help="print each launched kernel's mean CUDA time (torch.profiler)")
ap.add_argument("--calls", type=int, default=2)
ap.add_argument("--torch", action="store_true",
                help="the same calls through torch (F.conv_transpose3d and its autograd "
                     "backward: cuDNN), not phaseconv; the kernel names are ignored")
args = ap.parse_args()


def kernel_table(fn, calls):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            rows.setdefault(ev.name, []).append(ev.device_time)
    total = sum(sum(v) for v in rows.values()) / calls
    for name, times in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {sum(times) / calls:9.1f} us  x{len(times) / calls:g}  {name[:110]}")
    print(f"  {total:9.1f} us  total per call", flush=True)


for i in (int(v) for v in args.shapes.split(",")):
    name, n, cin, cout, g, dhw, k, s, p, op = SHAPES[i]
    k, s, p, op = t3(k), t3(s), t3(p), t3(op)
    dtype = DTYPES[args.dtype]
    x = torch.rand((n, cin) + tuple(dhw), device="cuda").to(dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    w = (torch.rand((cin, cout // g) + k, device="cuda") * 0.1).to(dtype)
    if args.weight_channels_last:
        w = w.contiguous(memory_format=torch.channels_last_3d)
    conv = check_conv_transpose3d(x, w, None, s, p, op, g, (1, 1, 1))
    if args.torch:
        xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
        wanted = {"weight": (wg,), "input": (xg,), "both": (xg, wg)}.get(args.backward)
        y = gy = None
        if wanted:  # the graph a backward needs (a forward alone builds none for a profile)
            y = F.conv_transpose3d(xg, wg, None, s, p, op, g)
            gy = torch.randn_like(y)
        print(name, args.dtype, "torch", "backward" if wanted else "forward", flush=True)

        def call(x=x, w=w, y=y, gy=gy, wanted=wanted, conf=(s, p, op, g)):
            if wanted:
                torch.autograd.grad(y, wanted, gy, retain_graph=True)
            else:
                F.conv_transpose3d(x, w, None, *conf)
    elif args.backward:
        # (the result's shape from the geometry: a forward here would land in a profile)
        out_size = (n, conv.out_channels) + tuple(conv.out_shape)
        gy = torch.randn(out_size, device="cuda", dtype=dtype)
        if args.channels_last:
            gy = gy.contiguous(memory_format=torch.channels_last_3d)
        print(name, args.dtype, "backward:", *cuda.describe_backward(conv, n, dtype, x.device),
              sep="\n  ", flush=True)

        def call(gy=gy, x=x, w=w, conv=conv):
            cuda.backward(gy, x, w, conv, need_input=args.backward != "weight",
                          need_weight=args.backward != "input",
                          grad_weight_kernel=args.grad_weight_kernel,
                          grad_input_kernel=args.grad_input_kernel,
                          grad_input_tile=args.grad_input_tile)
    else:
        # a channels-last input gets a channels-last result, as torch returns
        print(name, cuda.describe(conv, n, dtype, x.device, args.channels_last, args.kernel,
                                  out_channels_last=args.channels_last), flush=True)

        def call(x=x, w=w, conv=conv):
            cuda.forward(x, w, None, conv, kernel=args.kernel,
                         out_channels_last=args.channels_last)
    if args.kernels:
        kernel_table(call, args.calls)
    else:
        for _ in range(args.calls):
            call()
        torch.cuda.synchronize()
