"""Argument checks for conv_transpose3d: refuse what torch refuses, with the argument's name.

Every message names the offending argument so that a wrong call fails here, in Python, with a
ValueError/RuntimeError/TypeError, rather than as an IndexError deep inside an engine.
"""
import functools
import numbers
from typing import List, NamedTuple, Optional, Sequence

import torch

from .geometry import Triple, transposed_output_size

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ITEMSIZE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8}


def triple(value, name: str) -> Triple:
    """``value`` as a 3-tuple of ints: an int, or a sequence of 1 or 3 ints (torch's rule)."""
    # Fast path for what modules store (a tuple of 3 ints); the checks below cost microseconds.
    if (type(value) is tuple and len(value) == 3 and type(value[0]) is int
            and type(value[1]) is int and type(value[2]) is int):
        return value  # type: ignore[return-value]
    if type(value) is int:
        _check_int64((value,), name)
        return (value, value, value)
    value = _scalar_int(value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, Sequence, torch.Size)):
        raise TypeError(f"conv_transpose3d(): argument '{name}' must be an int or a tuple of 3 "
                        f"ints, not {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        _check_int64((int(value),), name)
        return (int(value),) * 3
    items = [_scalar_int(item) for item in value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"conv_transpose3d(): argument '{name}' must be a tuple of ints, but "
                            f"got an element of type {type(item).__name__}")
    if len(items) == 1:
        items = items * 3
    if len(items) != 3:
        raise RuntimeError(f"expected {name} to be a single integer value or a list of 3 values to "
                           f"match the convolution dimensions, but got {name}={list(value)}")
    out = tuple(int(v) for v in items)
    _check_int64(out, name)
    return out  # type: ignore[return-value]


_INT64 = (-2**63, 2**63 - 1)


def _scalar_int(value):
    """A 0-d integer tensor read as the int it holds, as torch's argument parser reads it;
    anything else unchanged (a float or bool tensor, or one with elements, is refused later
    by type)."""
    if (isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point()
            and not value.is_complex() and value.dtype != torch.bool):
        return int(value)
    return value


def _check_int64(values, name: str) -> None:
    """torch's ``int[]`` arguments are 64-bit; its parser refuses wider ints with a ValueError
    that names no argument: this one does."""
    for v in values:
        if not _INT64[0] <= v <= _INT64[1]:
            raise ValueError(f"conv_transpose3d(): argument '{name}' has a value that does not fit "
                             f"in 64 bits: {v}")


class ConvArgs(NamedTuple):
    """Validated, normalised arguments of one conv_transpose3d call (batched view)."""
    batched: bool
    stride: Triple
    padding: Triple
    output_padding: Triple
    dilation: Triple
    groups: int
    kernel: Triple
    in_channels: int
    out_channels: int
    in_shape: Triple
    out_shape: Triple


def check_types(input, weight, bias, groups) -> None:
    """The argument types torch's binding would refuse (TypeError, naming the argument)."""
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"conv_transpose3d(): argument '{name}' must be a Tensor, not "
                            f"{type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"conv_transpose3d(): argument 'bias' must be a Tensor or None, not "
                        f"{type(bias).__name__}")
    groups = _scalar_int(groups)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"conv_transpose3d(): argument 'groups' must be int, not "
                        f"{type(groups).__name__}")
    _check_int64((int(groups),), "groups")


def check_conv_transpose3d(input, weight, bias, stride, padding, output_padding, groups,
                           dilation) -> ConvArgs:
    """Validate a conv_transpose3d call the way torch does; return normalised arguments."""
    check_types(input, weight, bias, groups)
    groups = int(_scalar_int(groups))
    stride = triple(stride, "stride")
    padding = triple(padding, "padding")
    output_padding = triple(output_padding, "output_padding")
    dilation = triple(dilation, "dilation")
    metas = (TensorMeta.of(input), TensorMeta.of(weight),
             None if bias is None else TensorMeta.of(bias))
    check = _check_metadata
    if not all(type(n) is int for m in metas if m is not None for n in m.shape):
        check = _check_metadata.__wrapped__  # symbolic sizes (torch.compile): not hashable
    return check(*metas, stride, padding, output_padding, groups, dilation)


class TensorMeta(NamedTuple):
    """What the checks read of a tensor: hashable, so a repeated call is a cache hit."""
    shape: tuple
    dtype: torch.dtype
    device: torch.device

    @staticmethod
    def of(t: torch.Tensor) -> "TensorMeta":
        return TensorMeta(tuple(t.shape), t.dtype, t.device)

    def dim(self) -> int:
        return len(self.shape)


@functools.lru_cache(maxsize=1024)
def _check_metadata(input: TensorMeta, weight: TensorMeta, bias: Optional[TensorMeta],
                    stride: Triple, padding: Triple, output_padding: Triple, groups: int,
                    dilation: Triple) -> ConvArgs:
    if input.dim() not in (4, 5):
        raise RuntimeError("Expected 4D (unbatched) or 5D (batched) input to conv_transpose3d, "
                           f"but got input of size: {list(input.shape)}")
    if weight.dim() != 5:
        raise RuntimeError("conv_transpose3d(): expected a 5-D weight (in_channels, "
                           f"out_channels/groups, kD, kH, kW), but got weight of size "
                           f"{list(weight.shape)}")
    for name, t in (("input", input), ("weight", weight)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"conv_transpose3d(): {name} has dtype {t.dtype}; phaseconv supports "
                            "float16, bfloat16, float32 and float64")
    if weight.dtype != input.dtype:
        raise RuntimeError(f"conv_transpose3d(): input type ({input.dtype}) and weight type "
                           f"({weight.dtype}) should be the same")
    if weight.device != input.device:
        raise RuntimeError(f"conv_transpose3d(): input is on {input.device} but weight is on "
                           f"{weight.device}; they must be on the same device")

    if any(s <= 0 for s in stride):
        raise RuntimeError(f"stride: non-positive stride is not supported, got {stride}")
    if any(p < 0 for p in padding):
        raise RuntimeError(f"padding: negative padding is not supported, got {padding}")
    if any(p < 0 for p in output_padding):
        raise RuntimeError(f"output_padding: negative output_padding is not supported, got "
                           f"{output_padding}")
    if any(d <= 0 for d in dilation):
        raise RuntimeError(f"dilation should be greater than zero, got dilation={dilation}")
    for name, values in (("stride", stride), ("dilation", dilation)):
        if any(v >= 2**31 for v in values):  # torch's convolutions take them as 32-bit ints
            raise RuntimeError(f"{name}: values from 2**31 on are not supported (torch's "
                               f"convolutions refuse them too), got {name}={values}")
    if groups <= 0:
        raise RuntimeError(f"groups: non-positive groups is not supported, got {groups}")
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation)):
        raise RuntimeError("output_padding must be smaller than either stride or dilation, but "
                           f"got output_padding={output_padding}, stride={stride}, "
                           f"dilation={dilation}")

    w_shape = list(weight.shape)
    if any(n == 0 for n in w_shape[1:]):
        raise RuntimeError("weight: non-empty 5-D (in_channels x out_channels/groups x kD x kH x "
                           f"kW) tensor expected, but got weight of size {w_shape}")
    if w_shape[0] < groups or w_shape[0] % groups != 0:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} "
                           "(and at "
                           f"least {groups}) at dimension 0, but got weight of size {w_shape}")
    batched = input.dim() == 5
    in_channels = input.shape[1] if batched else input.shape[0]
    if in_channels != w_shape[0]:
        raise RuntimeError(f"Given transposed=1, weight of size {w_shape}, expected "
                           f"input{list(input.shape)} to have {w_shape[0]} "
                           f"channels, but got {in_channels} channels instead")
    in_shape = tuple(input.shape[-3:])
    if any(n == 0 for n in in_shape):
        raise RuntimeError(f"input: only zero batch inputs are supported, but got input of size "
                           f"{list(input.shape)}")
    out_channels = w_shape[1] * groups
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != out_channels:
            raise RuntimeError(f"Given transposed=1, weight of size {w_shape}, expected bias to be "
                               f"1-dimensional with {out_channels} elements, but got bias of size "
                               f"{list(bias.shape)} instead")
        if bias.dtype != input.dtype:
            raise RuntimeError(f"conv_transpose3d(): bias has dtype {bias.dtype} but input has "
                               f"dtype {input.dtype}")
        if bias.device != input.device:
            raise RuntimeError(f"conv_transpose3d(): bias is on {bias.device} but input is on "
                               f"{input.device}")

    kernel = tuple(w_shape[2:])
    out_shape = tuple(transposed_output_size(n, k, s, p, dilation=d, output_padding=op)
                      for n, k, s, p, d, op
                      in zip(in_shape, kernel, stride, padding, dilation, output_padding))
    if any(n <= 0 for n in out_shape):
        raise RuntimeError(f"Given input size per channel: {in_shape}. Calculated output size per "
                           f"channel: {out_shape}. Output size is too small (check padding, "
                           "kernel and dilation)")
    numel = (input.shape[0] if batched else 1) * out_channels
    for n in out_shape:
        numel *= n
    if numel * _ITEMSIZE.get(input.dtype, 8) > _INT64[1]:
        raise RuntimeError(f"output: an output of {list(input.shape[:-4])} x {out_channels} "
                           f"channels x {list(out_shape)} voxels does not fit in 64-bit memory "
                           f"(stride={stride}, padding={padding}, dilation={dilation}, "
                           f"output_padding={output_padding})")
    return ConvArgs(batched, stride, padding, output_padding, dilation, groups,
                    kernel, in_channels, out_channels, in_shape, out_shape)  # type: ignore


def output_size_ints(output_size) -> List[int]:
    """``output_size`` as a list of ints, accepted as torch accepts it (a sequence of ints, a
    ``torch.Size``, a 1-D integer tensor, 0-dim integer tensors as elements); anything else
    (floats, NaN, strings, ...) is a TypeError naming the argument."""
    if isinstance(output_size, torch.Tensor):
        if output_size.dim() != 1 or output_size.is_floating_point() or output_size.is_complex():
            raise TypeError("output_size must be a sequence of ints or a 1-D integer tensor, got "
                            f"a tensor of shape {tuple(output_size.shape)} and dtype "
                            f"{output_size.dtype}")
        return [int(v) for v in output_size.tolist()]
    if isinstance(output_size, (str, bytes)) or not isinstance(output_size,
                                                                (Sequence, torch.Size)):
        raise TypeError(f"output_size must be a sequence of ints, not {type(output_size).__name__}")
    sizes = []
    for v in output_size:
        if isinstance(v, torch.Tensor) and v.dim() == 0 and not (v.is_floating_point()
                                                                 or v.is_complex()):
            v = int(v)
        if not isinstance(v, numbers.Integral):
            raise TypeError(f"output_size must be a sequence of ints, but got an element "
                            f"{v!r} of type {type(v).__name__}")
        sizes.append(int(v))
    return sizes


def check_output_size(output_size, input_dim: int) -> Optional[List[int]]:
    """torch's rule: output_size names the 3 spatial sizes or the whole output shape.
    Returns it as a list of ints (None for None)."""
    if output_size is None:
        return None
    sizes = output_size_ints(output_size)
    non_spatial = 2 if input_dim == 5 else 1
    if len(sizes) not in (3, 3 + non_spatial):
        raise ValueError(f"ConvTranspose3D: for {input_dim}D input, output_size must have 3 or "
                         f"{3 + non_spatial} elements (got {len(sizes)})")
    return sizes
