#!/usr/bin/env bash
# One call on the GPU machine: install, build, GPU tests, sanitizers, the founding example,
# the KernelBench check and the benchmark, with full logs under $OUT.
#   usage: bash benchmarks/device_run.sh [quick]     (quick: build, tests and bench only)
set -u
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/phaseconv-out}"; mkdir -p "$OUT"
status=0
# logged NAME LINES CMD...: run CMD with its output in $OUT/NAME.log, show the last LINES lines.
logged() {
    local name=$1 lines=$2; shift 2
    echo; echo "== $name: $*"
    "$@" >"$OUT/$name.log" 2>&1; local rc=$?
    tail -n "$lines" "$OUT/$name.log"
    if [ $rc -ne 0 ]; then echo "!! $name failed (exit $rc)"; status=1; fi
}

nvidia-smi -L
pip install -q --no-build-isolation --no-deps -e . >"$OUT/install.log" 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the editable install alone was not seen
logged build 3 python -c "import time; t=time.time(); from phaseconv.engines import cuda; \
cuda.load(); print(f'built in {time.time()-t:.1f} s')"
logged gpu_tests 15 python -m pytest -o addopts="" -p no:cacheprovider -q -m cuda tests
if [ "${1:-}" != "quick" ]; then
    logged memcheck 3 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python tests/gpu_sanitize.py
    logged racecheck 3 compute-sanitizer --tool racecheck --error-exitcode 9 \
        python tests/gpu_sanitize.py
    logged kernelbench 2 python examples/kernelbench/check.py
    logged main 8 python -m phaseconv
fi
logged bench 20 python -m phaseconv bench --out "$OUT"
exit $status
