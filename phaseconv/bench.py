"""``python -m phaseconv bench``: phaseconv against cuDNN on the sweep of issue 4.

Times ``torch.nn.functional.conv_transpose3d`` (cuDNN; TF32 off for float32, and also with
torch's default flags) and phaseconv's layer (packed weight cached, as in inference) in the
same process: CUDA events, warm-up, median of >= 50 runs, bias off.  Then the training side
(issue 5): the backward (grad_input + grad_weight) and forward + backward of the founding
example and sweep shapes 2, 3 and 5 against torch's layer, and one SGD step of a small 3-D
encoder-decoder, torch's against its ``phaseconv.convert``-ed copy (time and peak memory).
Prints the tables, writes ``benchmarks/RESULTS.md`` and a PNG bar chart of the speed-ups.
"""
import copy
import datetime
import os
import platform
import statistics
import sys
from typing import List, NamedTuple, Tuple

import torch
import torch.nn.functional as F

import phaseconv


class Shape(NamedTuple):
    name: str
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    size: Tuple[int, int, int]
    kernel: Tuple[int, int, int]
    stride: Tuple[int, int, int]
    padding: Tuple[int, int, int]
    output_padding: Tuple[int, int, int]


def _t(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


SWEEP = [Shape(n, b, ci, co, g, _t(s), _t(k), _t(st), _t(p), _t(op)) for n, b, ci, co, g, s, k,
         st, p, op in [
             ("1 founding", 8, 32, 32, 4, (12, 24, 48), (3, 5, 7), 2, (1, 2, 3), 1),
             ("2", 2, 64, 32, 1, 32, 3, 2, 1, 1),
             ("3", 2, 128, 64, 1, 32, 2, 2, 0, 0),
             ("4", 1, 512, 256, 1, 16, 2, 2, 0, 0),
             ("5", 16, 256, 128, 1, 8, 4, 2, 1, 0),
             ("6", 2, 128, 64, 1, (8, 32, 32), (3, 4, 4), (1, 2, 2), 1, 0),
             ("7", 4, 64, 64, 64, 24, 4, 2, 1, 0),
             ("8", 1, 16, 8, 1, 64, 3, 2, 1, 1),
         ]]


class Row(NamedTuple):
    shape: Shape
    dtype: str
    cudnn_us: float          # TF32 off for float32
    cudnn_default_us: float  # torch's default flags
    phaseconv_us: float
    eager_us: float          # one call with an idle queue: host overhead included
    max_rel_err: float
    gflop: float

    @property
    def speedup(self) -> float:
        return self.cudnn_us / self.phaseconv_us


def _median_us(fn, repeats: int, warmup: int, primed: bool = True) -> float:
    """Median GPU time of ``fn()`` in µs, between CUDA events.

    ``primed``: a short GPU sleep is queued before the start event, so the host's Python
    overhead of the call overlaps it and the events time the GPU work alone (as in a network,
    where the queue is rarely empty).  Unprimed, the host overhead is part of the time.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if primed:
            torch.cuda._sleep(1_000_000)  # ~0.5 ms at H100 clocks
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times)


def bench_one(shape: Shape, dtype: torch.dtype, repeats: int, warmup: int) -> Row:
    torch.manual_seed(0)
    dev = "cuda"
    layer = phaseconv.ConvTranspose3d(shape.in_channels, shape.out_channels, shape.kernel,
                                      stride=shape.stride, padding=shape.padding,
                                      output_padding=shape.output_padding,
                                      groups=shape.groups, bias=False).to(dev, dtype).eval()
    x = torch.rand((shape.batch, shape.in_channels) + shape.size, device=dev, dtype=dtype)
    w = layer.weight.detach()
    kw = dict(stride=shape.stride, padding=shape.padding, output_padding=shape.output_padding,
              groups=shape.groups)
    tf32 = torch.backends.cudnn.allow_tf32
    with torch.no_grad():
        try:
            torch.backends.cudnn.allow_tf32 = False
            ref = F.conv_transpose3d(x.double(), w.double(), **kw) if shape.batch * \
                w.numel() < 2**26 else F.conv_transpose3d(x.float(), w.float(), **kw)
            got = layer(x)
            err = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
            del ref, got
            cudnn = _median_us(lambda: F.conv_transpose3d(x, w, **kw), repeats, warmup)
            torch.backends.cudnn.allow_tf32 = True
            cudnn_default = _median_us(lambda: F.conv_transpose3d(x, w, **kw), repeats, warmup)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        ours = _median_us(lambda: layer(x), repeats, warmup)
        eager = _median_us(lambda: layer(x), repeats, warmup, primed=False)
    report = phaseconv.explain(layer, x.shape)
    return Row(shape, str(dtype).replace("torch.", ""), cudnn, cudnn_default, ours, eager, err,
               2 * report.macs / 1e9)


class BackwardRow(NamedTuple):
    shape: Shape
    dtype: str
    torch_bwd_us: float   # grad_input + grad_weight of torch's layer (cuDNN, TF32 off)
    ours_bwd_us: float
    torch_step_us: float  # forward + backward
    ours_step_us: float
    rel_err: float        # worst of grad_input and grad_weight against torch's, relative norm


def bench_backward(shape: Shape, dtype: torch.dtype, repeats: int, warmup: int) -> BackwardRow:
    """Backward alone (autograd.grad on a kept graph) and forward + backward, torch's layer
    against phaseconv's (the same weights), TF32 off."""
    torch.manual_seed(0)
    dev = "cuda"
    theirs = torch.nn.ConvTranspose3d(shape.in_channels, shape.out_channels, shape.kernel,
                                      stride=shape.stride, padding=shape.padding,
                                      output_padding=shape.output_padding, groups=shape.groups,
                                      bias=False).to(dev, dtype)
    ours = phaseconv.ConvTranspose3d.from_torch(theirs)
    x = torch.rand((shape.batch, shape.in_channels) + shape.size, device=dev, dtype=dtype,
                   requires_grad=True)
    tf32 = torch.backends.cudnn.allow_tf32
    times = {}
    grads = {}
    try:
        torch.backends.cudnn.allow_tf32 = False
        g = None
        for name, layer in (("torch", theirs), ("ours", ours)):
            out = layer(x)
            if g is None:
                g = torch.randn_like(out)  # one upstream gradient for both
            grads[name] = torch.autograd.grad(out, (x, layer.weight), g, retain_graph=True)

            def bwd(out=out, g=g, layer=layer):
                torch.autograd.grad(out, (x, layer.weight), g, retain_graph=True)

            def step(layer=layer, g=g):
                torch.autograd.grad(layer(x), (x, layer.weight), g)

            times[name] = (_median_us(bwd, repeats, warmup), _median_us(step, repeats, warmup))
            del out
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    err = max(((a.double() - b.double()).norm() / b.double().norm()).item()
              for a, b in zip(grads["ours"], grads["torch"]))
    return BackwardRow(shape, str(dtype).replace("torch.", ""), times["torch"][0],
                       times["ours"][0], times["torch"][1], times["ours"][1], err)


class EncoderDecoder(torch.nn.Module):
    """A small 3-D encoder-decoder (a U-Net without skips): two strided convolutions down,
    three transposed convolutions up (stride 2 with output_padding, an anisotropic grouped
    one, a 1x1x1 head)."""

    def __init__(self, width: int = 16):
        super().__init__()
        nn = torch.nn
        self.enc = nn.Sequential(nn.Conv3d(1, width, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.dec = nn.Sequential(
            nn.ConvTranspose3d(2 * width, width, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose3d(width, width, (2, 4, 4), stride=2, padding=(0, 1, 1), groups=2),
            nn.ReLU(), nn.ConvTranspose3d(width, 1, 1))

    def forward(self, x):
        return self.dec(self.enc(x))


class TrainingRow(NamedTuple):
    model: str
    dtype: str
    step_us: float
    peak_mib: float
    loss: float


def bench_training_step(dtype: torch.dtype, repeats: int, warmup: int,
                        size: int = 64, batch: int = 4) -> List[TrainingRow]:
    """One SGD step (forward, loss, backward, update) of :class:`EncoderDecoder` on a
    (batch, 1, size^3) volume: torch's model against its converted copy, same weights.
    Peak memory: ``torch.cuda.max_memory_allocated`` over one step, after a warm-up."""
    torch.manual_seed(0)
    reference = EncoderDecoder().to("cuda", dtype)
    converted = phaseconv.convert(copy.deepcopy(reference))
    x = torch.randn(batch, 1, size, size, size, device="cuda", dtype=dtype)
    y = torch.randn_like(x)
    rows = []
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        for name, model in (("torch", reference), ("phaseconv.convert", converted)):
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            losses = []

            def step(model=model, opt=opt, losses=losses):
                opt.zero_grad(set_to_none=True)
                loss = (model(x) - y).square().mean()
                loss.backward()
                opt.step()
                losses.append(loss.detach())

            us = _median_us(step, repeats, warmup)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            rows.append(TrainingRow(name, str(dtype).replace("torch.", ""), us, peak,
                                    losses[-1].item()))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return rows


def backward_table(rows: List[BackwardRow]) -> str:
    lines = ["| # | shape | dtype | torch backward µs | phaseconv backward µs | speed-up | "
             "torch fwd+bwd µs | phaseconv fwd+bwd µs | speed-up | grad rel. error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape.name} | {_describe(r.shape)} | {r.dtype} | "
                     f"{r.torch_bwd_us:.1f} | {r.ours_bwd_us:.1f} | "
                     f"{r.torch_bwd_us / r.ours_bwd_us:.2f}x | {r.torch_step_us:.1f} | "
                     f"{r.ours_step_us:.1f} | {r.torch_step_us / r.ours_step_us:.2f}x | "
                     f"{r.rel_err:.1e} |")
    return "\n".join(lines)


def training_table(rows: List[TrainingRow]) -> str:
    lines = ["| model | dtype | step µs | peak memory MiB (over the step) | loss after the "
             "timed steps |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.dtype} | {r.step_us:.1f} | {r.peak_mib:.1f} | "
                     f"{r.loss:.6f} |")
    return "\n".join(lines)


def _describe(s: Shape) -> str:
    size = "x".join(map(str, s.size))
    k = s.kernel[0] if len(set(s.kernel)) == 1 else s.kernel
    st = s.stride[0] if len(set(s.stride)) == 1 else s.stride
    p = s.padding[0] if len(set(s.padding)) == 1 else s.padding
    op = s.output_padding[0] if len(set(s.output_padding)) == 1 else s.output_padding
    return (f"{s.batch}, {s.in_channels}->{s.out_channels}, g{s.groups}, {size}, k{k}, s{st}, "
            f"p{p}, op{op}")


def table(rows: List[Row]) -> str:
    lines = ["| # | shape (N, C_in->C_out, groups, DxHxW, k, s, p, op) | dtype | cuDNN µs | "
             "cuDNN default µs | phaseconv µs | speed-up | TFLOP/s | eager call µs | "
             "rel. error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape.name} | {_describe(r.shape)} | {r.dtype} | {r.cudnn_us:.1f} | "
                     f"{r.cudnn_default_us:.1f} | {r.phaseconv_us:.1f} | {r.speedup:.2f}x | "
                     f"{r.gflop / r.phaseconv_us * 1e3:.1f} | {r.eager_us:.1f} | "
                     f"{r.max_rel_err:.1e} |")
    return "\n".join(lines)


def write_results(rows: List[Row], path: str, command: str,
                  backward_rows: List[BackwardRow] = (),
                  training_rows: List[TrainingRow] = ()) -> None:
    props = torch.cuda.get_device_properties(0)
    header = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {datetime.date.today().isoformat()}.",
        "",
        f"- device: {props.name} ({props.multi_processor_count} SMs)",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}, Python {platform.python_version()}",
        "- method: CUDA events after warm-up, median of the runs, bias off, inference "
        "(phaseconv's packed weight cached), a short GPU sleep queued before each timed call so "
        "that the events time GPU work, not Python. cuDNN µs: `F.conv_transpose3d` with TF32 "
        "off (true fp32); cuDNN default: torch's default flags (TF32 allowed for fp32 "
        "convolutions). Speed-up is against the TF32-off time. TFLOP/s: useful work (every tap "
        "of every phase) over phaseconv's time. eager call µs: one phaseconv call with an idle "
        "GPU queue, Python overhead included. rel. error: ‖phaseconv − torch‖ / ‖torch‖ with "
        "torch in float64 (float32 for the largest shapes).",
        "",
        "",
    ]
    text = "\n".join(header) + table(rows) + "\n"
    if backward_rows:
        text += ("\n## Backward (issue 5)\n\nGradients of the input and the weight "
                 "(`torch.autograd.grad` on a kept graph, bias off) and one forward + backward, "
                 "torch's `nn.ConvTranspose3d` (cuDNN, TF32 off) against phaseconv's layer with "
                 "the same weight; median of the runs, GPU time as above. grad rel. error: the "
                 "worse of the two gradients, ‖phaseconv − torch‖ / ‖torch‖.\n\n"
                 + backward_table(list(backward_rows)) + "\n")
    if training_rows:
        text += ("\n## Training step (issue 5)\n\nOne SGD step (forward, MSE loss, backward, "
                 "momentum update) of `phaseconv.bench.EncoderDecoder` (two strided Conv3d "
                 "down, three ConvTranspose3d up) on a (4, 1, 64, 64, 64) volume: torch's model "
                 "against its `phaseconv.convert` copy with the same weights, TF32 off. Peak "
                 "memory: `torch.cuda.max_memory_allocated` during one step, above what was "
                 "allocated before it.\n\n" + training_table(list(training_rows)) + "\n")
    with open(path, "w") as f:
        f.write(text)


def plot(rows: List[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r.shape.name for r in rows}, key=lambda n: int(n.split()[0]))
    dtypes = sorted({r.dtype for r in rows})
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(dtypes)
    for i, dt in enumerate(dtypes):
        vals = {r.shape.name: r.speedup for r in rows if r.dtype == dt}
        ax.bar([j + i * width for j in range(len(names))], [vals.get(n, 0) for n in names],
               width, label=dt)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + width * (len(dtypes) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names)
    ax.set_ylabel("speed-up over cuDNN")
    ax.set_title(f"phaseconv vs cuDNN, {torch.cuda.get_device_name(0)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m phaseconv bench", description=__doc__)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated; the founding shape always adds float16")
    parser.add_argument("--shapes", default="", help="comma-separated 1-based shape numbers")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default="benchmarks", help="folder for RESULTS.md and the PNG")
    parser.add_argument("--no-training", action="store_true",
                        help="skip the backward and training-step sections")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    if args.repeats < 50:
        print("bench: note: fewer than 50 repeats", file=sys.stderr)
    picked = [SWEEP[int(i) - 1] for i in args.shapes.split(",")] if args.shapes else SWEEP
    rows = []
    for shape in picked:
        names = args.dtypes.split(",")
        if shape is SWEEP[0] and "float16" not in names:
            names.append("float16")  # the founding example's goals name float16 too
        for name in names:
            row = bench_one(shape, getattr(torch, name), args.repeats, args.warmup)
            rows.append(row)
            print(f"{shape.name:>10} {row.dtype:>8}: cuDNN {row.cudnn_us:9.1f} µs  "
                  f"phaseconv {row.phaseconv_us:9.1f} µs  {row.speedup:6.2f}x  "
                  f"err {row.max_rel_err:.1e}", flush=True)
    print()
    print(table(rows))
    backward_rows, training_rows = [], []
    if not args.no_training:
        for shape in (SWEEP[0], SWEEP[1], SWEEP[2], SWEEP[4]):
            for name in ("float32", "bfloat16"):
                row = bench_backward(shape, getattr(torch, name), args.repeats, args.warmup)
                backward_rows.append(row)
                print(f"backward {shape.name:>10} {row.dtype:>8}: torch {row.torch_bwd_us:9.1f} "
                      f"µs  phaseconv {row.ours_bwd_us:9.1f} µs; fwd+bwd {row.torch_step_us:9.1f}"
                      f" vs {row.ours_step_us:9.1f} µs  err {row.rel_err:.1e}", flush=True)
        print()
        print(backward_table(backward_rows))
        training_rows = bench_training_step(torch.float32, max(20, args.repeats // 2),
                                            args.warmup)
        print()
        print(training_table(training_rows))
    os.makedirs(args.out, exist_ok=True)
    command = "python -m phaseconv bench" + (" " + " ".join(argv) if argv else "")
    write_results(rows, os.path.join(args.out, "RESULTS.md"), command, backward_rows,
                  training_rows)
    plot(rows, os.path.join(args.out, "speedup.png"))
    print(f"\nwrote {os.path.join(args.out, 'RESULTS.md')} and speedup.png")
    return 0
