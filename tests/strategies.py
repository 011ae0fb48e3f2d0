"""Hypothesis strategies: valid conv_transpose3d configurations by construction."""
from typing import NamedTuple, Optional, Tuple

import torch
from hypothesis import strategies as st

from phaseconv.geometry import transposed_output_size


class Config(NamedTuple):
    batch: Optional[int]  # None: unbatched 4-D input
    in_channels: int
    out_channels: int
    groups: int
    in_shape: Tuple[int, int, int]
    kernel: Tuple[int, int, int]
    stride: Tuple[int, int, int]
    padding: Tuple[int, int, int]
    output_padding: Tuple[int, int, int]
    dilation: Tuple[int, int, int]
    bias: bool

    @property
    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding,
                    output_padding=self.output_padding, groups=self.groups,
                    dilation=self.dilation)

    @property
    def out_shape(self):
        return tuple(transposed_output_size(n, k, s, p, dilation=d, output_padding=op)
                     for n, k, s, p, d, op in zip(self.in_shape, self.kernel, self.stride,
                                                  self.padding, self.dilation,
                                                  self.output_padding))

    def tensors(self, dtype=torch.float64, device="cpu", requires_grad=False, seed=0):
        gen = torch.Generator().manual_seed(seed)
        shape = ((self.batch,) if self.batch is not None else ()) + (self.in_channels,) + \
            self.in_shape
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        w = torch.randn((self.in_channels, self.out_channels // self.groups) + self.kernel,
                        generator=gen, dtype=torch.float64)
        b = torch.randn(self.out_channels, generator=gen, dtype=torch.float64) \
            if self.bias else None
        out = [t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
               if t is not None else None for t in (x, w, b)]
        return tuple(out)


@st.composite
def configs(draw, max_kernel=5, max_stride=4, max_dilation=3, max_groups=4, max_size=4,
            max_batch=2, max_channels_per_group=3):
    groups = draw(st.integers(1, max_groups))
    in_channels = groups * draw(st.integers(1, max_channels_per_group))
    out_channels = groups * draw(st.integers(1, max_channels_per_group))
    kernel, stride, dilation, in_shape, output_padding, padding = [], [], [], [], [], []
    for _ in range(3):
        k = draw(st.integers(1, max_kernel))
        s = draw(st.integers(1, max_stride))
        d = draw(st.integers(1, max_dilation))
        n = draw(st.integers(1, max_size))
        op = draw(st.integers(0, max(s, d) - 1))
        # Largest padding that still leaves a positive output length.
        p_max = ((n - 1) * s + d * (k - 1) + op) // 2
        p = draw(st.integers(0, p_max))
        assert transposed_output_size(n, k, s, p, dilation=d, output_padding=op) > 0
        for seq, v in zip((kernel, stride, dilation, in_shape, output_padding, padding),
                          (k, s, d, n, op, p)):
            seq.append(v)
    batch = draw(st.one_of(st.none(), st.integers(0, max_batch)))
    bias = draw(st.booleans())
    return Config(batch, in_channels, out_channels, groups, tuple(in_shape), tuple(kernel),
                  tuple(stride), tuple(padding), tuple(output_padding), tuple(dilation), bias)
