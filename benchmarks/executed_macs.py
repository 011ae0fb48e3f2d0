"""Executed multiply-adds against the useful ones, every kernel family, under Nsight Compute.

    python benchmarks/executed_macs.py [--out DIR] [--cases TEXT,...]
        (on the GPU machine, ncu on PATH; --cases: only the cases whose label holds one of them)

Each case runs one kernel forced by name (forward families, a tile of the implicit GEMM as
``gemm@KIND``, the input-gradient and the weight-gradient kernels) on a sweep shape it takes,
``forward-cl`` with a channels-last input and result, in a process of its own under ``ncu``,
inside an NVTX range that holds that one call (plans, tables and a warm-up run before it).
Per case: the useful MACs (``phaseconv.explain``: every tap of every phase, the work the
decomposition cannot avoid), and what the kernels in the range executed:

* tensor-core kernels: warp-level HMMA instructions
  (``sm__inst_executed_pipe_tensor_op_hmma``) times the MACs of one: m16n8k16 (2,048) for
  16-bit dtypes, m16n8k8 TF32 (1,024) for float32, where 3xTF32 takes three of them for each
  MAC counted; plus, for the sm_90a warpgroup tiles (the implicit GEMM's, the shared-A
  tile's, the weight gradient's), warp-level GMMA instructions
  (``sm__inst_executed_pipe_tensor_op_gmma``): each of a warpgroup's four warps issues every
  m64nNk16 wgmma, so one counts 64 x N x 16 / 4 MACs (N = the tile's BN, or the weight
  gradient's output-channel tile, which the case reads from the plan's description).  Such a
  kernel issues no HMMA: its HMMA
  column counts register moves and conversions on that pipe, as for the SIMT kernels below,
  so its executed MACs are its GMMA alone;
* SIMT kernels: thread-level FFMA instructions with their predicate on (one MAC each).  Their
  HMMA column is not zero: the compiler issues register moves on that pipe (HFMA2.MMA), which
  the metric counts, so a SIMT kernel's executed MACs are its FFMAs alone.

A ratio of 1.00 means no multiply touched a zero the decomposition had removed; above 1 is
the padding of tiles and channel groups.  Writes ``executed-macs.md`` into ``--out``.
"""
import argparse
import csv
import io
import os
import re
import subprocess
import sys

HMMA = "sm__inst_executed_pipe_tensor_op_hmma.sum"
GMMA = "sm__inst_executed_pipe_tensor_op_gmma.sum"  # sm_90 only
FFMA = "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum"
RANGE = "phaseconv"
TENSOR_CORE_FAMILIES = ("gemm", "allphase", "mma", "tensor-cores", "implicit-gemm",
                        "tensor-cores-cl", "tensor-cores-narrow", "tensor-cores-wgmma")

# (label, sweep shape number, dtype, direction, kernel): direction "forward" forces a
# forward family ("forward-cl": channels-last input and result; "gemm@KIND": that tile of the
# implicit GEMM); "grad_input" / "grad_weight" force one backward kernel and run only it
CASES = [
    ("forward gemm", 3, "bfloat16", "forward", "gemm"),
    ("forward gemm", 5, "bfloat16", "forward", "gemm"),  # sm_90a builds: the warpgroup tile
    ("forward gemm", 4, "bfloat16", "forward", "gemm"),
    ("forward gemm shared-A", 3, "bfloat16", "forward-cl", "gemm@6"),
    ("forward gemm shared-A wgmma", 3, "bfloat16", "forward-cl", "gemm@7"),  # sm_90a builds
    # the TMA tiles (sm_90a builds; shapes 4 and 5 above take them by the rule there): boxes
    # of 128 and 256 output voxels, shape 2's 32^3 phases and shape 6's 8 x 32 x 32
    ("forward gemm tma", 2, "bfloat16", "forward-cl", "gemm@8"),
    ("forward gemm tma", 6, "bfloat16", "forward-cl", "gemm@8"),
    ("forward gemm tma 256 rows", 5, "bfloat16", "forward-cl", "gemm@9"),
    ("forward allphase", 1, "bfloat16", "forward", "allphase"),
    ("forward allphase", 1, "float32", "forward", "allphase"),
    ("forward mma", 6, "bfloat16", "forward", "mma"),
    ("forward mma", 2, "float32", "forward", "mma"),
    ("forward tiled", 4, "float32", "forward", "tiled"),
    ("forward tiled", 7, "float32", "forward", "tiled"),
    ("forward naive", 8, "float32", "forward", "naive"),
    ("forward depthwise", 7, "float32", "forward", "depthwise"),
    ("grad_input tensor-cores", 2, "bfloat16", "grad_input", "tensor-cores"),
    ("grad_input implicit-gemm", 3, "bfloat16", "grad_input", "implicit-gemm"),
    ("grad_input implicit-gemm", 5, "bfloat16", "grad_input", "implicit-gemm"),
    ("grad_input tensor-cores", 1, "float32", "grad_input", "tensor-cores"),
    ("grad_input tensor-cores-narrow", 1, "bfloat16", "grad_input", "tensor-cores-narrow"),
    ("grad_input tensor-cores-narrow", 8, "bfloat16", "grad_input", "tensor-cores-narrow"),
    ("grad_input tensor-cores-narrow", 1, "float32", "grad_input", "tensor-cores-narrow"),
    ("grad_input depthwise", 7, "float32", "grad_input", "depthwise"),
    ("grad_input depthwise", 7, "bfloat16", "grad_input", "depthwise"),
    ("grad_input naive", 7, "float32", "grad_input", "naive"),
    ("grad_weight tensor-cores", 2, "bfloat16", "grad_weight", "tensor-cores"),
    ("grad_weight tensor-cores", 5, "float32", "grad_weight", "tensor-cores"),
    ("grad_weight tensor-cores-cl", 3, "bfloat16", "grad_weight", "tensor-cores-cl"),
    ("grad_weight tensor-cores-wgmma", 3, "bfloat16", "grad_weight", "tensor-cores-wgmma"),
    ("grad_weight tensor-cores-wgmma", 4, "bfloat16", "grad_weight", "tensor-cores-wgmma"),
    ("grad_weight tensor-cores-narrow", 1, "bfloat16", "grad_weight", "tensor-cores-narrow"),
    ("grad_weight tensor-cores-narrow", 8, "bfloat16", "grad_weight", "tensor-cores-narrow"),
    ("grad_weight tensor-cores-narrow", 1, "float32", "grad_weight", "tensor-cores-narrow"),
    ("grad_weight depthwise", 7, "float32", "grad_weight", "depthwise"),
    ("grad_weight depthwise", 7, "bfloat16", "grad_weight", "depthwise"),
    ("grad_weight simt", 7, "float32", "grad_weight", "simt"),
]


def child(shape_no: int, dtype_name: str, direction: str, kernel: str) -> None:
    """One case: warm up outside the range, then one call inside it."""
    import torch

    import phaseconv
    from phaseconv import bench
    from phaseconv.checks import check_conv_transpose3d
    from phaseconv.engines import cuda

    shape = bench.SWEEP[shape_no - 1]
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose3d(**shape.layer_args(), bias=False).to("cuda", dtype)
    x = torch.rand(shape.input_shape(), device="cuda", dtype=dtype)
    w = layer.weight.detach()
    args = check_conv_transpose3d(x, w, None, shape.stride, shape.padding,
                                  shape.output_padding, shape.groups, (1, 1, 1))
    gy = torch.rand((shape.batch, shape.out_channels) + tuple(args.out_shape), device="cuda",
                    dtype=dtype)

    cl = direction == "forward-cl"
    if cl:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    family, _, tile = kernel.partition("@")
    forced = cuda.ForwardKernel(family, gemm_tile=int(tile)) if tile else kernel
    if direction.startswith("forward"):
        def call():
            return cuda.forward(x, w, None, args, kernel=forced, out_channels_last=cl)
    else:
        wanted = direction == "grad_input"
        kernels = ({"grad_input_kernel": kernel} if wanted else
                   {"grad_weight_kernel": kernel})

        def call():
            return cuda.backward(gy, x, w, args, need_input=wanted, need_weight=not wanted,
                                 **kernels)
    if direction.startswith("forward"):
        plan = cuda.describe(args, shape.batch, dtype, x.device, cl, kernel=forced,
                             out_channels_last=cl)
    else:
        plan = cuda.backward_plan(args, shape.batch, dtype, x.device, **kernels)[1]
        plan = plan.grad_input_description if wanted else plan.grad_weight_description
    if "wgmma" in plan:  # a warpgroup tile: its N (BN, or the weight gradient's C_out tile)
        found = re.search(r"BN=(\d+)", plan) or re.search(r"\d+x(\d+) channel tile", plan)
        print("wgmma_n", found.group(1))
    call()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_push(RANGE)
    call()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_pop()
    print("useful_macs", phaseconv.explain(layer, x.shape).macs)


def _metrics_known(ncu: str):
    out = subprocess.run([ncu, "--query-metrics"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return [m for m in (HMMA, FFMA, GMMA) if m.rsplit(".", 1)[0] in names]


def measure(ncu: str, metrics, case):
    _, shape_no, dtype, direction, kernel = case
    cmd = [ncu, "--csv", "--page", "raw", "--nvtx", "--nvtx-include", f"{RANGE}/",
           "--metrics", ",".join(metrics), sys.executable, os.path.abspath(__file__),
           "--child", str(shape_no), dtype, direction, kernel]
    run = subprocess.run(cmd, capture_output=True, text=True)
    useful = None
    wgmma_n = 0
    for line in run.stdout.splitlines():
        if line.startswith("useful_macs"):
            useful = int(line.split()[1])
        if line.startswith("wgmma_n"):
            wgmma_n = int(line.split()[1])
    if wgmma_n and GMMA not in metrics:
        return None, f"the warpgroup tile ran and ncu lacks {GMMA}"
    if run.returncode != 0 or useful is None:
        tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
        return None, "; ".join(tail)
    start = run.stdout.find('"ID"')
    rows = list(csv.DictReader(io.StringIO(run.stdout[start:])))[1:]  # row 0: units
    sums = {m: 0.0 for m in metrics}
    names = []
    for row in rows:
        names.append(row.get("Kernel Name", "?").split("(")[0].split("<")[0])
        for m in metrics:
            sums[m] += float(str(row.get(m, "0")).replace(",", "") or 0)
    if kernel.partition("@")[0] in TENSOR_CORE_FAMILIES:
        if wgmma_n:
            executed = sums[GMMA] * (64 * wgmma_n * 16 / 4)
        else:
            executed = sums[HMMA] * (1024 / 3 if dtype == "float32" else 2048)
    else:
        executed = sums[FFMA]
    return (useful, sums.get(HMMA, 0.0), sums.get(GMMA, 0.0), sums.get(FFMA, 0.0), executed,
            sorted(set(names))), ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, metavar=("SHAPE", "DTYPE", "DIRECTION", "KERNEL"))
    parser.add_argument("--out", default=".")
    parser.add_argument("--ncu", default="ncu")
    parser.add_argument("--cases", default="",
                        help="comma-separated parts of case labels: run only those cases")
    args = parser.parse_args(argv)
    if args.child:
        shape_no, dtype, direction, kernel = args.child
        child(int(shape_no), dtype, direction, kernel)
        return 0
    metrics = _metrics_known(args.ncu)
    if not {HMMA, FFMA} <= set(metrics):
        print(f"executed_macs: ncu lacks {sorted({HMMA, FFMA} - set(metrics))}", file=sys.stderr)
        return 2
    lines = ["| case | shape | dtype | useful MACs | HMMA (warp) | GMMA (warp) | FFMA (thread) | "
             "executed MACs | executed / useful | kernels |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    worst = 0.0
    wanted = [part for part in args.cases.split(",") if part]
    for case in CASES:
        if wanted and not any(part in case[0] for part in wanted):
            continue
        got, why = measure(args.ncu, metrics, case)
        label, shape_no, dtype = case[:3]
        if got is None:
            lines.append(f"| {label} | {shape_no} | {dtype} | failed: {why} | | | | | | |")
            worst = float("inf")
        else:
            useful, hmma, gmma, ffma, executed, names = got
            ratio = executed / useful
            worst = max(worst, ratio)
            lines.append(f"| {label} | {shape_no} | {dtype} | {useful:.3e} | {hmma:.3e} | "
                         f"{gmma:.3e} | {ffma:.3e} | {executed:.3e} | {ratio:.3f} | "
                         f"{', '.join(names)} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "executed-macs.md"), "w") as f:
        f.write(text + "\n")
    print(f"worst executed / useful: {worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
