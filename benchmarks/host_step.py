"""Where the host time of one training step goes, on the GPU (the loop section's step: forward,
backward from a fixed upstream gradient, SGD with momentum, ``zero_grad``), torch's layer
against phaseconv's:

    python benchmarks/host_step.py [--shapes 4] [--dtypes bfloat16] [--amp]

For each part of the step, the host µs it takes with the GPU kept busy
(``bench.median_host_us``: a queued sleep, so a part that waited for the GPU would show it),
then torch.profiler's CPU table of a few steps (self CPU time by operator and CUDA runtime
call).  ``--amp``: float32 parameters under ``torch.autocast(dtype=bfloat16)``.
"""
import argparse

import torch

from phaseconv import bench


def _parts(layer, x, g, opt, amp):
    """The step cut into its parts, each a function of the state the parts share."""
    state = {}

    def zero():
        opt.zero_grad(set_to_none=True)
        x.grad = None

    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            state["out"] = layer(x)

    def backward():
        state.pop("out").backward(g)

    def step():
        opt.step()

    return [("zero_grad", zero), ("forward", forward), ("backward", backward),
            ("optimizer", step)]


def _profile(parts, steps: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            for _, fn in parts:
                fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4", help="1-based sweep shapes (bench's)")
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--rows", type=int, default=22)
    opts = parser.parse_args(argv)
    shapes = [bench.SWEEP[int(s) - 1] for s in opts.shapes.split(",")]
    for shape in shapes:
        for name in opts.dtypes.split(","):
            variant = bench.Variant.parse(name)
            dtype = torch.float32 if opts.amp else variant.dtype
            theirs, _ = bench._layers(shape, dtype)
            x0 = variant.fmt(torch.rand(shape.input_shape(), device="cuda", dtype=dtype))
            g = None
            print(f"## shape {shape.name} ({shape.describe()}), {variant.name}"
                  f"{' under autocast bf16' if opts.amp else ''}")
            for impl in ("torch", "phaseconv"):
                layer, x, opt = bench.loop_state(theirs, impl, x0)
                if g is None:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=opts.amp):
                        g = torch.randn_like(layer(x))
                parts = _parts(layer, x, g, opt, opts.amp)
                # the parts in turn, the GPU kept busy: bench's host timer, 20 rounds of warm-up
                host = dict(zip((name for name, _ in parts),
                                bench.median_host_us([fn for _, fn in parts], opts.rounds, 20)))
                total = sum(host.values())
                print(f"{impl:10s} host µs: " + ", ".join(f"{k} {v:.1f}" for k, v in host.items())
                      + f"; step {total:.1f}")
                print(_profile(parts, 20, opts.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
