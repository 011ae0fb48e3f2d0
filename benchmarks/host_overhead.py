"""The host time phaseconv's Python adds to a call, without a GPU: the CUDA engine's plans are
replaced by stand-ins that launch nothing (their results are empty tensors of the right
shapes), so what is timed is the call path itself - argument checks and the call-plan cache,
autocast, the autograd.Function, the backward's dispatch - on CPU tensors.

    python benchmarks/host_overhead.py [--profile] [--runs N]

Median µs per call over alternating runs, beside torch's own autograd cost for one cheap op
(relu's forward + backward).  The C++ plans' own host time (the launches) is not in it: that
needs the GPU (``python -m phaseconv bench --sections host,loop``).
"""
import argparse
import cProfile
import pstats
import statistics
import time

import torch

import phaseconv
from phaseconv import engines, ops
from phaseconv.engines import cuda


class _Tables:
    ready: list = []  # nothing to wait for


def _forward_plan(args, batch, dtype, device, channels_last, has_bias, out_channels_last=False):
    shape = (batch, args.out_channels) + tuple(args.out_shape)
    return _Tables(), (lambda x, w, b: torch.empty(shape, dtype=x.dtype))


def _backward_plan(args, batch, dtype, device):
    def launch(gy, x, w, need_x, need_w, x_channels_last):
        fmt = torch.channels_last_3d if x_channels_last else torch.contiguous_format
        return (torch.empty_like(x, memory_format=fmt) if need_x else None,
                torch.empty_like(w) if need_w else None)
    return _Tables(), launch


def _stub_cuda_engine() -> None:
    cuda.forward_plan, cuda.backward_plan = _forward_plan, _backward_plan
    ops.engines.choose = lambda device, requested=None, stride=(1, 1, 1): \
        engines.EngineChoice("cuda", "stand-in plans (benchmarks/host_overhead.py)")


def _median_us(fn, runs: int) -> float:
    for _ in range(min(200, runs)):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true",
                        help="cProfile 2000 forward + backward steps after the timings")
    parser.add_argument("--runs", type=int, default=3000, help="timed calls a median")
    opts = parser.parse_args(argv)
    _stub_cuda_engine()
    layer = phaseconv.ConvTranspose3d(8, 8, 3, stride=2, padding=1, output_padding=1)
    x = torch.rand(1, 8, 2, 2, 2, requires_grad=True)

    def step():
        y = layer(x)
        torch.autograd.backward(y, torch.ones_like(y))

    def step_torch():
        y = torch.relu(x)
        torch.autograd.backward(y, torch.ones_like(y))

    with torch.no_grad():
        inference = _median_us(lambda: layer(x), opts.runs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"module forward, no grad:      {inference:7.1f} µs")
    print(f"module forward, graph kept:   {_median_us(lambda: layer(x), opts.runs):7.1f} µs")
    print(f"forward + backward:           {_median_us(step, opts.runs):7.1f} µs")
    print(f"torch.relu forward + backward {_median_us(step_torch, opts.runs):7.1f} µs "
          "(torch's autograd alone)")
    if opts.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(2000):
            step()
        profile.disable()
        pstats.Stats(profile).sort_stats("cumtime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
