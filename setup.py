"""Packaging: the metadata lives in pyproject.toml; this file adds the optional ahead-of-time
CUDA engine.

    PHASECONV_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" \\
        pip install --no-build-isolation .

compiles csrc/ into ``phaseconv._engine`` for the listed architectures (torch and nvcc must
be installed; the CUDA engine then needs neither nvcc nor a first-use build).  List ``9.0a``
instead of ``9.0`` (CUDA 12+) for the H100/H200 warpgroup (wgmma) kernels.  Without the
variable nothing is compiled and the engine is built on first use, as before.
"""
import os
import sys

from setuptools import setup


def cuda_extension() -> dict:
    if os.environ.get("PHASECONV_BUILD_CUDA") != "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from phaseconv.engines import cuda  # the source list and hash the runtime checks

    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if not archs:
        raise SystemExit("PHASECONV_BUILD_CUDA=1 needs TORCH_CUDA_ARCH_LIST (e.g. \"8.0;9.0\")")
    sources = [os.path.join("csrc", n) for n in cuda._CPP_SOURCES + cuda._CUDA_SOURCES]
    try:
        gencode, names = cuda.gencode_flags(archs)  # "8.0;9.0a" -> -gencode flags, ["80", "90a"]
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    macros = [("PHASECONV_SOURCE_HASH", "h" + cuda.source_hash()),
              ("PHASECONV_ARCHS", "_".join("sm" + n for n in names))]
    if "90a" in names and "90" not in names:
        # sm_90 runs the sm_90a code, warpgroup (wgmma) kernels included; with 9.0 listed too
        # the plan could not tell which of the two the driver loads
        macros.append(("PHASECONV_SM90A", None))
    std = cuda.cxx_standard_flags()
    return dict(
        ext_modules=[CUDAExtension("phaseconv._engine", sources,
                                   include_dirs=[os.path.join(here, "csrc")],
                                   define_macros=macros,
                                   extra_compile_args={"cxx": ["-O3", *std],
                                                       "nvcc": ["-O3", *gencode, *std]})],
        cmdclass={"build_ext": BuildExtension},
    )


setup(**cuda_extension())
