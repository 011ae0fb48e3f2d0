"""Engines compute a planned, packed transposed convolution.

``reference`` (pure torch, any device) is the only engine so far; ``choose`` is the single
place that decides which engine runs a call, so ``explain()`` and the functional API agree.
"""
import os
from typing import NamedTuple

import torch

ENGINE_ENV = "PHASECONV_ENGINE"
ENGINES = ("reference",)


class EngineChoice(NamedTuple):
    name: str
    reason: str


def choose(device: torch.device, requested=None) -> EngineChoice:
    """Which engine runs on ``device``: the ``engine=`` argument, else ``$PHASECONV_ENGINE``,
    else the default for the device."""
    name = requested or os.environ.get(ENGINE_ENV) or None
    if name is not None:
        if name not in ENGINES + ("auto",):
            raise ValueError("engine: unknown engine {!r}; choose one of {}"
                             .format(name, ("auto",) + ENGINES))
        if name != "auto":
            source = "engine= argument" if requested else f"${ENGINE_ENV}"
            return EngineChoice(name, f"forced by {source}")
    return EngineChoice("reference", f"pure-torch phase engine on {device.type}")
