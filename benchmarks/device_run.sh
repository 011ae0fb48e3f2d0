#!/usr/bin/env bash
# One call on the GPU machine, in stages, logs under $OUT (all.log, one <stage>.log each):
#   bash benchmarks/device_run.sh STAGE...
#   build       install (editable, no deps), carried wheels (.whl/), build the CUDA engine
#               (timed, each unit's compile time)
#   rebuild     edit one kernel family's unit and rebuild, timed (what ninja recompiled)
#   tests       the GPU test suite (pytest -m cuda, 8 workers)
#   memcheck, racecheck   compute-sanitizer on tests/gpu/gpu_sanitize.py ($SANITIZE_TIMEOUT s each;
#               $SANITIZE_ARGS, e.g. --part 1/3: racecheck of the whole workload takes minutes)
#   main        python -m phaseconv, the KernelBench check
#   bench:S     python -m phaseconv bench --sections S (comma-separated sections)
#   profile     a short Nsight Compute profile of the founding example
#   ab          benchmarks/kernel_dev.py ($AB_ARGS) timing a base tree's phaseconv, then this
#               one's, each with its own extension cache: the base is .ab_base.tar in the root
#               (made here by `git archive REV -o .ab_base.tar`; git ignores it, so the run
#               names it in its carry)
#   l2          L2 and DRAM bytes, L2 and SM throughput, duration of the implicit GEMM on
#               sweep shapes 4-6 (bf16, channels-last input; ncu metrics, no replay of sections)
#   packs       the tensor-core weight layouts gathered against packed by tiles, every sweep
#               shape, float32 and bfloat16 (benchmarks/kernel_dev.py --packs)
#   macs        executed against useful multiply-adds, every kernel family (ncu,
#               benchmarks/executed_macs.py, executed-macs.md; $MACS_ARGS, e.g. --cases ...)
#   aot         the ahead-of-time engine: a wheel built with PHASECONV_BUILD_CUDA=1 for
#               TORCH_CUDA_ARCH_LIST="8.0;9.0", installed alone (no checkout, no editable
#               install on the path), then the GPU suite with no nvcc on PATH, no CUDA_HOME
#               and an empty extension cache that must stay empty (nothing compiled)
# Every stage runs even when an earlier one failed; the exit status says whether any did.
set -u
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/phaseconv-out}"; mkdir -p "$OUT"
status=0
stage() {  # stage NAME LINES CMD...: run CMD, log it, show its last LINES
    local name=$1 lines=$2; shift 2
    echo "== $name: $*" | tee -a "$OUT/all.log"
    local t0=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1; local rc=$?
    cat "$OUT/$name.log" >>"$OUT/all.log"; tail -n "$lines" "$OUT/$name.log"
    echo "   ($name: $((SECONDS - t0)) s, exit $rc)"
    if [ $rc -ne 0 ]; then status=1; fi
}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
for s in "$@"; do
    case "$s" in
    build)
        nvidia-smi -L
        if ls .whl/*.whl >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --upgrade --target /tmp/site .whl/*.whl >>"$OUT/all.log" 2>&1
        fi
        export PYTHONPATH="$PYTHONPATH:/tmp/site"
        python3 -m pip install -q --no-build-isolation --no-deps -e . >>"$OUT/all.log" 2>&1
        stage build 14 python3 benchmarks/build_times.py ;;
    rebuild)
        stage rebuild 6 python3 benchmarks/build_times.py --touch phase_conv_fwd_tiled.cu ;;
    tests)
        stage tests 25 python3 -m pytest -o addopts="" -p no:cacheprovider -q -m cuda -n 8 \
            tests ;;
    memcheck|racecheck)
        stage "$s" 3 timeout "${SANITIZE_TIMEOUT:-900}" compute-sanitizer --tool "$s" \
            --error-exitcode 9 python3 tests/gpu/gpu_sanitize.py ${SANITIZE_ARGS:-} ;;
    main)
        stage main 6 python3 -m phaseconv
        stage kernelbench 2 python3 examples/kernelbench/check.py ;;
    bench:*)
        stage "bench-$(echo "${s#bench:}" | tr , -)" 60 python3 -m phaseconv bench --sections "${s#bench:}" \
            --out "$OUT" ${BENCH_ARGS:-} ;;
    profile)
        stage profile 40 ncu -k "regex:mma_|tiled_|gemm_|gather" --launch-skip 2 \
            --launch-count 4 --section SpeedOfLight --section Occupancy \
            python3 benchmarks/profile_founding.py ;;
    ab)
        rm -rf /tmp/ab_base /tmp/ab_ext && mkdir -p /tmp/ab_base /tmp/ab_ext
        tar xf .ab_base.tar -C /tmp/ab_base
        stage ab-base 30 env TORCH_EXTENSIONS_DIR=/tmp/ab_ext PHASECONV_TREE=/tmp/ab_base \
            PYTHONPATH=/tmp/ab_base python3 benchmarks/kernel_dev.py --tag base ${AB_ARGS:-}
        stage ab-head 30 python3 benchmarks/kernel_dev.py --tag head ${AB_ARGS:-} ;;
    l2)
        stage l2 60 ncu -k "regex:gemm_cl" --metrics "gpu__time_duration.sum,lts__t_bytes.sum,\
dram__bytes.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,\
sm__throughput.avg.pct_of_peak_sustained_elapsed" \
            python3 benchmarks/profile_shapes.py --shapes 3,4,5 --dtype bf16 --channels-last ;;
    packs)
        stage packs 20 python3 benchmarks/kernel_dev.py --packs --dtypes fp32,bf16 ;;
    macs)
        stage macs 22 python3 benchmarks/executed_macs.py --out "$OUT" ${MACS_ARGS:-} ;;
    aot)
        python3 -m pip uninstall -y -q phaseconv >>"$OUT/all.log" 2>&1
        rm -rf /tmp/aot && mkdir -p /tmp/aot/wheel /tmp/aot/site /tmp/aot/ext /tmp/aot/run
        stage aot-build 3 env PHASECONV_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" \
            MAX_JOBS="$(nproc)" python3 -m pip wheel -q --no-build-isolation --no-deps \
            -w /tmp/aot/wheel .
        ls -la /tmp/aot/wheel | tee -a "$OUT/all.log"
        python3 -m pip install -q --no-index --no-deps --target /tmp/aot/site \
            /tmp/aot/wheel/phaseconv-*.whl >>"$OUT/all.log" 2>&1
        cp -r tests /tmp/aot/run/tests
        cp -r examples /tmp/aot/run/examples
        # no nvcc, no CUDA_HOME, no checkout: the installed wheel and the carried wheels only
        py="$(python3 -c 'import sys; print(sys.executable)')"
        nocuda_path="$(echo "$PATH" | tr : '\n' | grep -vi cuda | paste -sd: -)"
        stage aot-tests 25 env -u CUDA_HOME -u CUDA_PATH PATH="$nocuda_path" \
            PYTHONPATH=/tmp/aot/site:/tmp/site TORCH_EXTENSIONS_DIR=/tmp/aot/ext PY="$py" \
            sh -c 'cd /tmp/aot/run && ! command -v nvcc && echo "no nvcc on PATH" &&
"$PY" -c "import phaseconv, sys; from phaseconv.engines import cuda; m = cuda.load();
print(phaseconv.__file__, m.__name__, m.archs); sys.exit(m.__name__ != \"phaseconv._engine\")" &&
"$PY" -m pytest -o addopts="" -p no:cacheprovider -q -m cuda -n 8 tests &&
test -z "$(ls -A /tmp/aot/ext)" && echo "extension cache still empty: nothing was compiled"'
        ;;
    *) echo "unknown stage $s"; status=1 ;;
    esac
done
exit $status
