"""Where a depthwise sweep shape's forward time goes: the kernels forced by name against
torch (cuDNN), CUDA-event GPU time, and the module's kernels under torch.profiler; with
``--ncu``, only a few forced calls, for Nsight Compute:

    python benchmarks/profile_depthwise.py [--shape 7]
    ncu -k regex:depthwise_kernel --launch-skip 1 --launch-count 1 \\
        python benchmarks/profile_depthwise.py --ncu
    ncu -k regex:dw_grad --launch-count 4 python benchmarks/profile_depthwise.py --ncu --backward
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import phaseconv  # noqa: E402
from phaseconv.bench import SWEEP, gpu_times_us  # noqa: E402
from phaseconv.checks import check_conv_transpose3d  # noqa: E402
from phaseconv.engines import cuda  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--shape", type=int, default=7, help="sweep shape number (1-based)")
ap.add_argument("--ncu", action="store_true", help="two forced calls per kernel and dtype")
ap.add_argument("--backward", action="store_true",
                help="the input and weight gradients' kernels instead of the forward's")
args = ap.parse_args()
shape = SWEEP[args.shape - 1]


def run(dtype: torch.dtype) -> None:
    theirs = torch.nn.ConvTranspose3d(**shape.layer_args(), bias=False).to("cuda", dtype)
    ours = phaseconv.ConvTranspose3d.from_torch(theirs)
    x = torch.rand(shape.input_shape(), device="cuda", dtype=dtype)
    w = theirs.weight.detach()
    conv = check_conv_transpose3d(x, w, None, shape.stride, shape.padding, shape.output_padding,
                                  shape.groups, (1, 1, 1))
    if args.backward:
        gy = torch.randn(theirs(x).shape, device="cuda", dtype=dtype)
        for gi, gw in (("depthwise", "depthwise"), ("naive", "simt")):
            if not args.ncu:
                print(dtype, cuda.describe_backward(conv, shape.batch, dtype, x.device))
            for need_input in (True, False):
                def fn(gi=gi, gw=gw, need_input=need_input):
                    return cuda.backward(gy, x, w, conv, need_input=need_input,
                                         need_weight=not need_input, grad_input_kernel=gi,
                                         grad_weight_kernel=gw)
                if args.ncu:
                    fn(), fn()
                    continue
                t = statistics.median(gpu_times_us(fn, 30, 5))
                print(f"   {gi if need_input else gw} {'input' if need_input else 'weight'} "
                      f"gradient: {t:.1f} us")
        torch.cuda.synchronize()
        return
    if args.ncu:
        for kernel in ("depthwise", "tiled"):
            for _ in range(2):
                cuda.forward(x, w, None, conv, kernel=kernel)
        torch.cuda.synchronize()
        return
    ref = theirs(x)
    for kernel in ("auto", "depthwise", "tiled"):
        print(dtype, kernel, cuda.describe(conv, shape.batch, dtype, x.device, kernel=kernel))
        y = cuda.forward(x, w, None, conv, kernel=kernel)
        err = (y.double() - ref.double()).abs().max().item()
        t = gpu_times_us(lambda k=kernel: cuda.forward(x, w, None, conv, kernel=k), 50, 5)
        print(f"   {statistics.median(t):.1f} us  max abs error {err:.2e}")
    for name, fn in (("module", lambda: ours(x)), ("cudnn", lambda: theirs(x))):
        print(f"{name} {statistics.median(gpu_times_us(fn, 20, 3)):.1f} us")
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            ours(x)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=6))


torch.manual_seed(0)
with torch.no_grad():
    for dtype in (torch.float32, torch.bfloat16):
        run(dtype)
