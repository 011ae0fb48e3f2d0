"""The implicit GEMM's tiles side by side: each named tile against the rule's choice and
cuDNN, on the same layer, input layout and result layout, in one process (so one device).
The check behind a rule change (csrc/phase_conv_plan.cpp): run on a GPU machine,

    PYTHONPATH=. python benchmarks/tile_ab.py [--reps 30] [--tiles 8,9,10,11] [--gi-tiles 8,10]

Forward rows time ``phaseconv.engines.cuda.forward`` with ``ForwardKernel("gemm",
gemm_tile=k)`` (a tile a layer cannot take is reported as refused), from an (N, C, D, H, W)
and from a channels_last_3d input, for either result layout; input-gradient rows time
``cuda.backward(..., need_weight=False, grad_input_tile=k)`` from either grad_y layout.  GPU
time only (median of primed runs, bf16), the weight packing included as in a training step.
Every result is checked against cuDNN's before it is timed.
"""
import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phaseconv.bench import SWEEP, median_gpu_us  # noqa: E402
from phaseconv.checks import check_conv_transpose3d, triple  # noqa: E402
from phaseconv.engines import cuda  # noqa: E402

CL = torch.channels_last_3d

# (name, N, C_in, C_out, size, kernel, stride, padding): sweep shapes 3-6 and three smaller
# layers (a 32-tile one: 2 x 256->128 at 4^3, where the persistent tile's 3 stages meet the
# others' 4)
LAYERS = [(f"sweep {s.name}", s.batch, s.in_channels, s.out_channels, s.size, s.kernel,
           s.stride, s.padding, s.output_padding) for s in SWEEP[2:6]] + [
    ("2x256->128 4^3 k4", 2, 256, 128, (4, 4, 4), 4, 2, 1, 0),
    ("2x128->128 16^3 k3", 2, 128, 128, (16, 16, 16), 3, 2, 1, 1),
    ("4x192->96 8^3 k3", 4, 192, 96, (8, 8, 8), 3, 2, 1, 1),
]


def median_us(reps, fn, *args, **kwargs):
    """GPU µs of ``fn(*args, **kwargs)``, median of ``reps`` primed runs."""
    return median_gpu_us(functools.partial(fn, *args, **kwargs), reps, 5)


def cl_copy(fn, *args, **kwargs):
    return fn(*args, **kwargs).contiguous(memory_format=CL)


def label(desc, tile):
    """``rule(kN)`` for the rule's choice, ``kN`` for a named tile."""
    if tile is not None and tile >= 0:
        return f"k{tile}"
    return f"rule(k{desc.split('kind=')[1].split()[0]})" if "kind=" in desc else "rule"


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def run_layer(layer, tiles, gi_tiles, reps, out):
    name, n, cin, cout, size, k, s, p, op = layer
    torch.manual_seed(0)
    x = torch.rand((n, cin) + tuple(size), device="cuda", dtype=torch.bfloat16)
    k3, s, p, op = (triple(k, "kernel_size"), triple(s, "stride"), triple(p, "padding"),
                    triple(op, "output_padding"))
    w = ((torch.rand((cin, cout) + k3, device="cuda") * 2 - 1) /
         (cin * k3[0] * k3[1] * k3[2]) ** 0.5).to(torch.bfloat16)
    args = check_conv_transpose3d(x, w, None, s, p, op, 1, 1)
    y_ref = F.conv_transpose3d(x, w, None, s, p, op, 1, 1)
    gy = torch.rand_like(y_ref)
    out(f"\n## {name}: N={n} {cin}->{cout} {tuple(size)} k{k3} s{s} p{p} op{op}")
    for x_cl in (False, True):
        xi = x.contiguous(memory_format=CL) if x_cl else x.contiguous()
        for y_cl in (False, True):
            head = f"fwd  in {'cl ' if x_cl else 'ncd'} out {'cl ' if y_cl else 'ncd'}"
            # (cuDNN returns the input's layout; the other costs it a copy)
            if y_cl == x_cl:
                cudnn = median_us(reps, F.conv_transpose3d, xi, w, None, s, p, op)
            elif y_cl:
                cudnn = median_us(reps, cl_copy, F.conv_transpose3d, xi, w, None, s, p, op)
            else:
                cudnn = median_us(reps, lambda t: F.conv_transpose3d(t, w, None, s, p, op)
                                  .contiguous(), xi)
            cells = [f"cuDNN {cudnn:7.1f}"]
            for tile in [-1] + tiles:
                kernel = cuda.ForwardKernel("gemm", gemm_tile=tile) if tile >= 0 else "auto"
                try:
                    desc = cuda.describe(args, n, x.dtype, x.device, channels_last=x_cl,
                                         kernel=kernel, out_channels_last=y_cl)
                    y = cuda.forward(xi, w, None, args, kernel=kernel, out_channels_last=y_cl)
                except RuntimeError:
                    cells.append(f"k{tile} refused")
                    continue
                err = rel_err(y, y_ref)
                assert err < 2e-2, (name, tile, err)
                us = median_us(reps, cuda.forward, xi, w, None, args, kernel=kernel,
                               out_channels_last=y_cl)
                cells.append(f"{label(desc, tile)} {us:7.1f}")
            out(f"{head}: " + " | ".join(cells))
    gx_ref = torch.ops.aten.convolution_backward(
        gy, x, w, None, s, p, (1, 1, 1), True, op, 1,
        (True, False, False))[0]
    for g_cl in (False, True):
        gyi = gy.contiguous(memory_format=CL) if g_cl else gy.contiguous()
        xi = x.contiguous(memory_format=CL) if g_cl else x
        cudnn = median_us(reps, torch.ops.aten.convolution_backward, gyi, xi, w, None, s, p,
                          (1, 1, 1), True, op, 1, (True, False, False))
        cells = [f"cuDNN {cudnn:7.1f}"]
        for tile in [None] + gi_tiles:
            kw = dict(grad_input_kernel="implicit-gemm", grad_input_tile=tile) \
                if tile is not None else {}
            try:
                desc = cuda.backward_plan(args, n, x.dtype, x.device, **kw)[1] \
                    .grad_input_description
                gx = cuda.backward(gyi, xi, w, args, need_weight=False, **kw)[0]
            except RuntimeError:
                cells.append(f"k{tile} refused")
                continue
            err = rel_err(gx, gx_ref)
            assert err < 2e-2, (name, tile, err)
            us = median_us(reps, cuda.backward, gyi, xi, w, args, need_weight=False, **kw)
            cells.append(f"{label(desc, tile)} {us:7.1f}")
        out(f"gi   grad_y {'cl ' if g_cl else 'ncd'}: " + " | ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--tiles", default="8,9,10,11")
    parser.add_argument("--gi-tiles", default="8,10")
    parser.add_argument("--layers", default=None, help="indices into LAYERS (default: all)")
    opts = parser.parse_args(argv)
    tiles = [int(t) for t in opts.tiles.split(",") if t]
    gi_tiles = [int(t) for t in opts.gi_tiles.split(",") if t]
    picked = LAYERS if opts.layers is None else [LAYERS[int(i)] for i in opts.layers.split(",")]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}; bf16, GPU µs, median of {opts.reps} primed runs")
    failed = 0
    for layer in picked:
        try:
            run_layer(layer, tiles, gi_tiles, opts.reps, lambda line: print(line, flush=True))
        except AssertionError as wrong:  # a tile off cuDNN's result: say so, time the rest
            print(f"WRONG RESULT {wrong}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
