"""Every argument at hostile values, against torch: phaseconv raises where torch raises
(naming the argument where torch does not), computes torch's result where torch computes,
and answers every call in well under a second (no hang, no O(stride) work).  explain() refuses
exactly what the operator refuses."""
import math
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import phaseconv

HOSTILE = [("0", 0), ("-1", -1), ("2**31", 2**31), ("2**63", 2**63), ("float", 1.5),
           ("nan", math.nan), ("str", "2"), ("wrong length", (1, 1)),
           ("int tensor", torch.tensor(2)), ("float tensor", torch.tensor(2.0)),
           ("big stride", 10**9)]
SIZE_ARGS = ("stride", "padding", "output_padding", "dilation")
INPUTS = {"one voxel": (1, 2, 1, 1, 1), "small": (1, 2, 2, 3, 2)}
TORCH_2 = int(torch.__version__.split(".")[0]) >= 2


def _outcome(fn):
    start = time.perf_counter()
    try:
        result = fn()
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        result = exc
    return result, time.perf_counter() - start


def _compare(theirs, ours, ours_seconds, name):
    assert ours_seconds < 1.0, f"phaseconv took {ours_seconds:.2f} s"
    if isinstance(theirs, Exception):
        assert isinstance(ours, Exception), f"torch raised {theirs!r}, phaseconv computed"
        return
    assert not isinstance(ours, Exception), f"torch computed, phaseconv raised {ours!r}"
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def _kwargs(arg, value):
    kwargs = dict(stride=1, padding=0, output_padding=0, groups=1, dilation=1)
    kwargs[arg] = value
    if arg == "output_padding":  # room for an output_padding torch takes
        kwargs["stride"] = 3
    return kwargs


def _torch_refuses_tensor(value) -> bool:
    """torch 1.13's parser takes a 0-d int tensor for groups and inside a tuple, but not as
    a whole size argument; phaseconv reads it as torch 2 does."""
    return not TORCH_2 and isinstance(value, torch.Tensor)


@pytest.mark.parametrize("arg", SIZE_ARGS + ("groups",))
@pytest.mark.parametrize("label,value", HOSTILE, ids=[h[0] for h in HOSTILE])
@pytest.mark.parametrize("input_name", INPUTS)
def test_functional_argument(arg, label, value, input_name):
    x = torch.rand(INPUTS[input_name], dtype=torch.float64)
    w = torch.rand(2, 2, 2, 2, 2, dtype=torch.float64)
    kwargs = _kwargs(arg, value)
    theirs, _ = _outcome(lambda: F.conv_transpose3d(x, w, None, **kwargs))
    ours, seconds = _outcome(lambda: phaseconv.conv_transpose3d(x, w, None, **kwargs))
    if arg != "groups" and _torch_refuses_tensor(value) and label == "int tensor":
        theirs, _ = _outcome(lambda: F.conv_transpose3d(x, w, None, **_kwargs(arg, int(value))))
    _compare(theirs, ours, seconds, arg)
    if isinstance(ours, Exception):  # refused: the message names the argument or the output
        assert arg in str(ours) or "output" in str(ours), str(ours)


@pytest.mark.parametrize("arg", SIZE_ARGS + ("groups",))
@pytest.mark.parametrize("label,value", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_module_argument(arg, label, value):
    """The same values given to the module's constructor: its forward agrees with torch's."""
    x = torch.rand(1, 2, 2, 3, 2, dtype=torch.float64)
    kwargs = _kwargs(arg, value)
    made, _ = _outcome(lambda: nn.ConvTranspose3d(2, 2, 2, **kwargs).double())
    if isinstance(made, Exception):  # the constructor is torch's own
        with pytest.raises(type(made)):
            phaseconv.ConvTranspose3d(2, 2, 2, **kwargs)
        return
    ours_layer = phaseconv.convert(made)
    if _torch_refuses_tensor(value):
        return  # the stored tensor reaches 1.13's parser as a whole argument
    theirs, _ = _outcome(lambda: made(x))
    ours, seconds = _outcome(lambda: ours_layer(x))
    _compare(theirs, ours, seconds, arg)


@pytest.mark.parametrize("label,value", HOSTILE + [("5 sizes", (1, 2, 3, 4, 5)),
                                                   ("huge", (2**40, 4, 4))],
                         ids=[h[0] for h in HOSTILE] + ["5 sizes", "huge"])
def test_output_size_argument(label, value):
    torch.manual_seed(0)
    layer = nn.ConvTranspose3d(2, 2, 3, stride=2, padding=1).double()
    x = torch.rand(1, 2, 2, 2, 2, dtype=torch.float64)
    sizes = value if isinstance(value, tuple) else (value, 4, 4)
    theirs, _ = _outcome(lambda: layer(x, output_size=sizes))
    ours, seconds = _outcome(lambda: phaseconv.convert(layer)(x, output_size=sizes))
    _compare(theirs, ours, seconds, "output_size")
    if isinstance(ours, Exception):
        assert "output_size" in str(ours)


@pytest.mark.parametrize("arg", SIZE_ARGS + ("groups",))
@pytest.mark.parametrize("label,value", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_explain_refuses_what_the_operator_refuses(arg, label, value):
    spec = dict(in_channels=2, out_channels=2, kernel_size=2, **_kwargs(arg, value))
    x = torch.rand(1, 2, 2, 3, 2, dtype=torch.float64)
    w = torch.rand(2, 2, 2, 2, 2, dtype=torch.float64)
    kwargs = _kwargs(arg, value)
    op, _ = _outcome(lambda: phaseconv.conv_transpose3d(x, w, None, **kwargs))
    if arg == "groups" and not isinstance(op, Exception) and int(value) != 1:
        return  # groups=2 on 2 channels: a valid call, a different layer than the spec's
    start = time.perf_counter()
    try:
        text = str(phaseconv.explain(spec, tuple(x.shape)))
    except (RuntimeError, ValueError, TypeError) as exc:
        assert isinstance(op, Exception), f"explain raised {exc!r}, the operator computed"
    else:
        assert not isinstance(op, Exception), f"explain computed, the operator raised {op!r}"
        assert "phase" in text
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("kernel,stride,size", [((2000, 1, 1), (1, 1, 1), (4, 4, 4)),
                                                ((2000, 1, 1), (7, 1, 1), (3, 2, 2)),
                                                ((1, 300, 1), (1, 1, 1), (2, 3, 2))])
def test_kernels_far_larger_than_the_input(kernel, stride, size):
    """A kernel of thousands of taps on a few voxels: each phase scatters its real inputs
    instead of gathering a window that is mostly padding (same result, work ~ the input)."""
    x = torch.rand((1, 2) + size, dtype=torch.float64)
    w = torch.rand((2, 3) + kernel, dtype=torch.float64)
    start = time.perf_counter()
    ours = phaseconv.conv_transpose3d(x, w, stride=stride)
    assert time.perf_counter() - start < 1.0
    torch.testing.assert_close(ours, F.conv_transpose3d(x, w, stride=stride), rtol=1e-12,
                               atol=1e-12)
