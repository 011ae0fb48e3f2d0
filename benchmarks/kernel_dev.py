"""Kernel development bench: build the CUDA engine, check it against torch, time it against
torch's conv_transpose3d (cuDNN), fp32 (TF32 off) and bf16.  Run on a GPU machine:

    PYTHONPATH=. python benchmarks/kernel_dev.py [--reps 50] [--shapes 0,1,...] [--dtypes fp32,bf16]
        [--backward | --packs]

Writes the table and a JSON log under $OUT when it is set.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# the checkout whose phaseconv is timed: this one, or $PHASECONV_TREE (an A/B run's base tree,
# benchmarks/device_run.sh ab)
sys.path.insert(0, os.environ.get("PHASECONV_TREE") or str(Path(__file__).resolve().parents[1]))
from phaseconv.bench import SWEEP, gpu_times_us  # noqa: E402
from phaseconv.checks import check_conv_transpose3d  # noqa: E402
from phaseconv.engines import cuda  # noqa: E402
from phaseconv.geometry import phase_plan  # noqa: E402

# (name, N, C_in, C_out, groups, DHW, kernel, stride, padding, output_padding): the sweep of
# `python -m phaseconv bench` (phaseconv/bench.py: SWEEP), one definition for every benchmark
SHAPES = [tuple(shape) for shape in SWEEP]
# --client: the up-convolutions of the MONAI UNet of the bench's client section
# (channels (16, 32, 64, 128, 256), strides 2, kernel 3, batch 2 x 96^3), deepest first
CLIENT_SHAPES = [
    ("unet-up4", 2, 384, 64, 1, (6, 6, 6), 3, 2, 1, 1),
    ("unet-up3", 2, 128, 32, 1, (12, 12, 12), 3, 2, 1, 1),
    ("unet-up2", 2, 64, 16, 1, (24, 24, 24), 3, 2, 1, 1),
    ("unet-up1", 2, 32, 2, 1, (48, 48, 48), 3, 2, 1, 1),
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def t3(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def time_fn(fn, reps, warmup=5):
    """GPU time per call in µs (median) and the fastest of the runs: bench.py's timer."""
    times = gpu_times_us(fn, reps, warmup)
    return statistics.median(times), min(times)


def bench_shape(spec, dtype, reps, check=True):
    name, n, cin, cout, g, dhw, k, s, p, op = spec
    k, s, p, op = t3(k), t3(s), t3(p), t3(op)
    torch.manual_seed(0)
    x = torch.rand((n, cin) + tuple(dhw), device="cuda").to(dtype)
    bound = 1.0 / (cin // g * k[0] * k[1] * k[2]) ** 0.5
    w = ((torch.rand((cin, cout // g) + k, device="cuda") * 2 - 1) * bound).to(dtype)
    plan = phase_plan(tuple(dhw), k, s, p, dilation=(1, 1, 1), output_padding=op)
    args = check_conv_transpose3d(x, w, None, s, p, op, g, (1, 1, 1))
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    def ours(kernel="auto", xin=x):
        return cuda.forward(xin, w, None, args, kernel=kernel)

    def describe(kernel="auto"):
        return cuda.describe(args, n, dtype, x.device, kernel=kernel)

    def theirs():
        return F.conv_transpose3d(x, w, None, s, p, op, g, 1)

    row = {"shape": name, "dtype": str(dtype).replace("torch.", "")}
    row["config"] = describe()
    y = ours()
    torch.cuda.synchronize()
    if check:
        ref = F.conv_transpose3d(x.float(), w.float(), None, s, p, op, g, 1)
        err = (y.float() - ref).abs().max().item()
        row["max_abs_err"] = err
        row["rel_err"] = err / max(ref.abs().max().item(), 1e-30)
        row["allclose_1e-5"] = bool(torch.allclose(y.float(), ref, atol=1e-5)) \
            if dtype == torch.float32 else None
        row["finite"] = bool(torch.isfinite(y).all())
        del ref
    del y
    row["ours_us"], row["ours_min_us"] = time_fn(ours, reps)
    # other kernels for comparison, by name (cuda.ForwardKernel); refused ones are left out
    K = cuda.ForwardKernel
    variants = {"ncdhw": K(contiguous_input=True), "perphase": K("mma", contiguous_input=True),
                "simt": K("tiled"), "direct": K("tensor-cores", direct_stores=True)}
    # the all-phase kernel's tiles (BN 8, 16, 64, 128 and the 8-warp BN 8), by name
    variants.update({f"allph_tile{t}": K("allphase", allph_tile=t) for t in range(5)})
    if dtype != torch.float32 and (cin // g) % 8 == 0:
        variants.update({"gemm_bn32": K("gemm", gemm_tile=0), "gemm_bn64": K("gemm", gemm_tile=1),
                         "gemm_bn128": K("gemm", gemm_tile=2), "allph_cl": K("tensor-cores"),
                         "gemm_1ph": K("gemm", gemm_one_phase=True),
                         "gemm_bn64w8": K("gemm", gemm_tile=3),
                         "gemm_wgmma": K("gemm", gemm_tile=4),
                         "gemm_wgmma_256rows": K("gemm", gemm_tile=5),
                         "gemm_tma": K("gemm", gemm_tile=8),
                         "gemm_tma256": K("gemm", gemm_tile=9),
                         "gemm_bk32": K("gemm", gemm_k32=True),
                         "gemm_bn64w8_bk32": K("gemm", gemm_tile=3, gemm_k32=True)})
    if dtype == torch.float32 and (cin // g) % 8 == 0:  # 3xTF32 on the implicit GEMM, by name
        variants.update({"gemm_bn32": K("gemm", gemm_tile=0), "gemm_bn64": K("gemm", gemm_tile=1),
                         "gemm_bn128": K("gemm", gemm_tile=2),
                         "gemm_bn64w8": K("gemm", gemm_tile=3),
                         "gemm_bk32": K("gemm", gemm_k32=True)})
    for vname, code in variants.items():
        try:
            yv = ours(code)
        except RuntimeError as exc:
            if "was forced and" not in str(exc):
                raise
            row[vname + "_config"] = "refused"
            continue
        if check:
            ref = F.conv_transpose3d(x.float(), w.float(), None, s, p, op, g, 1)
            verr = (yv.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)
            row[vname + "_rel_err"] = verr
            del ref
        del yv
        row[vname + "_us"], _ = time_fn(lambda code=code: ours(code), reps)
        row[vname + "_config"] = describe(code)
    xcl = x.contiguous(memory_format=torch.channels_last_3d)
    row["cl_input_us"], _ = time_fn(lambda: ours("auto", xcl), reps)
    if dtype != torch.float32 and (cin // g) % 8 == 0:
        # channels-last in and out (what a channels_last_3d module returns), by tile, against
        # cuDNN in the same layout
        for vname, code in {"auto": "auto", "wgmma": K("gemm", gemm_tile=4),
                            "wgmma_256rows": K("gemm", gemm_tile=5),
                            "tma": K("gemm", gemm_tile=8),
                            "tma256": K("gemm", gemm_tile=9),
                            "bn32": K("gemm", gemm_tile=0), "bn64": K("gemm", gemm_tile=1),
                            "allph": K("tensor-cores")}.items():
            def cl_out(code=code):
                return cuda.forward(xcl, w, None, args, kernel=code, out_channels_last=True)
            try:
                yv = cl_out()
            except RuntimeError as exc:
                if "was forced and" not in str(exc):
                    raise
                continue
            if check:
                ref = F.conv_transpose3d(x.float(), w.float(), None, s, p, op, g, 1)
                row[f"clcl_{vname}_rel_err"] = ((yv.float() - ref).abs().max().item()
                                                / max(ref.abs().max().item(), 1e-30))
                del ref
            del yv
            row[f"clcl_{vname}_us"], _ = time_fn(cl_out, reps)
            row[f"clcl_{vname}_config"] = cuda.describe(args, n, dtype, x.device, True, code,
                                                        True)
        wcl = w.contiguous(memory_format=torch.channels_last_3d)  # as a channels-last module
        row["clcl_cudnn_us"], _ = time_fn(
            lambda: F.conv_transpose3d(xcl, wcl, None, s, p, op, g, 1), reps)
    if dtype == torch.float32 and (cin // g) % 8 == 0:  # without the input's copy
        row["gemm_cl_input_us"], _ = time_fn(lambda: ours(K("gemm"), xcl), reps)
    row["cudnn_us"], row["cudnn_min_us"] = time_fn(theirs, reps)
    row["speedup"] = row["cudnn_us"] / row["ours_us"]
    macs = plan.macs_per_sample(cin, cout, g) * n
    row["gflops_ours"] = 2 * macs / row["ours_us"] / 1e3
    return row


def bench_backward(spec, dtype, reps, channels_last=False):
    """The backward's two halves against torch's convolution_backward (cuDNN, TF32 off) and
    float64: grad_weight per kernel (SIMT, tensor cores) and grad_input per kernel (tensor
    cores per phase, narrow window, naive, each tile of the implicit GEMM), each timed with
    its weight pack;
    channels_last: x, the weight and grad_y channels_last_3d (as the bench's channels-last
    rows: a model in that memory format)."""
    name, n, cin, cout, g, dhw, k, s, p, op = spec
    k, s, p, op = t3(k), t3(s), t3(p), t3(op)
    torch.manual_seed(0)
    x = torch.rand((n, cin) + tuple(dhw), device="cuda", dtype=dtype)
    bound = 1.0 / (cin // g * k[0] * k[1] * k[2]) ** 0.5
    w = ((torch.rand((cin, cout // g) + k, device="cuda") * 2 - 1) * bound).to(dtype)
    plan = phase_plan(tuple(dhw), k, s, p, dilation=(1, 1, 1), output_padding=op)
    gy = torch.randn((n, cout) + tuple(plan.out_shape), device="cuda", dtype=dtype)
    if channels_last:
        cl = torch.channels_last_3d
        x, w, gy = (t.contiguous(memory_format=cl) for t in (x, w, gy))
    torch.backends.cudnn.allow_tf32 = False
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    gi_ref, gw_ref = torch.autograd.grad(F.conv_transpose3d(x64, w64, None, s, p, op, g),
                                         (x64, w64), gy.double())
    args = check_conv_transpose3d(x, w, None, s, p, op, g, (1, 1, 1))
    row = {"shape": name, "dtype": str(dtype).replace("torch.", "") + (" cl" if channels_last
                                                                        else "")}
    row["gi_config"], row["gw_config"] = cuda.describe_backward(args, n, dtype, x.device)

    def rel(a, e):
        return ((a.double() - e).norm() / e.norm()).item()

    def timed(variants, need_input, ref):
        """Each kernel's relative error and time, or why it refused the layer."""
        for vname, kernel, *tile in variants:
            def run(kernel=kernel, tile=tile[0] if tile else None):
                if need_input:
                    return cuda.backward(gy, x, w, args, need_weight=False,
                                         grad_input_kernel=kernel, grad_input_tile=tile)[0]
                return cuda.backward(gy, x, w, args, need_input=False,
                                     grad_weight_kernel=kernel)[1]
            try:
                row[vname + "_err"] = rel(run(), ref)
            except RuntimeError as exc:
                row[vname] = str(exc)[:80]
                continue
            row[vname + "_us"], _ = time_fn(run, reps)

    timed((("gw_auto", "auto"), ("gw_simt", "simt"), ("gw_tc", "tensor-cores"),
           ("gw_tc_cl", "tensor-cores-cl"), ("gw_tc_wgmma", "tensor-cores-wgmma"),
           ("gw_tc_narrow", "tensor-cores-narrow"), ("gw_tc_tma", "tensor-cores-tma")), False,
          gw_ref)
    timed((("gi_auto", "auto"), ("gi_tc", "tensor-cores"), ("gi_naive", "naive"),
           ("gi_tc_narrow", "tensor-cores-narrow"), ("gi_gemm", "implicit-gemm"))
          + tuple((f"gi_gemm_tile{t}", "implicit-gemm", t) for t in (0, 1, 2, 3, 4, 5, 8, 9)), True,
          gi_ref)
    del gi_ref, gw_ref, x64, w64

    def theirs():
        torch.ops.aten.convolution_backward(gy, x, w, None, list(s), list(p), [1, 1, 1], True,
                                            list(op), g, [True, True, False])

    row["cudnn_bwd_us"], _ = time_fn(theirs, reps)
    return row


def bench_packs(spec, dtype, reps):
    """The tensor-core weight layouts two ways: the gather through their index maps against
    the pack (csrc/phase_conv_pack.cu), the forward's and (where C_out/g is whole
    octets) the input gradient's; each pair checked bit for bit."""
    name, n, cin, cout, g, dhw, k, s, p, op = spec
    k, s, p = t3(k), t3(s), t3(p)
    shape = (cin, cout // g) + k
    torch.manual_seed(0)
    w = torch.randn(shape, device="cuda").to(dtype)
    t = cuda.layer_tables(shape, g, s, p, (1, 1, 1), dtype, w.device)
    cuda.wait_for_tables(t)
    engine = cuda.load()
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    row = {"shape": name, "dtype": str(dtype).replace("torch.", ""), "weight_MB":
           w.numel() * w.element_size() / 1e6}
    layouts = {"fwd": (cuda.forward_mma_index(shape, g, s, p, (1, 1, 1), 16 // w.element_size()),
                       lambda: engine.pack_weight_mma(w, t.mma_taps, g))}
    if (cout // g) % 8 == 0:
        layouts["gi"] = (cuda.grad_input_mma_index(shape, g),
                         lambda: engine.pack_weight_mma(w, None, g, over_outputs=True))
    for lname, (index, pack) in layouts.items():
        index = index.to(w.device)

        def gather(index=index):
            return cuda.gather(w, index)

        row[lname + "_same"] = torch.equal(pack().view(bits), gather().view(bits))
        row[lname + "_gather_us"], _ = time_fn(gather, reps)
        row[lname + "_pack_us"], _ = time_fn(pack, reps)
        # the kernels alone (torch.profiler): the binding checks a caller's tap table on the
        # host, a wait that the events above count for the forward's pack
        row[lname + "_gather_kernel_us"] = kernel_us(gather, reps, "gather_kernel")
        row[lname + "_pack_kernel_us"] = kernel_us(pack, reps, "pack_mma_kernel")
    return row


def kernel_us(fn, reps, name):
    """Mean device time in µs of the kernels whose name holds ``name``, per call of fn."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return sum(ev.device_time for ev in prof.events()
               if ev.device_type == torch.autograd.DeviceType.CUDA and name in ev.name) / reps


def small_cases():
    """Tiny configurations covering every kernel variant family; checked against float64."""
    cases = [  # n, cin, cout, g, dhw, k, s, p, op, d, bias
        (2, 8, 8, 2, (3, 4, 5), (3, 5, 7), 2, (1, 2, 3), 1, 1, True),
        (1, 4, 2, 2, (2, 3, 4), (1, 2, 1), (3, 4, 2), 0, (2, 3, 1), 1, True),
        (1, 3, 5, 1, (1, 2, 1), 3, 4, (3, 2, 1), (3, 2, 1), 3, False),
        (1, 6, 6, 6, (4, 4, 4), 4, 2, 1, 0, 1, True),
        (1, 32, 24, 1, (3, 3, 3), 4, 2, 1, 0, (1, 2, 1), True),
        (1, 10, 15, 1, (3, 5, 4), (3, 4, 2), (2, 3, 1), (1, 2, 0), (1, 2, 0), (1, 2, 1), True),
        (2, 48, 40, 2, (3, 5, 4), (3, 4, 2), (2, 3, 1), (1, 2, 0), (1, 2, 0), (1, 2, 1), True),
        (2, 32, 72, 1, (4, 3, 5), 3, 2, 1, 1, 1, True),
    ]
    worst = 0.0
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for (n, cin, cout, g, dhw, k, s, p, op, d, bias) in cases:
            k, s, p, op, d = t3(k), t3(s), t3(p), t3(op), t3(d)
            x = torch.randn((n, cin) + tuple(dhw), device="cuda").to(dtype)
            w = torch.randn((cin, cout // g) + k, device="cuda").to(dtype)
            b = torch.randn(cout, device="cuda").to(dtype) if bias else None
            ref = F.conv_transpose3d(x.double(), w.double(), b.double() if bias else None,
                                     s, p, op, g, d)
            args = check_conv_transpose3d(x, w, b, s, p, op, g, d)
            for path in ("auto", "tiled", "naive", "tensor-cores", "mma", "gemm",
                         cuda.ForwardKernel(contiguous_input=True),
                         cuda.ForwardKernel("tensor-cores", contiguous_input=True),
                         cuda.ForwardKernel("tensor-cores", direct_stores=True)):
                try:
                    y = cuda.forward(x, w, b, args, kernel=path)
                except RuntimeError as exc:
                    if "was forced and" not in str(exc):
                        raise
                    continue
                err = ((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1)).item()
                worst = max(worst, err if dtype in (torch.float32, torch.float64) else 0.0)
                assert torch.isfinite(y).all()
                tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2,
                       torch.float16: 3e-3}[dtype]
                assert err < tol, (dtype, n, cin, cout, g, dhw, k, s, p, op, d, path, err)
    torch.cuda.synchronize()
    print(f"small cases OK (worst fp32/fp64 relative error {worst:.2e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--shapes", default="")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--backward", action="store_true",
                    help="time grad_weight and grad_input variants instead of the forward")
    ap.add_argument("--channels-last", action="store_true",
                    help="--backward: channels_last_3d x, weight and grad_y")
    ap.add_argument("--client", action="store_true",
                    help="the MONAI UNet's up-convolutions (CLIENT_SHAPES) instead of the sweep")
    ap.add_argument("--packs", action="store_true",
                    help="time the tensor-core weight layouts, gathered and packed")
    ap.add_argument("--small", action="store_true",
                    help="a few tiny cases only (for compute-sanitizer), then exit")
    ap.add_argument("--tag", default="",
                    help="suffix of the files written under $OUT (A/B runs of two trees)")
    args = ap.parse_args()
    if args.small:
        small_cases()
        return
    t0 = time.time()
    engine = cuda.load()
    print(f"build/load: {time.time() - t0:.1f} s; engine {getattr(engine, '__file__', '?')} "
          f"from {cuda.CSRC}; device {torch.cuda.get_device_name()}; torch {torch.__version__}; "
          f"cuDNN {torch.backends.cudnn.version()}", flush=True)
    tag = f"_{args.tag}" if args.tag else ""
    shapes = CLIENT_SHAPES if args.client else SHAPES
    idx = [int(i) for i in args.shapes.split(",")] if args.shapes else range(len(shapes))
    rows = []
    if args.packs:
        rows = [bench_packs(shapes[i], DTYPES[dname], args.reps)
                for dname in args.dtypes.split(",") for i in idx]
        for row in rows:
            print(json.dumps(row), flush=True)
        out = os.environ.get("OUT")
        if out:
            Path(out, f"pack_rows{tag}.json").write_text(json.dumps(rows, indent=1))
        return
    if args.backward:
        for dname in args.dtypes.split(","):
            for i in idx:
                row = bench_backward(shapes[i], DTYPES[dname], args.reps, args.channels_last)
                rows.append(row)
                print(json.dumps(row), flush=True)
        out = os.environ.get("OUT")
        if out:
            Path(out, f"bwd_rows{tag}.json").write_text(json.dumps(rows, indent=1))
        return
    for dname in args.dtypes.split(","):
        for i in idx:
            row = bench_shape(shapes[i], DTYPES[dname], args.reps, check=not args.no_check)
            rows.append(row)
            print(json.dumps(row), flush=True)
    extra = ["cl_input", "ncdhw", "direct", "perphase", "simt", "allph_cl", "gemm_1ph",
             "gemm_cl_input",
             "gemm_bn32", "gemm_bn64", "gemm_bn128", "gemm_bn64w8", "gemm_bk32",
             "gemm_bn64w8_bk32", "gemm_wgmma", "gemm_wgmma_256rows", "clcl_cudnn", "clcl_auto",
             "clcl_wgmma", "clcl_wgmma_256rows", "clcl_bn32", "clcl_bn64", "clcl_allph"]
    lines = ["{:<9} {:<9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>5} ".format(
        "shape", "dtype", "ours_us", "cudnn_us", "speedup", "GFLOP/s", "rel_err", "ok")
        + " ".join(f"{e:>10}" for e in extra)]
    for r in rows:
        ok = r.get("allclose_1e-5")
        lines.append("{:<9} {:<9} {:>9.1f} {:>9.1f} {:>7.2f} {:>7.0f} {:>9.2e} {:>5} ".format(
            r["shape"], r["dtype"], r["ours_us"], r["cudnn_us"], r["speedup"], r["gflops_ours"],
            r.get("rel_err", float("nan")), "" if ok is None else str(ok))
            + " ".join("{:>10}".format("{:.1f}".format(r[e + "_us"]) if e + "_us" in r else "")
                       for e in extra))
    table = "\n".join(lines)
    print(table)
    out = os.environ.get("OUT")
    if out:
        Path(out, f"bench_table{tag}.txt").write_text(table + "\n")
        Path(out, f"bench_rows{tag}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
