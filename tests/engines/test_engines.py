"""Engine choice and the CUDA engine's build path, checked without a GPU."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import phaseconv
from phaseconv import engines


def test_default_engine_follows_the_device(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    assert engines.choose(torch.device("cpu")).name == "reference"
    assert engines.choose(torch.device("cuda", 0)).name == "cuda"
    assert "default" in engines.choose(torch.device("cuda", 0)).reason


def test_engine_forced_by_argument_or_environment(monkeypatch):
    monkeypatch.setenv(engines.ENGINE_ENV, "reference")
    choice = engines.choose(torch.device("cuda", 0))
    assert choice == ("reference", "forced by $PHASECONV_ENGINE")
    assert engines.choose(torch.device("cuda", 0), "cuda").reason == "forced by engine= argument"
    monkeypatch.setenv(engines.ENGINE_ENV, "auto")
    assert engines.choose(torch.device("cpu")).name == "reference"
    monkeypatch.setenv(engines.ENGINE_ENV, "turbo")
    with pytest.raises(ValueError, match="engine"):
        engines.choose(torch.device("cpu"))


def test_gpus_below_sm80_run_the_reference_engine_by_rule(monkeypatch):
    """Checked before anything compiles: the default is the reference engine, explain()
    says why, and forcing the cuda engine names the GPU and the requirement."""
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.setattr(engines, "capability", lambda device: (7, 5))
    cuda0 = torch.device("cuda", 0)
    choice = engines.choose(cuda0)
    assert choice.name == "reference" and "sm_75" in choice.reason and "sm_80" in choice.reason
    with pytest.raises(RuntimeError, match="sm_75.*sm_80"):
        engines.choose(cuda0, "cuda")
    report = phaseconv.explain(dict(in_channels=2, out_channels=2, kernel_size=3),
                               (1, 2, 3, 3, 3), device="cuda")
    assert report.engine.name == "reference" and "sm_75" in str(report)
    monkeypatch.setattr(engines, "capability", lambda device: (8, 0))
    assert engines.choose(cuda0).name == "cuda"


def test_strides_past_the_kernels_residue_table_run_the_reference_engine(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.setattr(engines, "capability", lambda device: (9, 0))
    cuda0 = torch.device("cuda", 0)
    assert engines.choose(cuda0, stride=(16, 16, 16)).name == "cuda"  # 4096 residues
    choice = engines.choose(cuda0, stride=(17, 16, 16))
    assert choice.name == "reference" and "4352 residue triples" in choice.reason
    with pytest.raises(ValueError, match="stride"):
        engines.choose(cuda0, "cuda", stride=(10**9, 1, 1))


def test_cuda_engine_refuses_cpu_tensors(monkeypatch):
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    x, w = torch.randn(1, 2, 3, 3, 3), torch.randn(2, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="cuda engine needs CUDA tensors"):
        phaseconv.conv_transpose3d(x, w, engine="cuda")
    report = phaseconv.explain(dict(in_channels=2, out_channels=2, kernel_size=3),
                               (1, 2, 3, 3, 3), device="cuda")
    assert report.engine.name == "cuda" and "engine: cuda" in str(report)


def test_build_failure_carries_the_compiler_message(monkeypatch, capsys):
    from torch.utils import cpp_extension

    from phaseconv.engines import cuda

    def broken(**kwargs):
        assert kwargs["name"].startswith("phaseconv_cuda_sm90_")
        assert any("arch=compute_90" in f for f in kwargs["extra_cuda_cflags"])
        # every source that ships is compiled, each as its own unit
        shipped = sorted(p.name for p in cuda.CSRC.iterdir() if p.suffix in (".cu", ".cpp"))
        assert sorted(Path(s).name for s in kwargs["sources"]) == shipped
        raise subprocess.CalledProcessError(1, ["ninja"], output=b"phase_conv_fwd.cu(12): "
                                            b"error: expected a \";\"")

    monkeypatch.setattr(cpp_extension, "load", broken)
    with pytest.raises(RuntimeError, match="building the extension failed") as info:
        cuda._build(9, 0)
    assert 'error: expected a ";"' in str(info.value)
    assert "compiling the CUDA engine for sm_90" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_load_without_cuda_is_a_clear_error():
    from phaseconv.engines import cuda

    with pytest.raises(RuntimeError, match="CUDA is not available"):
        cuda.load()


def test_package_carries_its_cuda_sources():
    from phaseconv.engines import cuda

    names = {p.name for p in cuda.CSRC.iterdir()}
    assert {"phase_conv_fwd.cu", "phase_conv_fwd.cuh", "phase_conv.cpp"} <= names


def test_source_hash_covers_every_shipped_source():
    """An edit to any file of csrc/ changes the hash that decides whether a built engine is
    used, and every .cu and .cpp file is compiled."""
    from phaseconv.engines import cuda

    names = {p.name for p in cuda.CSRC.iterdir() if p.suffix in (".h", ".cuh", ".cu", ".cpp")}
    assert names == set(cuda._SOURCES)
    assert {n for n in names if n.endswith((".cu", ".cpp"))} == set(cuda._CUDA_SOURCES +
                                                                    cuda._CPP_SOURCES)


def test_info_reports_versions_engines_and_the_build_cache():
    result = subprocess.run([sys.executable, "-m", "phaseconv", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout
    assert f"torch {torch.__version__}" in result.stdout
    assert "build cache:" in result.stdout and "prebuilt engine:" in result.stdout
    if torch.cuda.is_available():
        assert "GPU 0:" in result.stdout and " engine (" in result.stdout
    else:
        assert "GPU: none" in result.stdout


def test_prebuilt_engine_is_used_only_for_its_sources_and_architectures(monkeypatch):
    """An ahead-of-time engine (setup.py, PHASECONV_BUILD_CUDA=1) replaces the first-use
    build only where it holds the GPU's architecture and was built from the shipped
    sources."""
    import types

    from phaseconv.engines import cuda

    fake = types.ModuleType("phaseconv._engine")
    fake.source_hash = "h" + cuda.source_hash()
    fake.archs = "sm80_sm90"
    monkeypatch.setitem(sys.modules, "phaseconv._engine", fake)
    assert cuda.prebuilt(9, 0) is fake and cuda.prebuilt(8, 0) is fake
    assert cuda.prebuilt(8, 6) is None  # not among its architectures: compiled on first use
    fake.source_hash = "h0123456789abcdef"
    assert cuda.prebuilt(9, 0) is None  # other sources
    monkeypatch.delitem(sys.modules, "phaseconv._engine")
    assert cuda.prebuilt(9, 0) is None  # none installed


def test_sm90_builds_target_sm90a_with_cuda_12(monkeypatch):
    """The first-use build compiles sm_90a (the warpgroup kernels, PHASECONV_SM90A) on sm_90
    with CUDA 12 or newer, the GPU's own architecture otherwise; the flags name the build."""
    from phaseconv.engines import cuda

    for version, target in (("12.4", "90a"), ("13.0", "90a"), ("11.8", "90"), (None, "90")):
        monkeypatch.setattr(torch.version, "cuda", version)
        assert cuda.build_target(9, 0) == target
        assert cuda.build_target(8, 0) == "80" and cuda.build_target(10, 0) == "100"
        name, flags = cuda._extension(9, 0)
        assert f"-gencode=arch=compute_{target},code=sm_{target}" in flags
        assert ("-DPHASECONV_SM90A" in flags) == (target == "90a")
        assert "-DPHASECONV_SM90A" not in cuda._extension(8, 0)[1]


def test_warpgroup_kernels_need_sm90_and_an_sm90a_engine(monkeypatch):
    """The plans offer the warpgroup kernels on an sm_90 GPU whose engine was built for
    sm_90a (DevInfo::wgmma), nowhere else: an sm_90 build, or an sm_80 / sm_100 GPU."""
    from types import SimpleNamespace

    from phaseconv.engines import cuda

    for arch, sm90a, offered in (((9, 0), True, True), ((9, 0), False, False),
                                 ((8, 0), False, False), ((10, 0), False, False)):
        monkeypatch.setattr(cuda, "_arch", lambda arch=arch: arch)
        monkeypatch.setattr(cuda, "load", lambda sm90a=sm90a: SimpleNamespace(sm90a=sm90a))
        assert cuda.warpgroup_kernels() is offered


def test_sanitizer_parts_split_its_cases():
    """``gpu_sanitize.py --part K/N`` (racecheck one part a call): the N parts hold every case
    once; a bad part is refused by name."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "gpu" / "gpu_sanitize.py"
    spec = importlib.util.spec_from_file_location("gpu_sanitize", path)
    san = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(san)
    assert san._part([]) == (1, 1, san.CASES)
    parts = [san._part(["--part", f"{k}/3"]) for k in (1, 2, 3)]
    assert [(k, n) for k, n, _ in parts] == [(1, 3), (2, 3), (3, 3)]
    assert all(part for _, _, part in parts)
    cases = [case for _, _, part in parts for case in part]
    assert sorted(map(repr, cases)) == sorted(map(repr, san.CASES))
    for bad in (["--part", "0/3"], ["--part", "4/3"], ["--parts", "1/2"], ["--part"]):
        with pytest.raises(SystemExit, match="--part"):
            san._part(bad)


def test_ahead_of_time_flags_come_from_the_arch_list():
    """setup.py turns $TORCH_CUDA_ARCH_LIST into nvcc's -gencode flags itself, so torch's
    builder adds none (torch 1.13's refuses 9.0); a bad entry is refused by name."""
    from phaseconv.engines import cuda

    flags, names = cuda.gencode_flags("8.0;9.0a 8.6+PTX")
    assert names == ["80", "90a", "86"]
    assert flags == ["-gencode=arch=compute_80,code=sm_80",
                     "-gencode=arch=compute_90a,code=sm_90a",
                     "-gencode=arch=compute_86,code=sm_86",
                     "-gencode=arch=compute_86,code=compute_86"]
    for bad in ("", " ; ", "Ampere", "sm_80", "9", "9.0b"):
        with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
            cuda.gencode_flags(bad)


def test_engine_is_compiled_as_cxx17_on_every_torch(monkeypatch):
    """torch 1.13's extension builder passes -std=c++14; the engine adds -std=c++17 there
    (for nvcc and the host compiler alike) and leaves torch 2's own standard alone."""
    from phaseconv.engines import cuda

    for version, flags in (("1.13.1+cu117", ["-std=c++17"]), ("2.0.1", []), ("2.11.0", [])):
        monkeypatch.setattr(torch, "__version__", version)
        assert cuda.cxx_standard_flags() == flags
        assert [f for f in cuda._extension(8, 0)[1] if f.startswith("-std")] == flags


@pytest.mark.parametrize("dtype, size, batched_gemm", [
    (torch.float32, 4, True),     # 4 -> 4 channels, k3 s2: a small layer
    (torch.float64, 4, True),
    (torch.bfloat16, 4, False),   # the one-GEMM path is float32 / float64 only
    (torch.float32, 40, False),   # 80^3 outputs: past the MACs-per-sample bound
])
def test_reference_paths_follow_the_rule_explain_shows(dtype, size, batched_gemm):
    """The reference engine's two paths (all phases in one GEMM for small CPU
    layers, else one conv3d per phase) are chosen by phase_gemm.applies; explain() names the
    one a call takes, and both match torch."""
    from phaseconv.engines import phase_gemm

    torch.manual_seed(0)
    layer = phaseconv.ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1,
                                      dtype=dtype)
    x = torch.rand(2, 4, size, size, size, dtype=dtype)
    text = phaseconv.explain(layer, x.shape, dtype=dtype).kernel
    assert ("all phases in one GEMM" in text) == batched_gemm, text
    plan = phaseconv.explain(layer, x.shape).plan
    assert phase_gemm.applies(x.device, dtype, plan, 4, 4, 1) == batched_gemm
    ref = torch.nn.functional.conv_transpose3d(x.double(), layer.weight.double(),
                                               layer.bias.double(), 2, 1, 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(layer(x).double(), ref, atol=tol, rtol=0)


def test_a_large_layer_runs_one_conv3d_per_phase():
    layer = phaseconv.ConvTranspose3d(64, 64, 3, stride=2)
    assert phaseconv.explain(layer, (1, 64, 8, 8, 8)).kernel == "reference, one conv3d per phase"


def test_kernels_keep_their_exact_parameter_in_parameter_memory():
    """A kernel taking PhaseConvExact by value hands it to exact_element by reference; without
    PHASECONV_GRID_CONSTANT (__grid_constant__) nvcc copies the ~300-byte struct to every
    thread's stack at entry, taken or not (csrc/phase_conv_exact.cuh).  Checked in the
    sources: every such kernel parameter carries the mark."""
    import re

    from phaseconv.engines import cuda

    found = []
    for path in sorted(cuda.CSRC.glob("*.cu*")):
        text = path.read_text()
        for m in re.finditer(r"__global__[^{;]*?\b(\w+)\s*\(([^)]*)\)\s*\{", text):
            for param in m.group(2).split(","):
                if re.search(r"\bPhaseConvExact\s+\w+\s*$", param.strip()):
                    found.append((path.name, m.group(1)))
                    assert "PHASECONV_GRID_CONSTANT" in param, (path.name, m.group(1), param)
    assert {name for _, name in found} >= {"fixup_kernel", "gw_reduce_kernel",
                                           "gw_reduce_rows_kernel"}
