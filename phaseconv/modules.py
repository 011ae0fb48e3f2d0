"""``phaseconv.ConvTranspose3d`` (a drop-in ``nn.ConvTranspose3d``) and ``convert``."""
from typing import List, Optional

import torch
import torch.nn as nn

from . import ops
from .checks import check_output_size
from .functional import conv_transpose3d
from .geometry import output_padding_for_size


class ConvTranspose3d(nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` computed by phase decomposition.

    Same constructor, parameters, ``state_dict`` keys and ``forward(input, output_size=None)``
    as torch's class.  Every call reads the weight as it is, so any way of changing it
    (optimizers, fused or not, ``.data``, numpy, DLPack, ``load_state_dict``) is seen by the
    next call.  ``engine`` forces an engine for this layer (see ``phaseconv.engines``).
    """

    def __init__(self, *args, engine: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine

    def _get_name(self) -> str:
        # the repr says whose layer this is: a converted model shows where phaseconv runs
        return "phaseconv.ConvTranspose3d"

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.engine is None else f"{text}, engine={self.engine!r}"

    @classmethod
    def from_torch(cls, module: nn.ConvTranspose3d) -> "ConvTranspose3d":
        """A phaseconv layer that shares ``module``'s parameters, buffers and hooks."""
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
        # Fresh containers holding the same tensors, so later edits to one module's
        # parameter dict do not leak into the other.
        for name, value in module.__dict__.items():
            if isinstance(value, dict) and name.startswith("_"):
                new.__dict__[name] = value.copy()
        new.engine = None
        return new

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None):
        if self.padding_mode != "zeros":
            raise ValueError("padding_mode: only 'zeros' padding mode is supported for "
                             f"ConvTranspose3d, got {self.padding_mode!r}")
        if output_size is None and isinstance(input, torch.Tensor):
            # the layer's sizes were checked by its constructor; the call's by the operator
            return ops.conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                        self.output_padding, self.groups, self.dilation,
                                        self.engine)
        output_padding = self.output_padding
        if output_size is not None:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"input must be a Tensor, not {type(input).__name__}")
            sizes = check_output_size(output_size, input.dim())
            if input.dim() in (4, 5):
                output_padding = output_padding_for_size(
                    input.shape[-3:], sizes, self.kernel_size, self.stride,
                    self.padding, self.dilation)
        return conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation, self.engine)


def convert(model: nn.Module) -> nn.Module:
    """Swap every ``torch.nn.ConvTranspose3d`` inside ``model`` for phaseconv's, in place.

    The new layers share the original parameter tensors (an optimizer built before the call
    keeps working), and sharing is kept: a layer used at several places (``Sequential(up,
    ReLU(), up)``, or in two submodules) becomes one phaseconv layer used at the same places.
    Only modules whose type is exactly ``nn.ConvTranspose3d`` are swapped: a user subclass may
    override ``forward``, and parametrized layers compute their weight differently, so both
    are left as they are.  Returns the model (the new layer itself when ``model`` is a bare
    ``nn.ConvTranspose3d``).
    """
    if type(model) is nn.ConvTranspose3d:
        return ConvTranspose3d.from_torch(model)
    converted = {}  # id(original layer) -> its phaseconv layer
    for parent in list(model.modules()):
        # every registered entry, also a layer registered twice (named_children skips those)
        for name, child in list(parent._modules.items()):
            if type(child) is nn.ConvTranspose3d:
                new = converted.get(id(child))
                if new is None:
                    new = converted[id(child)] = ConvTranspose3d.from_torch(child)
                setattr(parent, name, new)
    return model
