"""Host time of one call along each path a call can take, on the GPU: torch's transposed
convolution against phaseconv's custom op (the path of compiled graphs), the Python beneath it
(``ops.forward_impl``) and the C++ plan alone; the same for the backward (both gradients).

    python benchmarks/host_paths.py [--dtype bf16] [--shapes client|sweep]

Each figure is the median of --calls calls, each timed alone with the GPU idle at its start
(``torch.cuda.synchronize`` before it), in µs.  Layers: the MONAI UNet's up-convolutions
(``kernel_dev.CLIENT_SHAPES``, NCDHW input and contiguous weight, as autocast hands them) or
the sweep's shapes.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel_dev import CLIENT_SHAPES, DTYPES, SHAPES, t3  # noqa: E402

from phaseconv import ops  # noqa: E402
from phaseconv.checks import check_conv_transpose3d  # noqa: E402
from phaseconv.engines import cuda  # noqa: E402


def host_us(fn, calls: int) -> float:
    """Median host µs of ``fn`` alone, the GPU idle at each call's start."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def layer_row(shape, dtype: torch.dtype, calls: int) -> str:
    """One layer's row: the host µs of each path."""
    name, n, cin, cout, g, dhw, k, s, p, op = shape
    k, s, p, op = t3(k), t3(s), t3(p), t3(op)
    x = torch.randn((n, cin) + tuple(dhw), device="cuda", dtype=dtype)
    w = torch.randn((cin, cout // g) + k, device="cuda", dtype=dtype) * 0.1
    conf = (list(s), list(p), list(op), g, [1, 1, 1])
    gy = torch.randn_like(F.conv_transpose3d(x, w, None, s, p, op, g))
    args = check_conv_transpose3d(x, w, None, s, p, op, g, (1, 1, 1))
    _, forward = cuda.forward_plan(args, n, dtype, x.device)
    _, backward = cuda.backward_plan(args, n, dtype, x.device)
    mask = [True, True, False]
    paths = (
        lambda: F.conv_transpose3d(x, w, None, s, p, op, g),
        lambda: torch.ops.phaseconv.conv_transpose3d(x, w, None, *conf, ""),
        lambda: ops.forward_impl(x, w, None, *conf, ""),
        lambda: forward(x, w, None),
        lambda: torch.ops.aten.convolution_backward(gy, x, w, None, list(s), list(p),
                                                    [1, 1, 1], True, list(op), g, mask),
        lambda: torch.ops.phaseconv.conv_transpose3d_backward(gy, x, w, *conf, mask, ""),
        lambda: backward(gy, x, w, True, True, False),
    )
    return f"| {name} | " + " | ".join(f"{host_us(fn, calls):.1f}" for fn in paths) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--shapes", default="client", choices=("client", "sweep"))
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    columns = ("torch forward", "op forward", "forward_impl", "C++ forward", "torch backward",
               "op backward", "C++ backward")
    print("| layer | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for shape in CLIENT_SHAPES if args.shapes == "client" else SHAPES:
        print(layer_row(shape, DTYPES[args.dtype], args.calls), flush=True)


if __name__ == "__main__":
    main()
