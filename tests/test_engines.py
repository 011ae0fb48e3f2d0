"""Engine choice and the CUDA engine's build path, checked without a GPU."""
import subprocess

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
        raise subprocess.CalledProcessError(1, ["ninja"], output=b"phase_conv_fwd.cu(12): "
                                            b"error: expected a \";\"")

    monkeypatch.setattr(cpp_extension, "load_inline", broken)
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
