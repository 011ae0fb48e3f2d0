"""Time the CUDA engine's JIT build and print each unit's compile time from ninja's log.

    python benchmarks/build_times.py             # build (or load) the engine, timed
    python benchmarks/build_times.py --touch F   # append a blank comment to csrc/F first: an
                                                 # edit of one unit, then the timed rebuild
Only the ninja log lines this run wrote are shown, so a rebuild lists what it recompiled.
"""
import argparse
import time

import torch

from phaseconv.engines import cuda


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--touch", help="a file under csrc/ to edit before building")
    args = parser.parse_args()
    major, minor = torch.cuda.get_device_capability()
    directory = cuda.build_root() / cuda._extension(major, minor)[0]
    log = directory / ".ninja_log"
    seen = len(log.read_text().splitlines()) if log.is_file() else 0
    if args.touch:
        with open(cuda.CSRC / args.touch, "a") as f:
            f.write("// edited by benchmarks/build_times.py\n")
    t0 = time.perf_counter()
    cuda.load()
    wall = time.perf_counter() - t0
    lines = log.read_text().splitlines()[seen:] if log.is_file() else []
    units = []
    for line in lines:
        if line.startswith("#"):
            continue
        start, end, _, output = line.split("\t")[:4]
        units.append(((int(end) - int(start)) / 1000, output))
    print(f"engine ready in {wall:.1f} s ({len(units)} ninja steps, {directory})")
    for seconds, output in sorted(units, reverse=True):
        print(f"  {seconds:6.1f} s  {output}")


if __name__ == "__main__":
    main()
