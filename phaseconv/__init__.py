"""phaseconv: 3-D transposed convolution by sub-pixel phase decomposition.

Public API: ``conv_transpose3d`` (functional), ``ConvTranspose3d`` (module), ``convert``
(swap every ``nn.ConvTranspose3d`` of a model), ``revert`` (swap them back to torch's) and
``explain`` (the phase table).  A converted model exports directly (README, "Deployment").
"""
from .explain import explain
from .functional import conv_transpose3d
from .modules import ConvTranspose3d, convert, revert

__version__ = "0.1.0"
__all__ = ["ConvTranspose3d", "conv_transpose3d", "convert", "explain", "revert",
           "__version__"]
