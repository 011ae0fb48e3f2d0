"""``phaseconv.ConvTranspose3d`` (a drop-in ``nn.ConvTranspose3d``), ``convert`` and its
inverse ``revert``."""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .checks import check_output_size
from .functional import conv_transpose3d
from .geometry import output_padding_for_size


class ConvTranspose3d(nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` computed by phase decomposition.

    Same constructor, parameters, ``state_dict`` keys and ``forward(input, output_size=None)``
    as torch's class.  Every call reads the weight as it is, so any way of changing it
    (optimizers, fused or not, ``.data``, numpy, DLPack, ``load_state_dict``) is seen by the
    next call.

    Export, directly or after :func:`revert` (the same graphs): ``torch.jit.script`` compiles
    torch's ``forward`` (``F.conv_transpose3d``), and ``torch.jit.trace`` and
    ``torch.onnx.export`` (both exporters) record torch's ``conv_transpose3d``, the same
    function: the saved graphs load without phaseconv and ONNX holds a standard
    ``ConvTranspose`` node.  ``torch.export`` records ``phaseconv::conv_transpose3d`` (torch >=
    2.4; ``phaseconv.ops.decompositions()`` turns it into torch's op).  Eager calls always run
    phaseconv's engines.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, output_padding, groups,
        bias, dilation, padding_mode, device, dtype: as ``torch.nn.ConvTranspose3d``
            (``padding_mode`` must be ``"zeros"``, as there).
        engine: force an engine for this layer ("cuda" or "reference"; see
            ``phaseconv.engines``); ``None`` lets the rule choose per call.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int, int]],
                 stride: Union[int, Tuple[int, int, int]] = 1,
                 padding: Union[int, Tuple[int, int, int]] = 0,
                 output_padding: Union[int, Tuple[int, int, int]] = 0, groups: int = 1,
                 bias: bool = True, dilation: Union[int, Tuple[int, int, int]] = 1,
                 padding_mode: str = "zeros", device=None, dtype=None, *,
                 engine: Optional[str] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, groups, bias, dilation, padding_mode, device, dtype)
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
        new = _sharing(cls, module)
        new.engine = None
        return new

    def to_torch(self) -> nn.ConvTranspose3d:
        """A ``torch.nn.ConvTranspose3d`` that shares this layer's parameters, buffers and
        hooks: what TorchScript, ONNX and other exporters take (see ``revert``)."""
        new = _sharing(nn.ConvTranspose3d, self)
        new.__dict__.pop("engine", None)
        return new

    def forward(self, input: torch.Tensor, output_size: Optional[List[int]] = None):
        if torch.jit.is_scripting():
            # TorchScript compiles this branch alone (is_scripting() is a constant there), so
            # the rest of forward need only parse: no f-strings below
            return self._torch_forward(input, output_size)
        if self.padding_mode != "zeros":
            raise ValueError("padding_mode: only 'zeros' padding mode is supported for "
                             "ConvTranspose3d, got " + repr(self.padding_mode))
        if output_size is None and isinstance(input, torch.Tensor):
            # the layer's sizes were checked by its constructor; the call's by the operator
            return ops.conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                        self.output_padding, self.groups, self.dilation,
                                        self.engine)
        output_padding = self.output_padding
        if output_size is not None:
            if not isinstance(input, torch.Tensor):
                raise TypeError("input must be a Tensor, not " + type(input).__name__)
            sizes = check_output_size(output_size, input.dim())
            if input.dim() in (4, 5):
                output_padding = output_padding_for_size(
                    input.shape[-3:], sizes, self.kernel_size, self.stride,
                    self.padding, self.dilation)
        return conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation, self.engine)

    def _torch_forward(self, input: torch.Tensor,
                       output_size: Optional[List[int]] = None) -> torch.Tensor:
        """torch's ``nn.ConvTranspose3d.forward``, in the form TorchScript compiles."""
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose3d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 3, self.dilation)
        return F.conv_transpose3d(input, self.weight, self.bias, self.stride, self.padding,
                                  output_padding, self.groups, self.dilation)


def _sharing(cls, module: nn.Module) -> nn.Module:
    """A ``cls`` instance holding ``module``'s state: the same parameter, buffer and hook
    objects, in fresh containers, so that later edits to one module's dicts do not leak into
    the other."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    for name, value in module.__dict__.items():
        if isinstance(value, dict) and name.startswith("_"):
            new.__dict__[name] = value.copy()
    return new


def _swap(model: nn.Module, wanted, make) -> nn.Module:
    """Replace every submodule whose type is exactly ``wanted`` by ``make(it)``, in place,
    keeping sharing: a layer registered at several places becomes one new layer at the same
    places."""
    if type(model) is wanted:
        return make(model)
    swapped = {}  # id(original layer) -> its replacement
    for parent in list(model.modules()):
        # every registered entry, also a layer registered twice (named_children skips those)
        for name, child in list(parent._modules.items()):
            if type(child) is wanted:
                new = swapped.get(id(child))
                if new is None:
                    new = swapped[id(child)] = make(child)
                setattr(parent, name, new)
    return model


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
    return _swap(model, nn.ConvTranspose3d, ConvTranspose3d.from_torch)


def revert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: swap every ``phaseconv.ConvTranspose3d`` inside
    ``model`` back to a ``torch.nn.ConvTranspose3d``, in place, sharing the parameter tensors
    (and keeping sharing, as ``convert`` does).  Returns the model (the torch layer itself for
    a bare phaseconv layer).

    The reverted model computes the same function with torch's kernels; ``torch.jit.script``,
    ``torch.jit.trace`` and ``torch.onnx.export`` record the same graphs from it as from the
    converted model (see :class:`ConvTranspose3d`), while ``torch.export`` then records torch's
    op instead of phaseconv's.  ``revert(convert(m))`` has ``m``'s state dict.
    """
    return _swap(model, ConvTranspose3d, ConvTranspose3d.to_torch)
