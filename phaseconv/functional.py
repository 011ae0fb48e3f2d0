"""``phaseconv.conv_transpose3d``: torch's functional signature on the phase engines."""
from typing import Optional

import torch

from . import ops
from .checks import check_types, triple


def conv_transpose3d(input: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1,
                     engine: Optional[str] = None) -> torch.Tensor:
    """3-D transposed convolution, computed phase by phase; same contract as
    ``torch.nn.functional.conv_transpose3d``.

    ======== ==================================================================
    input    (N, C_in, D, H, W) or unbatched (C_in, D, H, W); N may be 0
    weight   (C_in, C_out / groups, kD, kH, kW)
    bias     (C_out,) or None
    returns  (N, C_out, D_out, H_out, W_out), with per axis
             D_out = (D - 1) * stride - 2 * padding + dilation * (kD - 1)
             + output_padding + 1
    ======== ==================================================================

    ``stride``, ``padding``, ``output_padding`` and ``dilation`` are ints or 3-tuples.
    ``engine`` forces an engine (see ``phaseconv.engines``); by default CUDA tensors run the
    CUDA kernel and others the reference engine, and ``phaseconv.explain`` tells which.
    Every call reads the weight as it is (nothing is cached that depends on its values), and
    costs the same as the module's call.  Gradients flow to input, weight and bias
    (phase-form backward, ``phaseconv.ops``); under ``torch.autocast`` the inputs are cast as
    torch's ``conv_transpose3d`` casts them.  Under ``torch.jit.trace`` and
    ``torch.onnx.export`` a call records torch's ``conv_transpose3d`` (see ``phaseconv.ops``,
    "Export"); ``torch.jit.script`` takes the module, not this function.
    """
    check_types(input, weight, bias, groups)
    stride, padding, output_padding, dilation = (
        triple(v, name) for v, name in ((stride, "stride"), (padding, "padding"),
                                        (output_padding, "output_padding"),
                                        (dilation, "dilation")))
    return ops.conv_transpose3d(input, weight, bias, stride, padding, output_padding,
                                int(groups), dilation, engine)
