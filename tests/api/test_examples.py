"""The founding example, end to end: the KernelBench check and ``python -m phaseconv``."""
import os
import sys

from conftest import ROOT, run_kernelbench_check

import phaseconv.__main__ as main_job


def test_kernelbench_check_prints_models_match():
    run_kernelbench_check()


def test_kernelbench_model_new_loads_original_state_dict():
    sys.path.insert(0, os.path.join(ROOT, "examples", "kernelbench"))
    try:
        import model
        import model_new
    finally:
        sys.path.pop(0)
    original = model.Model(*model.get_init_inputs())
    new = model_new.ModelNew(*model.get_init_inputs())
    assert list(new.state_dict()) == list(original.state_dict()) == ["conv_transpose3d.weight"]
    new.load_state_dict(original.state_dict())


def test_main_job_on_cpu(capsys):
    assert main_job.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "allclose(atol=1e-05): PASS" in out
    assert "87.5% saved" in out and "(1,1,1)" in out
    assert out.count("MACs:") == 1  # the total, once
    # per phase the share of zero insertion's MACs it skips: (0,0,0) has 9 of 105 taps
    assert "91.4%" in out and "77.1%" in out
    assert "the reference engine: each phase runs as one of torch's dense convolutions" in out


def test_host_overhead_script_runs_its_call_path():
    """``benchmarks/host_overhead.py`` times phaseconv's call path with stand-in CUDA plans
    (forward, the backward's launch with its layout flag, autograd); a few calls in a process
    of its own (it replaces the engine's planners) must run through and print every row."""
    import subprocess

    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_overhead.py"),
                           "--runs", "3"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    for row in ("module forward, no grad:", "module forward, graph kept:",
                "forward + backward:", "torch.relu forward + backward"):
        assert row in done.stdout, done.stdout
