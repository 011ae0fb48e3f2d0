"""The client section of ``python -m phaseconv bench``: MONAI networks, torch against
``phaseconv.convert``, as users train them.

Networks (batch 2 x 1 x 96^3, AdamW, MSE loss against a fixed random target):
``UNet(spatial_dims=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
num_res_units=2)``, ``BasicUNet(upsample="deconv")`` and ``DynUNet`` (kernel 3, strides
[1, 2, 2, 2, 2]); each in fp32 (TF32 off) and AMP bf16, eager and ``torch.compile`` (inductor).

Every configuration runs in a process of its own, as a user's training does.  The compiled
ones compile side by side (compilation is CPU work; ``parallel`` at once, in whole pairs of
torch's and phaseconv's of a network and precision), the eager ones in such pairs; then they
take the GPU in turns, a block of steps at a time (a lock file), so that no measurement shares
the machine and its drift from block to block falls on every configuration alike.  The steps
of these networks are often bound by the host's time to issue them, which moves by tens of
percent from process to process and minute to minute.  Per configuration: the first step's
loss (same weights and data for torch and phaseconv), the wall time per step (the median of
its blocks' means, and their range), and in eager mode the share of the step's GPU time
spent in transposed convolutions (CUDA events around each ConvTranspose3d's forward and
backward, in a separate step).

    python -m phaseconv.bench_client --one unet,phaseconv,amp,compile   # one configuration
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

NETS = ("unet", "basicunet", "dynunet")
IMPLS = ("torch", "phaseconv")
PRECISIONS = ("fp32", "amp")
MODES = ("eager", "compile")


def build(net: str) -> torch.nn.Module:
    from monai.networks import nets

    if net == "unet":
        return nets.UNet(spatial_dims=3, in_channels=1, out_channels=2,
                         channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                         num_res_units=2)
    if net == "basicunet":
        return nets.BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, upsample="deconv")
    if net == "dynunet":
        return nets.DynUNet(spatial_dims=3, in_channels=1, out_channels=2,
                            kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
                            upsample_kernel_size=[2, 2, 2, 2])
    raise ValueError(f"unknown net {net!r}; choose from {NETS}")


def _transposed_share(model, step) -> float:
    """GPU time inside the ConvTranspose3d layers (forward and backward, CUDA events from
    module hooks) over the step's GPU time, one step each."""
    events: List = []

    def mark(*_):
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        events.append(ev)

    layers = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    handles = []
    for m in layers:
        handles += [m.register_forward_pre_hook(mark), m.register_forward_hook(mark),
                    m.register_full_backward_pre_hook(mark), m.register_full_backward_hook(mark)]
    try:
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        torch.cuda.synchronize()
    finally:
        for h in handles:
            h.remove()
    inside = sum(a.elapsed_time(b) for a, b in zip(events[0::2], events[1::2]))
    return inside / start.elapsed_time(stop)


def run_one(net: str, impl: str, precision: str, mode: str, steps: int = 10,
            warmup: int = 3, size: int = 96, batch: int = 2,
            barrier: Optional[str] = None, parties: int = 1, device: str = "cuda",
            blocks: int = 1) -> Dict:
    """One configuration: ``blocks`` blocks of ``steps`` timed steps.  ``barrier``/``parties``:
    wait there for the configurations running beside it, then take the GPU in turns, a block
    at a time (a lock file).  ``device="cpu"`` (small sizes) checks the plumbing without a
    GPU."""
    import phaseconv

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = build(net).to(device)
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    converted = 0
    if impl == "phaseconv":
        phaseconv.convert(model)
        converted = sum(isinstance(m, phaseconv.ConvTranspose3d) for m in model.modules())
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, 1, size, size, size, device=device, generator=gen)
    target = torch.randn(batch, 2, size, size, size, device=device, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if mode == "compile" else model
    amp = precision == "amp"
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = forward(x)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        opt.step()
        losses.append(loss.detach())

    t0 = time.perf_counter()
    step()
    sync()
    first_step_s = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    sync()
    if barrier:
        _wait_for_all(barrier, parties)
    lock = open(barrier + ".lock", "w") if barrier else None
    if lock is not None:
        import fcntl  # (POSIX; imported only where configurations take turns)
    block_ms: List[float] = []
    share = None
    try:
        for b in range(blocks):
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                step()  # untimed: the GPU comes from another configuration's block
                sync()
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                sync()
                block_ms.append((time.perf_counter() - t0) / steps * 1e3)
                if b == blocks - 1 and mode == "eager" and cuda:
                    share = _transposed_share(model, step)
            finally:
                if lock is not None:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            if lock is not None and b < blocks - 1:
                time.sleep(0.05)  # a configuration waiting for the lock takes the next block
    finally:
        if lock is not None:
            lock.close()
    return dict(net=net, impl=impl, precision=precision, mode=mode, converted=converted,
                first_loss=losses[0].item(), step_ms=statistics.median(block_ms),
                step_ms_range=[min(block_ms), max(block_ms)], first_step_s=first_step_s,
                transposed_share=share,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def _wait_for_all(barrier: str, parties: int, timeout_s: float = 1200) -> None:
    with open(barrier, "a") as f:
        f.write("x")
    deadline = time.monotonic() + timeout_s  # a party killed outright never arrives
    while os.path.getsize(barrier) < parties and time.monotonic() < deadline:
        time.sleep(0.2)


def _spawn(config: str, out: str, extra: List[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "phaseconv.bench_client", "--one", config,
                             "--json", out] + extra)


def _side_by_side(configs, barrier: str, steps: str, blocks: str) -> None:
    """``(config, json path)`` pairs in processes of their own, meeting at ``barrier`` and
    taking the GPU in turns; returns when all have ended."""
    running = [_spawn(c, path, ["--steps", steps, "--blocks", blocks, "--barrier", barrier,
                                "--parties", str(len(configs))]) for c, path in configs]
    for proc in running:
        proc.wait()


def run_section(options: str = "") -> str:
    """Every configuration, the compiled ones side by side; the markdown table."""
    opts = dict(kv.split("=", 1) for kv in options.split(",") if kv)
    nets = opts.get("nets", "+".join(NETS)).split("+")
    steps = opts.get("steps", "10")
    blocks = opts.get("blocks", "5")  # a configuration's turns on the GPU
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        modes = opts.get("modes", "+".join(MODES)).split("+")
        precisions = opts.get("precisions", "+".join(PRECISIONS)).split("+")
        # torch's and phaseconv's of a network and precision next to each other, and in one
        # group: they take turns with each other
        compiled = [f"{n},{i},{p},compile" for n in nets for p in precisions for i in IMPLS
                    if "compile" in modes]
        procs = [(c, os.path.join(tmp, f"c{k}.json")) for k, c in enumerate(compiled)]
        # compiled models held on the GPU at once: whole pairs
        group = max(len(IMPLS), int(opts.get("parallel", "6")) // len(IMPLS) * len(IMPLS))
        for g0 in range(0, len(procs), group):
            batch = procs[g0:g0 + group]
            _side_by_side(batch, os.path.join(tmp, f"barrier{g0}"), steps, blocks)
        eager = [(n, p) for n in nets for p in precisions if "eager" in modes]
        for k, (n, p) in enumerate(eager):  # torch's and phaseconv's side by side
            pair = [(f"{n},{i},{p},eager", os.path.join(tmp, f"e{k}{i}.json")) for i in IMPLS]
            _side_by_side(pair, os.path.join(tmp, f"eager{k}"), steps, blocks)
            procs.extend(pair)
        for c, path in procs:
            try:
                with open(path) as f:
                    results.append(json.load(f))
            except OSError:
                net, impl, precision, mode = c.split(",")
                results.append(dict(net=net, impl=impl, precision=precision, mode=mode,
                                    error="failed (see the log)"))
    return table(results)


def table(results: List[Dict]) -> str:
    by = {(r["net"], r["precision"], r["mode"], r["impl"]): r for r in results}
    lines = ["| network | precision | mode | torch ms/step | phaseconv ms/step | speed-up | "
             "blocks' range torch / phaseconv | first loss torch | first loss phaseconv | "
             "rel. diff | transposed conv share torch | phaseconv | layers converted | "
             "first step s (torch / phaseconv) |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for net in NETS:
        for precision in PRECISIONS:
            for mode in MODES:
                t, o = by.get((net, precision, mode, "torch")), by.get((net, precision, mode,
                                                                          "phaseconv"))
                if t is None or o is None:
                    continue
                if "error" in t or "error" in o:
                    lines.append(f"| {net} | {precision} | {mode} | {t.get('error', '')} | "
                                 f"{o.get('error', '')} | | | | | | | | | |")
                    continue

                def share(r):
                    s = r.get("transposed_share")
                    return "-" if s is None else f"{100 * s:.1f}%"

                def spread(r):
                    lo, hi = r["step_ms_range"]
                    return f"{lo:.1f}-{hi:.1f}"

                diff = abs(o["first_loss"] - t["first_loss"]) / abs(t["first_loss"])
                lines.append(
                    f"| {net} | {precision} | {mode} | {t['step_ms']:.1f} | {o['step_ms']:.1f} | "
                    f"{t['step_ms'] / o['step_ms']:.2f}x | {spread(t)} / {spread(o)} | "
                    f"{t['first_loss']:.6f} | "
                    f"{o['first_loss']:.6f} | {diff:.1e} | {share(t)} | {share(o)} | "
                    f"{o['converted']} | {t['first_step_s']:.0f} / {o['first_step_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m phaseconv.bench_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help="net,impl,precision,mode")
    parser.add_argument("--json", help="write the result there")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--barrier")
    parser.add_argument("--parties", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--options", default="",
                        help="for the whole section: nets=a+b,modes=eager+compile,"
                        "precisions=fp32+amp,steps=N,blocks=B,parallel=K")
    args = parser.parse_args(argv)
    if args.one:
        net, impl, precision, mode = args.one.split(",")
        try:
            result = run_one(net, impl, precision, mode, steps=args.steps, barrier=args.barrier,
                             parties=args.parties, device=args.device, size=args.size,
                             blocks=args.blocks)
        except Exception as exc:  # reported in the table; the traceback goes to the log
            if args.barrier:
                _wait_for_all(args.barrier, args.parties)  # do not leave the others waiting
            import traceback

            traceback.print_exc()
            result = dict(net=net, impl=impl, precision=precision, mode=mode,
                          error=f"{type(exc).__name__}: {str(exc)[:80]}")
        print(json.dumps(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f)
        return 0 if "error" not in result else 1
    print(run_section(args.options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
