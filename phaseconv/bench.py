"""``python -m phaseconv bench``: phaseconv against torch (cuDNN) on the sweep of shapes.

``python -m phaseconv bench --device cpu`` times the CPU engine against torch's CPU kernels
(oneDNN) instead: the section ``cpu`` (:func:`bench_cpu_forward`, :func:`bench_cpu_small`).

Sections (``--sections``, all by default):

* ``forward``: one call, GPU time, phaseconv's layer against ``F.conv_transpose3d`` (TF32 off,
  and torch's default flags).  Every call reads the weight as it is (one pack included).
* ``backward``: the backward (grad_input + grad_weight) and one forward + backward with the
  weight fixed, torch's layer against phaseconv's, every sweep shape.
* ``host``: host (Python + launch) µs per call, phaseconv's module and functional form next to
  torch's, in inference; the GPU is kept busy so that no call can hide a wait.
* ``loop``: the real training loop, one layer: forward, loss, backward and an SGD step that
  changes the weight, every step.  GPU µs, host µs and loop µs (consecutive steps, what a user
  sees; the median of several blocks, torch and phaseconv taking turns) per step, and the
  kernels each step launches.
* ``client``: MONAI networks (``phaseconv.bench_client``), torch against
  ``phaseconv.convert``, fp32 and AMP bf16, eager and ``torch.compile``.

GPU time: CUDA events after warm-up, median of the runs, a GPU sleep queued before each timed
call so that the events time GPU work, not Python.  Each section writes
``results-<section>.md`` into ``--out``, and ``RESULTS.md`` there gathers every section found.
"""
import copy
import datetime
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

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

    def layer_args(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel, stride=self.stride, padding=self.padding,
                    output_padding=self.output_padding, groups=self.groups)

    def functional_args(self) -> dict:
        """The keyword arguments of ``F.conv_transpose3d`` past the weight and bias."""
        return dict(stride=self.stride, padding=self.padding,
                    output_padding=self.output_padding, groups=self.groups)

    def input_shape(self) -> Tuple[int, ...]:
        return (self.batch, self.in_channels) + self.size

    def describe(self) -> str:
        def one(v):
            return v[0] if len(set(v)) == 1 else v

        size = "x".join(map(str, self.size))
        return (f"{self.batch}, {self.in_channels}->{self.out_channels}, g{self.groups}, {size}, "
                f"k{one(self.kernel)}, s{one(self.stride)}, p{one(self.padding)}, "
                f"op{one(self.output_padding)}")


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


# ---------------------------------------------------------------------------------- timers

def median_gpu_us(fn: Callable[[], object], repeats: int, warmup: int,
                  primed: bool = True) -> float:
    """Median GPU time of ``fn()`` in µs, between CUDA events (:func:`gpu_times_us`)."""
    return statistics.median(gpu_times_us(fn, repeats, warmup, primed))


def gpu_times_us(fn: Callable[[], object], repeats: int, warmup: int,
                 primed: bool = True) -> List[float]:
    """GPU times of ``repeats`` calls of ``fn()`` in µs, each between two CUDA events: the
    one timer of every benchmark.

    ``primed``: a GPU sleep is queued before the start event, so the host's work for the call
    overlaps it and the events time the GPU work alone (as in a network, where the queue is
    rarely empty).  Unprimed, the host's time is part of the result.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if primed:
            torch.cuda._sleep(2_000_000)  # ~1 ms at H100/H200 clocks
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return times


def call_us(fn: Callable[[], object]) -> float:
    """Wall-clock time in µs of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def alternating_times(fns, repeats: int, warmup: int,
                      before_round: Optional[Callable[[int], None]] = None,
                      sample: Callable[[Callable[[], object]], float] = call_us
                      ) -> List[List[float]]:
    """Times in µs of ``repeats`` samples of each of ``fns``, taken in turn (so that the
    machine's drift and its neighbours' load touch them alike), after ``warmup`` rounds;
    ``before_round(i)`` runs untimed before round ``i``.  A sample is one call's wall-clock
    time (:func:`call_us`, the host timer of every benchmark), or ``sample(fn)``."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for i in range(repeats):
        if before_round is not None:
            before_round(i)
        for fn, spent in zip(fns, times):
            spent.append(sample(fn))
    return times


def median_host_us(fns, repeats: int, warmup: int) -> List[float]:
    """Median host time in µs of each of ``fns``, called in turn (:func:`alternating_times`),
    with the GPU kept busy by a queued sleep: the time the host spends issuing a call; a call
    that waited for the GPU would show the sleep."""
    def keep_gpu_busy(i: int) -> None:
        if i % 5 == 0:
            torch.cuda.synchronize()
            torch.cuda._sleep(20_000_000)  # ~10 ms: covers the host time of 5 rounds

    times = alternating_times(fns, repeats, warmup, before_round=keep_gpu_busy)
    torch.cuda.synchronize()
    return [statistics.median(t) for t in times]


def loop_us(fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Wall time per call of ``steps`` consecutive calls (synchronized at the ends only): the
    throughput of a loop, host and GPU together."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e6


def cuda_activities(fn: Callable[[], object]) -> int:
    """Kernels, copies and memsets one call of ``fn`` puts on the GPU (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


class _NoTF32:
    """cuDNN's true fp32 (TF32 off) inside the block."""

    def __enter__(self):
        self.prev = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32 = self.prev


def _layers(shape: Shape, dtype: torch.dtype, bias: bool = False, seed: int = 0):
    """torch's layer and phaseconv's sharing its parameters."""
    torch.manual_seed(seed)
    theirs = torch.nn.ConvTranspose3d(**shape.layer_args(), bias=bias).to("cuda", dtype)
    return theirs, phaseconv.ConvTranspose3d.from_torch(theirs)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class Variant(NamedTuple):
    """A dtype and a memory format: what a row runs in (``--dtypes`` names it, ``-cl`` for
    ``channels_last_3d`` inputs, weights and upstream gradients, as a user who set the model's
    memory format feeds both libraries)."""
    dtype: torch.dtype
    channels_last: bool = False

    @staticmethod
    def parse(text: str) -> "Variant":
        name, cl = (text[:-3], True) if text.endswith("-cl") else (text, False)
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {name!r} in --dtypes")
        return Variant(dtype, cl)

    @property
    def name(self) -> str:
        return _dtype_name(self.dtype) + (" cl" if self.channels_last else "")

    def fmt(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in this variant's memory format (5-D tensors)."""
        return t.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else t


# ---------------------------------------------------------------------------------- floors

# Dense tensor-core peaks (TFLOP/s, 16-bit and TF32) and DRAM bandwidth (TB/s) from the
# vendor's data sheets, by a substring of the device name (first match).
PEAKS = [("H200", 989.4, 494.7, 4.8), ("H100 PCIe", 756.0, 378.0, 2.0),
         ("H100 NVL", 835.5, 417.8, 3.9), ("H100", 989.4, 494.7, 3.35),
         ("A100-SXM4-80GB", 312.0, 156.0, 2.039), ("A100", 312.0, 156.0, 1.555)]


def floor_us(device_name: str, dtype: torch.dtype, macs: int, nbytes: int) -> float:
    """The hardware floor of a piece of work: the larger of its tensor-pipe time (``macs``
    at the data-sheet rate; float32 as 3xTF32, three TF32 products per MAC) and its DRAM time
    (``nbytes`` moved once).  NaN where the device or dtype has no entry."""
    peaks = next((row[1:] for row in PEAKS if row[0] in device_name), None)
    if peaks is None:
        return float("nan")
    tc16, tf32, tbs = peaks
    rate = {torch.float16: tc16, torch.bfloat16: tc16, torch.float32: tf32 / 3}.get(dtype)
    if rate is None:
        return float("nan")
    return max(2 * macs / (rate * 1e12), nbytes / (tbs * 1e12)) * 1e6


def _work(shape: Shape, dtype: torch.dtype):
    """(useful MACs, bytes of input + weight + output) of one forward."""
    w_shape = (shape.in_channels, shape.out_channels // shape.groups) + shape.kernel
    report = phaseconv.explain(phaseconv.ConvTranspose3d(**shape.layer_args(), bias=False,
                                                         device="meta"), shape.input_shape())
    size = torch.empty((), dtype=dtype).element_size()
    out = shape.batch * shape.out_channels * math.prod(report.plan.out_shape)
    elems = math.prod(shape.input_shape()) + math.prod(w_shape) + out
    return report.macs, elems * size


def _floor_text(us: float, floor: float) -> str:
    return "-" if math.isnan(floor) else f"{floor:.1f} ({floor / us:.0%})"


# ---------------------------------------------------------------------------------- forward

class ForwardRow(NamedTuple):
    shape: Shape
    dtype: str
    cudnn_us: float          # TF32 off for float32
    cudnn_default_us: float  # torch's default flags
    phaseconv_us: float
    rel_err: float
    gflop: float
    kernel: str
    floor_us: float          # the hardware floor (floor_us)


def bench_forward(shape: Shape, variant: Variant, repeats: int, warmup: int) -> ForwardRow:
    dtype = variant.dtype
    theirs, ours = _layers(shape, dtype)
    theirs.to(memory_format=torch.channels_last_3d if variant.channels_last
              else torch.contiguous_format)
    x = variant.fmt(torch.rand(shape.input_shape(), device="cuda", dtype=dtype))
    w = theirs.weight.detach()
    kw = shape.functional_args()
    with torch.no_grad(), _NoTF32():
        ref = (F.conv_transpose3d(x.double(), w.double(), **kw)
               if shape.batch * w.numel() < 2**26 else F.conv_transpose3d(x.float(), w.float(),
                                                                            **kw))
        err = _rel(ours(x), ref)
        del ref
        cudnn = median_gpu_us(lambda: F.conv_transpose3d(x, w, **kw), repeats, warmup)
        mine = median_gpu_us(lambda: ours(x), repeats, warmup)
    with torch.no_grad():
        cudnn_default = median_gpu_us(lambda: F.conv_transpose3d(x, w, **kw), repeats, warmup)
    report = phaseconv.explain(ours, x.shape)
    macs, nbytes = _work(shape, dtype)
    floor = floor_us(torch.cuda.get_device_name(), dtype, macs, nbytes)
    return ForwardRow(shape, variant.name, cudnn, cudnn_default, mine, err,
                      2 * report.macs / 1e9, report.kernel or "", floor)


def forward_table(rows: List[ForwardRow]) -> str:
    lines = ["| # | shape (N, C_in->C_out, groups, DxHxW, k, s, p, op) | dtype | cuDNN µs | "
             "cuDNN default µs | phaseconv µs | speed-up | TFLOP/s | floor µs (reached) | "
             "rel. error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape.name} | {r.shape.describe()} | {r.dtype} | {r.cudnn_us:.1f} | "
                     f"{r.cudnn_default_us:.1f} | {r.phaseconv_us:.1f} | "
                     f"{r.cudnn_us / r.phaseconv_us:.2f}x | "
                     f"{r.gflop / r.phaseconv_us * 1e3:.1f} | "
                     f"{_floor_text(r.phaseconv_us, r.floor_us)} | {r.rel_err:.1e} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- backward

class BackwardRow(NamedTuple):
    shape: Shape
    dtype: str
    torch_bwd_us: float   # grad_input + grad_weight of torch's layer (cuDNN, TF32 off)
    ours_bwd_us: float
    torch_step_us: float  # forward + backward
    ours_step_us: float
    rel_err: float        # worst of grad_input and grad_weight against torch's
    bwd_floor_us: float   # twice the forward's MACs; grad_out, input, weight and both grads
    step_floor_us: float


def bench_backward(shape: Shape, variant: Variant, repeats: int, warmup: int) -> BackwardRow:
    """Backward alone (autograd.grad on a kept graph) and forward + backward, the weight fixed,
    torch's layer against phaseconv's (the same parameters), TF32 off."""
    dtype = variant.dtype
    theirs, ours = _layers(shape, dtype)
    theirs.to(memory_format=torch.channels_last_3d if variant.channels_last
              else torch.contiguous_format)
    x = variant.fmt(torch.rand(shape.input_shape(), device="cuda", dtype=dtype)
                    ).requires_grad_()
    times, grads = {}, {}
    with _NoTF32():
        g = None
        for name, layer in (("torch", theirs), ("ours", ours)):
            out = layer(x)
            if g is None:
                g = variant.fmt(torch.randn_like(out))  # one upstream gradient for both
            grads[name] = torch.autograd.grad(out, (x, layer.weight), g, retain_graph=True)

            def bwd(out=out, layer=layer, g=g):
                torch.autograd.grad(out, (x, layer.weight), g, retain_graph=True)

            def step(layer=layer, g=g):
                torch.autograd.grad(layer(x), (x, layer.weight), g)

            times[name] = (median_gpu_us(bwd, repeats, warmup),
                           median_gpu_us(step, repeats, warmup))
            del out
    err = max(_rel(a, b) for a, b in zip(grads["ours"], grads["torch"]))
    macs, nbytes = _work(shape, dtype)
    name = torch.cuda.get_device_name()
    bwd_floor = floor_us(name, dtype, 2 * macs, 2 * nbytes)
    step_floor = floor_us(name, dtype, 3 * macs, 3 * nbytes)
    return BackwardRow(shape, variant.name, times["torch"][0], times["ours"][0],
                       times["torch"][1], times["ours"][1], err, bwd_floor, step_floor)


def backward_table(rows: List[BackwardRow]) -> str:
    lines = ["| # | shape | dtype | torch backward µs | phaseconv backward µs | speed-up | "
             "backward floor µs (reached) | torch fwd+bwd µs | phaseconv fwd+bwd µs | "
             "speed-up | fwd+bwd floor µs (reached) | grad rel. error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape.name} | {r.shape.describe()} | {r.dtype} | "
                     f"{r.torch_bwd_us:.1f} | {r.ours_bwd_us:.1f} | "
                     f"{r.torch_bwd_us / r.ours_bwd_us:.2f}x | "
                     f"{_floor_text(r.ours_bwd_us, r.bwd_floor_us)} | {r.torch_step_us:.1f} | "
                     f"{r.ours_step_us:.1f} | {r.torch_step_us / r.ours_step_us:.2f}x | "
                     f"{_floor_text(r.ours_step_us, r.step_floor_us)} | {r.rel_err:.1e} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- host

class HostRow(NamedTuple):
    shape: Shape
    dtype: str
    torch_module_us: float
    torch_functional_us: float
    ours_module_us: float
    ours_functional_us: float
    ours_gpu_us: float


def bench_host(shape: Shape, variant: Variant, repeats: int, warmup: int) -> HostRow:
    dtype = variant.dtype
    theirs, ours = _layers(shape, dtype, bias=True)
    x = variant.fmt(torch.rand(shape.input_shape(), device="cuda", dtype=dtype))
    w, b = theirs.weight, theirs.bias
    kw = shape.functional_args()
    with torch.no_grad():
        res = median_host_us([lambda: theirs(x), lambda: F.conv_transpose3d(x, w, b, **kw),
                              lambda: ours(x), lambda: phaseconv.conv_transpose3d(x, w, b, **kw)],
                             repeats, warmup)
        gpu = median_gpu_us(lambda: ours(x), 20, 3)
    return HostRow(shape, variant.name, *res, gpu)


def host_table(rows: List[HostRow]) -> str:
    lines = ["| # | shape | dtype | torch module µs | torch functional µs | phaseconv module µs "
             "| phaseconv functional µs | module - torch's µs | functional / module | "
             "phaseconv GPU µs |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape.name} | {r.shape.describe()} | {r.dtype} | "
                     f"{r.torch_module_us:.1f} | {r.torch_functional_us:.1f} | "
                     f"{r.ours_module_us:.1f} | {r.ours_functional_us:.1f} | "
                     f"{r.ours_module_us - r.torch_module_us:+.1f} | "
                     f"{r.ours_functional_us / r.ours_module_us:.2f} | {r.ours_gpu_us:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- loop

class LoopRow(NamedTuple):
    shape: Shape
    dtype: str
    impl: str
    gpu_us: float
    host_us: float
    loop_us: float
    kernels: int
    output: torch.Tensor  # the first step's output (compared between the two)


def loop_state(theirs: torch.nn.Module, impl: str, x0: torch.Tensor):
    """(layer, input, optimizer) of one training-loop run: a copy of torch's layer (converted
    for ``impl`` "phaseconv"), the input a leaf that needs its gradient, SGD with momentum."""
    layer = copy.deepcopy(theirs)
    if impl == "phaseconv":
        layer = phaseconv.convert(layer)
    x = x0.clone(memory_format=torch.preserve_format).requires_grad_()
    return layer, x, torch.optim.SGD(layer.parameters(), lr=1e-4, momentum=0.9)


LOOP_BLOCKS = 5  # the loop's wall time: the median of this many blocks of consecutive steps


def loop_walls_us(fns, steps: int, blocks: int, warmup: int) -> List[float]:
    """Median wall time per step of each of ``fns`` over ``blocks`` blocks of ``steps``
    consecutive steps (:func:`loop_us`), the functions taking turns block by block: one
    block is one sample of a host whose speed drifts, so each side gets several, interleaved."""
    walls = alternating_times(fns, blocks, 0, sample=lambda fn: loop_us(fn, steps, warmup))
    return [statistics.median(w) for w in walls]


def bench_loop(shape: Shape, variant: Variant, repeats: int, warmup: int) -> List[LoopRow]:
    """One training step of one layer, the weight changing every step: forward, backward from
    a fixed upstream gradient (input and weight gradients, as in the backward section), an
    SGD step with momentum, ``zero_grad``.  Both layers start from the same weights and see
    the same input; their host and wall times are taken in turns."""
    dtype = variant.dtype
    theirs, _ = _layers(shape, dtype)
    x0 = variant.fmt(torch.rand(shape.input_shape(), device="cuda", dtype=dtype))
    impls = ("torch", "phaseconv")
    steps, outputs, g = [], [], None
    with _NoTF32():
        for impl in impls:
            layer, x, opt = loop_state(theirs, impl, x0)

            def step(layer=layer, x=x, opt=opt):
                nonlocal g
                opt.zero_grad(set_to_none=True)
                x.grad = None
                out = layer(x)
                if g is None:
                    g = torch.randn_like(out)  # one upstream gradient for both
                out.backward(g)
                opt.step()
                return out

            outputs.append(step().detach())  # the first step's output
            steps.append(step)
        gpu = [median_gpu_us(step, repeats, warmup) for step in steps]
        host = median_host_us(steps, repeats, warmup)
        wall = loop_walls_us(steps, repeats, LOOP_BLOCKS, warmup)
        kernels = [cuda_activities(step) for step in steps]
    return [LoopRow(shape, variant.name, *row)
            for row in zip(impls, gpu, host, wall, kernels, outputs)]


def loop_table(rows: List[LoopRow], fixed: List[BackwardRow] = ()) -> str:
    fixed_speedup = {(r.shape.name, r.dtype): r.torch_step_us / r.ours_step_us for r in fixed}
    lines = ["| # | shape | dtype | torch loop µs | phaseconv loop µs | speed-up | "
             "fixed-weight fwd+bwd speed-up | torch GPU µs | phaseconv GPU µs | torch host µs | "
             "phaseconv host µs | torch kernels | phaseconv kernels | first output rel. diff |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pairs = {}
    for r in rows:
        pairs.setdefault((r.shape.name, r.dtype), {})[r.impl] = r
    for (name, dtype), pair in pairs.items():
        t, o = pair["torch"], pair["phaseconv"]
        fixed_text = (f"{fixed_speedup[(name, dtype)]:.2f}x" if (name, dtype) in fixed_speedup
                      else "-")
        lines.append(f"| {name} | {t.shape.describe()} | {dtype} | {t.loop_us:.1f} | "
                     f"{o.loop_us:.1f} | {t.loop_us / o.loop_us:.2f}x | {fixed_text} | "
                     f"{t.gpu_us:.1f} | {o.gpu_us:.1f} | {t.host_us:.1f} | {o.host_us:.1f} | "
                     f"{t.kernels} | {o.kernels} | {_rel(o.output, t.output):.1e} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- cpu

class CpuForwardRow(NamedTuple):
    shape: Shape
    threads: int
    torch_ms: float      # torch.nn.ConvTranspose3d (oneDNN), median
    phaseconv_ms: float  # phaseconv.ConvTranspose3d on the CPU engine, median
    max_abs_err: float   # against torch's float32 output


def bench_cpu_forward(shape: Shape, repeats: int, warmup: int) -> CpuForwardRow:
    """One forward in float32 (``torch.no_grad``, bias off), torch's module against
    phaseconv's on the same parameters, taking turns."""
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose3d(**shape.layer_args(), bias=False)
    ours = phaseconv.ConvTranspose3d.from_torch(theirs)
    x = torch.rand(shape.input_shape())
    with torch.no_grad():
        err = (ours(x) - theirs(x)).abs().max().item()
        t_torch, t_ours = alternating_times([lambda: theirs(x), lambda: ours(x)], repeats, warmup)
    return CpuForwardRow(shape, torch.get_num_threads(), statistics.median(t_torch) / 1e3,
                         statistics.median(t_ours) / 1e3, err)


def cpu_forward_table(rows: List[CpuForwardRow]) -> str:
    lines = ["| # | shape (N, C_in->C_out, groups, DxHxW, k, s, p, op) | threads | torch ms | "
             "phaseconv ms | speed-up | max abs error |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.shape.name} | {r.shape.describe()} | {r.threads} | {r.torch_ms:.1f} "
                     f"| {r.phaseconv_ms:.1f} | {r.torch_ms / r.phaseconv_ms:.2f}x | "
                     f"{r.max_abs_err:.1e} |")
    return "\n".join(lines)


# A layer whose call is all overhead: what a call costs the host beyond the arithmetic.
SMALL = Shape("small", 1, 4, 4, 1, (4, 4, 4), (3, 3, 3), (2, 2, 2), (0, 0, 0), (0, 0, 0))


class CpuSmallRow(NamedTuple):
    what: str
    torch_us: float
    phaseconv_us: float


def bench_cpu_small(shape: Shape, repeats: int, warmup: int) -> List[CpuSmallRow]:
    """Host µs per call of a small layer (bias on, float32): the module's forward in
    inference, and forward + backward (input and parameters requiring grad, a fixed upstream
    gradient), torch's module against phaseconv's on the same parameters, taking turns."""
    torch.manual_seed(0)
    theirs = torch.nn.ConvTranspose3d(**shape.layer_args(), bias=True)
    ours = phaseconv.ConvTranspose3d.from_torch(theirs)
    x = torch.rand(shape.input_shape())
    xg = x.clone().requires_grad_()
    g = torch.randn_like(theirs(x))
    params = (xg, theirs.weight, theirs.bias)

    def step(layer):
        return lambda: torch.autograd.grad(layer(xg), params, g)

    with torch.no_grad():
        forward = alternating_times([lambda: theirs(x), lambda: ours(x)], repeats, warmup)
    both = alternating_times([step(theirs), step(ours)], repeats, warmup)
    return [CpuSmallRow(what, statistics.median(t), statistics.median(o))
            for what, (t, o) in (("module forward", forward), ("forward + backward", both))]


def cpu_small_table(shape: Shape, rows: List[CpuSmallRow]) -> str:
    lines = [f"| {shape.describe()}, bias | torch µs | phaseconv µs | phaseconv / torch |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.what} | {r.torch_us:.1f} | {r.phaseconv_us:.1f} | "
                     f"{r.phaseconv_us / r.torch_us:.2f}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- output

def environment(device: str = "cuda") -> str:
    if device == "cpu":
        return (f"- device: {cpu_name()}, {os.cpu_count()} logical CPUs, "
                f"{torch.get_num_threads()} torch threads\n"
                f"- torch {torch.__version__} (oneDNN {_onednn_version()}), Python "
                f"{platform.python_version()}, phaseconv {phaseconv.__version__}")
    props = torch.cuda.get_device_properties(0)
    return (f"- device: {props.name} ({props.multi_processor_count} SMs)\n"
            f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}, Python {platform.python_version()}, "
            f"phaseconv {phaseconv.__version__}")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _onednn_version() -> str:
    """oneDNN's version as torch's build configuration names it (older torch: MKL-DNN)."""
    for line in torch.__config__.show().splitlines():
        if "DNN v" in line:
            return line.split("DNN ", 1)[1].split()[0]
    return "version unknown"


SECTION_TEXT = {
    "forward": ("Forward", "One call, GPU time (CUDA events after warm-up, median of the runs, "
                "bias off, a GPU sleep queued before each call so that the events time GPU "
                "work). phaseconv reads the weight as it is at every call (its one weight pack "
                "kernel included). cuDNN µs: `F.conv_transpose3d` with TF32 off (true fp32); "
                "cuDNN default: torch's default flags. Speed-up is against the TF32-off time. "
                "TFLOP/s: useful work (every tap of every phase) over phaseconv's time. rel. "
                "error: ‖phaseconv − torch‖ / ‖torch‖, torch in float64 (float32 for the "
                "largest shapes)."),
    "backward": ("Backward, weight fixed", "Gradients of the input and the weight "
                 "(`torch.autograd.grad` on a kept graph, bias off) and one forward + backward, "
                 "torch's `nn.ConvTranspose3d` (cuDNN, TF32 off) against phaseconv's layer on "
                 "the same parameters; GPU time as above. grad rel. error: the worse of the two "
                 "gradients, ‖phaseconv − torch‖ / ‖torch‖."),
    "host": ("Host time per call", "Host µs per inference call (`torch.no_grad`, bias on), "
             "median of at least 300 rounds in which the four calls take turns, with the GPU "
             "kept busy by a queued sleep so that a call that "
             "waited for the GPU would show it: torch's `nn.ConvTranspose3d` and "
             "`F.conv_transpose3d` against phaseconv's module and `phaseconv.conv_transpose3d`."),
    "loop": ("Training loop, the weight changing every step", "One step of one layer "
             "(bias off, input requiring grad): forward, backward from a fixed upstream "
             "gradient (as in the backward section), SGD with momentum, "
             "`zero_grad(set_to_none=True)`; TF32 off; both layers start from the same "
             "weights and input. loop µs: wall time per step over consecutive steps (host "
             "and GPU together, what a training loop sees), the median of "
             f"{LOOP_BLOCKS} blocks of them, torch's and phaseconv's taking turns; GPU µs: "
             "CUDA events with the queue primed; host µs: the host's time to issue a step "
             "with the GPU busy (the two taking turns); kernels: CUDA kernels, copies and "
             "memsets per step (torch.profiler). The fixed-weight speed-up is the forward + "
             "backward one of the backward section, same run."),
    "client": ("Client networks (MONAI)", "`phaseconv.bench_client`: MONAI "
               "`UNet(spatial_dims=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), "
               "num_res_units=2)`, `BasicUNet(upsample=\"deconv\")` and `DynUNet` (kernel 3, "
               "strides [1, 2, 2, 2, 2]), 1 -> 2 channels, batch 2 x 1 x 96^3, MSE loss against "
               "a fixed random target, AdamW; fp32 with TF32 off, or AMP bf16 "
               "(`torch.autocast`); eager or `torch.compile` (inductor). Each configuration "
               "runs in a process of its own; the compiled ones compile side by side (whole "
               "torch/phaseconv pairs a group), the eager ones in pairs, then they take "
               "turns on the GPU a block of steps at a time (a lock file; 5 blocks by "
               "default). ms/step: wall time per step over a "
               "block's consecutive steps after warm-up, the median of the blocks; their "
               "range beside it (these steps are often bound by the host, whose speed moves "
               "from process to process and minute to minute). First loss: the first step's "
               "loss (same weights and data). "
               "Transposed conv share (eager): GPU time between CUDA events recorded by "
               "forward and backward hooks around each ConvTranspose3d, over the step's GPU "
               "time, in one extra step (the hooks' own events included). First step s: "
               "compile time included."),
    "cpu": ("CPU: the reference engine against torch's CPU kernels", "float32, "
            "`torch.nn.ConvTranspose3d` (torch's CPU kernels, oneDNN) against "
            "`phaseconv.ConvTranspose3d` (the reference engine, the CPU default) on the same "
            "parameters, the machine's torch threads. Forward: one call in `torch.no_grad`, "
            "bias off, full sweep batch; wall-clock ms per call, median of the runs after "
            "warm-up, the two libraries taking turns call by call (the machine's drift and "
            "its neighbours' load touch both alike); speed-up = torch / phaseconv; max abs "
            "error of phaseconv's float32 output against torch's. Small layer: host µs per "
            "call, median of the same alternating runs: the module's forward in inference, "
            "and forward + backward (`torch.autograd.grad` of the input, weight and bias for "
            "a fixed upstream gradient)."),
}


def write_section(out: str, section: str, body: str, command: str) -> None:
    title, method = SECTION_TEXT[section]
    device = "cpu" if section == "cpu" else "cuda"
    text = (f"## {title}\n\nWritten by `{command}` on {datetime.date.today().isoformat()}.\n\n"
            f"{environment(device)}\n\n{method}\n\n{body}\n")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"results-{section}.md"), "w") as f:
        f.write(text)
    parts = []
    for name in SECTION_TEXT:
        path = os.path.join(out, f"results-{name}.md")
        if os.path.exists(path):
            with open(path) as f:
                parts.append(f.read())
    with open(os.path.join(out, "RESULTS.md"), "w") as f:
        f.write("# Benchmark results\n\n" + "\n".join(parts))


def plot(rows: List[ForwardRow], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r.shape.name for r in rows}, key=lambda n: int(n.split()[0]))
    dtypes = sorted({r.dtype for r in rows})
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(dtypes)
    for i, dt in enumerate(dtypes):
        vals = {r.shape.name: r.cudnn_us / r.phaseconv_us for r in rows if r.dtype == dt}
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

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m phaseconv bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: the CPU engine against torch's CPU kernels (section cpu)")
    parser.add_argument("--sections", default=None,
                        help="default: forward,backward,host,loop,client (cuda); cpu (cpu)")
    parser.add_argument("--dtypes", default="float32,bfloat16,bfloat16-cl",
                        help="comma-separated; -cl: channels_last_3d tensors; the founding "
                        "shape's forward adds float16")
    parser.add_argument("--shapes", default="", help="comma-separated 1-based shape numbers")
    parser.add_argument("--repeats", type=int, default=None,
                        help="default: 50 (cuda); 7 per forward, 400 per small-layer call (cpu)")
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 (cuda); 1 (cpu)")
    parser.add_argument("--out", default="benchmarks", help="folder for the results")
    parser.add_argument("--client", default="", help="options for the client section, "
                        "e.g. 'nets=unet,steps=10' (see phaseconv.bench_client)")
    args = parser.parse_args(argv)
    command = "python -m phaseconv bench " + " ".join(argv)
    if args.device == "cpu":
        return _main_cpu(args, parser, command)
    if not torch.cuda.is_available():
        print("bench: needs a CUDA GPU (--device cpu times the CPU engine)", file=sys.stderr)
        return 2
    sections = (args.sections or "forward,backward,host,loop,client").split(",")
    unknown = set(sections) - set(SECTION_TEXT)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTION_TEXT)}")
    picked = [SWEEP[int(i) - 1] for i in args.shapes.split(",")] if args.shapes else SWEEP
    try:
        dtypes = [Variant.parse(name) for name in args.dtypes.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    r = 50 if args.repeats is None else args.repeats
    w = 10 if args.warmup is None else args.warmup

    def run(section, fn, table, extra=()):
        rows = []
        for shape in picked:
            for variant in (list(dtypes) + list(extra) if shape is SWEEP[0] else dtypes):
                got = fn(shape, variant, r, w)
                rows.extend(got if isinstance(got, list) else [got])
                print(f"{section} {shape.name} {variant.name} done", flush=True)
        print(table(rows), flush=True)
        return rows

    backward_rows = []
    if "forward" in sections:
        rows = run("forward", bench_forward, forward_table, extra=[Variant(torch.float16)])
        write_section(args.out, "forward", forward_table(rows), command)
        plot(rows, os.path.join(args.out, "speedup.png"))
    if "backward" in sections:
        backward_rows = run("backward", bench_backward, backward_table)
        write_section(args.out, "backward", backward_table(backward_rows), command)
    if "host" in sections:
        rows = run("host", lambda s, d, r, w: bench_host(s, d, max(r, 300), w), host_table)
        write_section(args.out, "host", host_table(rows), command)
    if "loop" in sections:
        rows = run("loop", bench_loop, lambda rows: loop_table(rows, backward_rows))
        write_section(args.out, "loop", loop_table(rows, backward_rows), command)
    if "client" in sections:
        from . import bench_client

        body = bench_client.run_section(args.client)
        write_section(args.out, "client", body, command)
    print(f"\nwrote {os.path.join(args.out, 'RESULTS.md')}")
    return 0


def _main_cpu(args, parser, command: str) -> int:
    sections = (args.sections or "cpu").split(",")
    if sections != ["cpu"]:
        parser.error("--device cpu has one section: cpu")
    picked = [SWEEP[int(i) - 1] for i in args.shapes.split(",")] if args.shapes else SWEEP
    warmup = 1 if args.warmup is None else args.warmup
    rows = []
    for shape in picked:
        rows.append(bench_cpu_forward(shape, 7 if args.repeats is None else args.repeats,
                                      warmup))
        print(f"cpu {shape.name} done", flush=True)
    small = bench_cpu_small(SMALL, 400 if args.repeats is None else args.repeats * 80,
                            max(warmup, 20))
    body = (cpu_forward_table(rows) + "\n\nSmall layer, host time per call:\n\n"
            + cpu_small_table(SMALL, small))
    print(body, flush=True)
    write_section(args.out, "cpu", body, command)
    print(f"\nwrote {os.path.join(args.out, 'RESULTS.md')}")
    return 0
