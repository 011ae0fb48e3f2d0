"""Engines compute a planned, packed transposed convolution.

* ``reference``: every phase as a dense stride-1 ``F.conv3d`` in pure torch; any device (small
  CPU layers: all phases in one GEMM, ``phase_gemm.py``).
* ``cuda``: one custom CUDA kernel for all phases (``csrc/``), built on first use.

The rule, in one place so that ``explain()`` and the functional API agree: a CUDA tensor runs
the ``cuda`` engine, anything else the ``reference`` engine; a layer whose strides multiply to
more than ``CUDA_MAX_RESIDUES`` runs the reference engine on CUDA tensors too (the kernels'
phase table has a row per residue triple, with taps or not; the reference engine's phases are
only those with taps, at most the kernel's taps many); and a GPU below compute capability 8.0
runs the reference engine (the kernels use ``mma.sync`` and ``cp.async``): the rule is
checked before anything is compiled, and forcing ``engine="cuda"`` there raises an error
naming the GPU.  The ``engine=`` argument or the
``PHASECONV_ENGINE`` environment variable (``auto``, ``reference`` or ``cuda``) overrides it.
There is no silent fallback: if the CUDA engine cannot be built, the call fails with the
compiler's message, and ``PHASECONV_ENGINE=reference`` is the documented way round it.
"""
import os
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

ENGINE_ENV = "PHASECONV_ENGINE"
ENGINES = ("reference", "cuda")
CUDA_MAX_RESIDUES = 4096
CUDA_MIN_CAPABILITY = (8, 0)
_capabilities = {}  # device index -> (major, minor)


def input_layout(x: torch.Tensor) -> int:
    """0 contiguous, 1 channels_last_3d, 2 anything else (the CUDA kernels read the first two
    in place; a call's plan depends on it)."""
    if x.is_contiguous():
        return 0
    return 1 if x.is_contiguous(memory_format=torch.channels_last_3d) else 2


def _strides_like_channels_last_3d(t: torch.Tensor) -> bool:
    """torch's reading of a 5-D tensor's strides as channels_last_3d (the rule behind
    ``suggest_memory_format``; ambiguous strides read as contiguous)."""
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    low = 0
    for d in (1, 4, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < low or (d == 0 and low == strides[1]):
            return False
        low = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def suggests_channels_last_3d(t: torch.Tensor) -> bool:
    """Whether torch suggests ``channels_last_3d`` for ``t`` (5-D): a channels-last tensor
    that is not contiguous, and tensors both or neither are by their strides."""
    if t.dim() != 5:
        return False
    cl = t.is_contiguous(memory_format=torch.channels_last_3d)
    if t.is_contiguous():
        return cl and _strides_like_channels_last_3d(t)
    return cl or _strides_like_channels_last_3d(t)


def output_channels_last(x: torch.Tensor, weight: torch.Tensor,
                         device: Optional[torch.device] = None) -> bool:
    """Whether the result is ``channels_last_3d``, as torch (cuDNN) returns it on CUDA: a
    batched input or the weight suggesting channels_last_3d, any dtype but float64.  On
    other devices, and for float64, the result is contiguous.  ``device``: the call's, where
    ``x`` stands in for its input (``explain``: meta tensors)."""
    device = x.device if device is None else device
    if device.type != "cuda" or x.dim() != 5 or x.dtype == torch.float64:
        return False
    return suggests_channels_last_3d(x) or suggests_channels_last_3d(weight)


def capability(device: torch.device) -> Optional[Tuple[int, int]]:
    """The compute capability of a CUDA device, or None where CUDA is not available."""
    if not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    found = _capabilities.get(index)
    if found is None:
        found = _capabilities[index] = tuple(torch.cuda.get_device_capability(index))
    return found  # type: ignore[return-value]


def _gpu_text(device: torch.device, cap: Tuple[int, int]) -> str:
    try:
        name = torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):
        name = str(device)
    return f"{name} (sm_{cap[0]}{cap[1]})"


class EngineChoice(NamedTuple):
    name: str
    reason: str


def choose(device: torch.device, requested: Optional[str] = None,
           stride: Sequence[int] = (1, 1, 1)) -> EngineChoice:
    """Which engine runs on ``device``: the ``engine=`` argument, else ``$PHASECONV_ENGINE``,
    else the default for the device and the layer's ``stride``."""
    name = requested or os.environ.get(ENGINE_ENV) or "auto"
    if name not in ENGINES + ("auto",):
        raise ValueError(f"engine: unknown engine {name!r}; choose one of "
                         f"{('auto',) + ENGINES}")
    residues = 1
    for s in stride:
        residues *= int(s)
    too_many = (f"stride {tuple(stride)} has {residues} residue triples, more than the CUDA "
                f"kernels' {CUDA_MAX_RESIDUES}")
    cap = capability(device) if device.type == "cuda" and name in ("auto", "cuda") else None
    too_old = cap is not None and cap < CUDA_MIN_CAPABILITY
    old_text = (f"{_gpu_text(device, cap)} is below the CUDA kernels' sm_80 (they use mma.sync "
                "and cp.async)") if too_old else ""
    if name == "auto":
        if device.type == "cuda":
            if too_old:
                return EngineChoice("reference", f"pure-torch phase engine: {old_text}")
            if residues > CUDA_MAX_RESIDUES:
                return EngineChoice("reference", f"pure-torch phase engine: {too_many}")
            return EngineChoice("cuda", "custom CUDA phase kernel, the default for CUDA tensors")
        return EngineChoice("reference", f"pure-torch phase engine, the default on {device.type}")
    source = "engine= argument" if requested else f"${ENGINE_ENV}"
    if name == "cuda" and device.type != "cuda":
        raise ValueError(f"engine: the cuda engine needs CUDA tensors, got tensors on {device} "
                         f"(forced by {source})")
    if name == "cuda" and too_old:
        raise RuntimeError(f"engine: the cuda engine (forced by {source}) cannot run on "
                           f"{old_text}")
    if name == "cuda" and residues > CUDA_MAX_RESIDUES:
        raise ValueError(f"stride: the cuda engine (forced by {source}) cannot run this layer: "
                         f"{too_many}")
    return EngineChoice(name, f"forced by {source}")
