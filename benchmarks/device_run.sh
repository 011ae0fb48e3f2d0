#!/usr/bin/env bash
# One call on the GPU machine: install, build, GPU tests, sanitizers, the founding example,
# the KernelBench check, the benchmark and a short Nsight Compute profile of the founding
# example, with logs under $OUT (all.log, gpu_tests.log, RESULTS.md, speedup.png).
#   usage: bash benchmarks/device_run.sh [quick]     (quick: build, tests and bench only)
#   SKIP_TESTS=1 skips the GPU test suite (when a call that just ran it on the same tree
#   passed: the whole script can exceed one 10-minute device call).
set -u
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/phaseconv-out}"; mkdir -p "$OUT"
status=0
# logged NAME LINES CMD...: run CMD, append its output to $OUT/all.log, show its last LINES.
logged() {
    local name=$1 lines=$2; shift 2
    echo; echo "== $name: $*" | tee -a "$OUT/all.log"
    "$@" >"$OUT/step.log" 2>&1; local rc=$?
    cat "$OUT/step.log" >>"$OUT/all.log"; tail -n "$lines" "$OUT/step.log"
    if [ $rc -ne 0 ]; then echo "!! $name failed (exit $rc)" | tee -a "$OUT/all.log"; status=1; fi
}

nvidia-smi -L
pip install -q --no-build-isolation --no-deps -e . >"$OUT/all.log" 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the editable install alone was not seen
logged build 3 python -c "import time; t=time.time(); from phaseconv.engines import cuda; \
cuda.load(); print(f'built in {time.time()-t:.1f} s')"
if [ -z "${SKIP_TESTS:-}" ]; then
    logged gpu_tests 15 python -m pytest -o addopts="" -p no:cacheprovider -q -m cuda tests
    cp "$OUT/step.log" "$OUT/gpu_tests.log"
fi
if [ "${1:-}" != "quick" ]; then
    logged memcheck 3 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python tests/gpu_sanitize.py
    logged racecheck 3 compute-sanitizer --tool racecheck --error-exitcode 9 \
        python tests/gpu_sanitize.py
    logged kernelbench 2 python examples/kernelbench/check.py
    logged main 8 python -m phaseconv
fi
logged bench 20 python -m phaseconv bench --out "$OUT"
if [ "${1:-}" != "quick" ] && command -v ncu >/dev/null; then
    logged profile 40 ncu -k "regex:mma_|tiled_|gemm_" --launch-skip 1 --launch-count 4 \
        --section SpeedOfLight \
        --section Occupancy --section WarpStateStats --section LaunchStats \
        python benchmarks/profile_founding.py
fi
rm -f "$OUT/step.log"
exit $status
