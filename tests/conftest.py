"""Shared test settings: hypothesis profiles and the GPU marker.

The tests follow the package's layers, one folder each: geometry/ (phase tables), packing/
(weight layouts and index maps), plan/ (the CUDA kernel plan, on the CPU), engines/ (engine
choice, the reference engine's backward), ops/ (derivatives, NaN/Inf, the functional against
torch), api/ (modules, convert, explain, bad and hostile input, training, AMP, compile,
examples) and gpu/ (the CUDA engine and the public API on a GPU; gpu_sanitize.py is the
compute-sanitizer driver).  Helpers shared across folders live here: strategies.py,
plan_harness.py (with plan_shim.cpp).

Profiles: ``ci`` (selected when $CI is set: derandomized, no deadline, 300 examples for the
main forward property), ``dev`` (the default), ``quick`` (the founding-stack venv in CI).
$HYPOTHESIS_PROFILE overrides the choice.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=300, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=100, **_COMMON)
settings.register_profile("quick", max_examples=40, derandomize=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or
                      ("ci" if os.environ.get("CI") else "dev"))


def pytest_make_parametrize_id(config, val, argname):
    """Readable test ids: a dtype by its name, a layer case by its number."""
    if isinstance(val, torch.dtype):
        return str(val).replace("torch.", "")
    if argname in ("case", "layer") and isinstance(val, int):
        return f"{argname}{val}"
    return None


def examples(fraction: float) -> int:
    """A share of the profile's example budget, for properties costlier than the main one."""
    return max(10, int(settings().max_examples * fraction))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_kernelbench_check() -> str:
    """Run the user's verification script (examples/kernelbench/check.py); its output."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "kernelbench",
                                                          "check.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout
    assert "Models match! All outputs are close." in result.stdout
    return result.stdout
