"""``python -m phaseconv info``: what this machine offers phaseconv - versions, GPUs and the
engine each one runs by rule, the build tools the CUDA engine needs, and its build cache."""
import os
import platform
from typing import List

import torch

from . import __version__, engines


def _prebuilt_text(cuda) -> str:
    mod = cuda.installed_engine()
    if mod is None:
        return ("none (PHASECONV_BUILD_CUDA=1 and TORCH_CUDA_ARCH_LIST at install time build "
                "one; else the engine is compiled on first use)")
    return (f"phaseconv._engine for {getattr(mod, 'archs', '?')}, "
            + ("built from these sources" if cuda.from_these_sources(mod)
               else "built from other sources: not used"))


def report() -> str:
    lines: List[str] = [
        f"phaseconv {__version__}, Python {platform.python_version()}, torch {torch.__version__}"
        f" (CUDA {torch.version.cuda or 'none'}, cuDNN "
        f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'})",
    ]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        lines.append("GPU: none - every call runs the reference engine (pure torch)")
    for index in range(count):
        device = torch.device("cuda", index)
        major, minor = engines.capability(device)  # type: ignore[misc]
        choice = engines.choose(device)
        lines.append(f"GPU {index}: {torch.cuda.get_device_name(index)}, sm_{major}{minor}: "
                     f"{choice.name} engine ({choice.reason})")
    from torch.utils import cpp_extension

    from .engines import cuda

    cuda_home = getattr(cpp_extension, "CUDA_HOME", None)
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    nvcc_text = nvcc if nvcc and os.path.exists(nvcc) else "not found"
    lines.append(f"CUDA engine build: nvcc {nvcc_text}, "
                 f"ninja {'found' if cpp_extension.is_ninja_available() else 'not found'}; "
                 f"compiled on first use (about a minute) for the present GPU only")
    lines.append(f"build cache: {cuda.build_root()}")
    for index in range(count):
        major, minor = engines.capability(torch.device("cuda", index))  # type: ignore[misc]
        path = cuda.built(major, minor)
        target = cuda.build_target(major, minor)
        lines.append(f"  sm_{major}{minor} (compiled for sm_{target}"
                     + (", warpgroup kernels" if target.endswith("a") else "") + "): "
                     + (f"built for these sources ({path})" if path
                        else "not built yet for these sources"))
    lines.append("prebuilt engine: " + _prebuilt_text(cuda))
    lines.append(f"engine override: ${engines.ENGINE_ENV} (auto, reference, cuda)")
    return "\n".join(lines)
