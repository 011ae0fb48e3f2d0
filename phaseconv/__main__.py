"""``python -m phaseconv``: run the founding example, check it against torch, show the phases.

``python -m phaseconv bench`` times the sweep against cuDNN instead (see ``phaseconv.bench``);
``python -m phaseconv info`` says what this machine offers (versions, GPUs and their engines,
the CUDA engine's build tools and cache).

Uses the GPU when there is one, else the CPU, and finishes in well under a minute on two
CPU cores.  Exits non-zero when phaseconv and torch disagree.
"""
import argparse
import statistics
import sys
import time

import torch

import phaseconv
from phaseconv import founding


def _time_ms(fn, device: torch.device, repeats: int, warmup: int) -> float:
    """Median time of ``fn()`` in ms: GPU time between CUDA events (as ``bench`` measures it),
    or wall time on the CPU."""
    if device.type == "cuda":
        from phaseconv.bench import median_gpu_us

        return median_gpu_us(fn, repeats, warmup) / 1e3
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_founding_example(device: torch.device) -> bool:
    torch.manual_seed(0)
    original = torch.nn.ConvTranspose3d(**founding.LAYER_ARGS).to(device).eval()
    layer = phaseconv.ConvTranspose3d(**founding.LAYER_ARGS).to(device).eval()
    layer.load_state_dict(original.state_dict())
    x = torch.rand(*founding.INPUT_SHAPE, device=device)

    print("phaseconv {} | torch {} | device: {}".format(
        phaseconv.__version__, torch.__version__,
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (no GPU found)"))
    print()
    report = phaseconv.explain(layer, founding.INPUT_SHAPE)
    print(report)
    print()

    with torch.no_grad():
        expected = original(x)
        got = layer(x)
    shape_ok = tuple(got.shape) == founding.OUTPUT_SHAPE
    max_err = (got - expected).abs().max().item()
    match = shape_ok and torch.allclose(got, expected, atol=founding.ATOL)
    print("output {}  max |phaseconv - torch| = {:.2e}  allclose(atol={:g}): {}".format(
        tuple(got.shape), max_err, founding.ATOL, "PASS" if match else "FAIL"))

    repeats, warmup = (50, 10) if device.type == "cuda" else (3, 1)
    with torch.no_grad():
        t_torch = _time_ms(lambda: original(x), device, repeats, warmup)
        t_phase = _time_ms(lambda: layer(x), device, repeats, warmup)
    print(f"time (median of {repeats}): torch {t_torch:.3f} ms, phaseconv {t_phase:.3f} ms  ->  "
          f"{t_torch / t_phase:.2f}x")
    if report.engine.name == "reference":
        print("(the reference engine: each phase runs as one of torch's dense convolutions, "
              "so this speed-up\n compares torch's CPU kernels with each other and varies with "
              "torch's version and the CPU;\n the custom kernel runs on CUDA GPUs of compute "
              "capability 8.0 or newer)")
    return match


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from phaseconv import bench

        return bench.main(argv[1:])
    if argv and argv[0] == "info":
        from phaseconv import info

        print(info.report())
        return 0
    parser = argparse.ArgumentParser(prog="python -m phaseconv", description=__doc__)
    parser.add_argument("--device", default=None,
                        help="cpu or cuda[:i] (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return 0 if run_founding_example(device) else 1


if __name__ == "__main__":
    sys.exit(main())
