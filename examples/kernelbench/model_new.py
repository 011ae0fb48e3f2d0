"""``ModelNew``: the same model on phaseconv, loading the original's state_dict unchanged.

The only parameter lives at ``conv_transpose3d.weight`` (and ``.bias`` when enabled), as in
``model.Model``.  On a CUDA tensor phaseconv runs its CUDA engine when built; elsewhere its
reference engine (``phaseconv.explain`` says which).
"""
import torch
import torch.nn as nn

import phaseconv


class ModelNew(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple,
                 stride: tuple = (1, 1, 1), padding: tuple = (0, 0, 0),
                 output_padding: tuple = (0, 0, 0), groups: int = 1, bias: bool = False):
        super().__init__()
        self.conv_transpose3d = phaseconv.ConvTranspose3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_transpose3d(x)
