"""Bad input: wherever torch refuses a call, phaseconv refuses it too, naming the argument."""
import pytest
import torch
import torch.nn.functional as F

import phaseconv

ALLOWED = (ValueError, RuntimeError, TypeError)


def base():
    return dict(input=torch.randn(1, 4, 3, 3, 3), weight=torch.randn(4, 2, 3, 3, 3),
                bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1)


# (id, changes to the base call, a word the message must contain)
CASES = [
    ("stride-zero", dict(stride=0), "stride"),
    ("stride-negative", dict(stride=(1, -1, 1)), "stride"),
    ("stride-two-values", dict(stride=(1, 2)), "stride"),
    ("stride-float", dict(stride=1.5), "stride"),
    ("stride-string", dict(stride="2"), "stride"),
    ("padding-negative", dict(padding=-1), "padding"),
    ("padding-four-values", dict(padding=(0, 0, 0, 0)), "padding"),
    ("output-padding-negative", dict(output_padding=-1), "output_padding"),
    ("output-padding-too-big", dict(stride=2, output_padding=2), "output_padding"),
    ("output-padding-not-below-stride-or-dilation", dict(output_padding=1), "output_padding"),
    ("dilation-zero", dict(dilation=0), "dilation"),
    ("dilation-float", dict(dilation=(1, 1, 1.0)), "dilation"),
    ("groups-zero", dict(groups=0), "groups"),
    ("groups-negative", dict(groups=-2), "groups"),
    ("groups-not-dividing", dict(groups=3), "groups"),
    ("groups-float", dict(groups=2.0), "groups"),
    ("output-too-small", dict(padding=3), "output size"),
    ("input-3d", dict(input=torch.randn(4, 3, 3)), "input"),
    ("input-6d", dict(input=torch.randn(1, 1, 4, 3, 3, 3)), "input"),
    ("input-channels", dict(input=torch.randn(1, 5, 3, 3, 3)), "channels"),
    ("input-empty-spatial", dict(input=torch.randn(1, 4, 0, 3, 3)), "input"),
    ("input-not-tensor", dict(input=[[1.0]]), "input"),
    ("weight-4d", dict(weight=torch.randn(4, 2, 3, 3)), "weight"),
    ("weight-empty-kernel", dict(weight=torch.randn(4, 2, 0, 3, 3)), "weight"),
    ("weight-no-output-channels", dict(weight=torch.randn(4, 0, 3, 3, 3)), "weight"),
    ("weight-dtype", dict(weight=torch.randn(4, 2, 3, 3, 3, dtype=torch.float64)), "type"),
    ("bias-length", dict(bias=torch.randn(3)), "bias"),
    ("bias-2d", dict(bias=torch.randn(2, 1)), "bias"),
    ("bias-dtype", dict(bias=torch.randn(2, dtype=torch.float64)), "bias"),
    ("bias-not-tensor", dict(bias=[0.0, 0.0]), "bias"),
    ("stride-past-64-bits", dict(stride=2**63), "stride"),
    ("padding-past-64-bits", dict(padding=(0, -2**63 - 1, 0)), "padding"),
    ("dilation-past-64-bits", dict(dilation=2**63), "dilation"),
    ("output-padding-past-64-bits", dict(output_padding=2**64), "output_padding"),
    ("groups-past-64-bits", dict(groups=2**63), "groups"),
]


@pytest.mark.parametrize("changes,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_like_torch(changes, word):
    call = dict(base(), **changes)
    with pytest.raises(ALLOWED):
        F.conv_transpose3d(**call)
    with pytest.raises(ALLOWED) as info:
        phaseconv.conv_transpose3d(**call)
    assert word in str(info.value), str(info.value)


def test_unsupported_dtypes_are_refused_by_name():
    # torch's CPU kernel happens to accept integer tensors; phaseconv computes in floating
    # point only and says so instead of rounding silently.
    call = dict(base(), input=torch.ones(1, 4, 3, 3, 3, dtype=torch.int64),
                weight=torch.ones(4, 2, 3, 3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        phaseconv.conv_transpose3d(**call)


def test_unknown_engine_refused():
    with pytest.raises(ValueError, match="engine"):
        phaseconv.conv_transpose3d(**base(), engine="fast")


def test_module_constructor_refusals_match_torch():
    for kwargs in (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2),
                   dict(in_channels=4, out_channels=3, kernel_size=3, groups=2),
                   dict(in_channels=4, out_channels=4, kernel_size=3, groups=0),
                   dict(in_channels=4, out_channels=4, kernel_size=3, padding_mode="zero")):
        with pytest.raises(ValueError):
            torch.nn.ConvTranspose3d(**kwargs)
        with pytest.raises(ValueError):
            phaseconv.ConvTranspose3d(**kwargs)


def test_module_call_refusals():
    layer = phaseconv.ConvTranspose3d(4, 2, 3)
    with pytest.raises(RuntimeError, match="channels"):
        layer(torch.randn(1, 3, 3, 3, 3))
    with pytest.raises(TypeError, match="output_size"):
        layer(torch.randn(1, 4, 3, 3, 3), output_size=7)
    with pytest.raises(RuntimeError, match="type"):
        layer(torch.randn(1, 4, 3, 3, 3, dtype=torch.float64))


# output_size as torch takes it: a sequence of ints, torch.Size, a 1-D integer tensor, 0-dim
# integer tensors as elements; floats, NaN, infinities and strings refused by name
OUTPUT_SIZES = [(7, 7, 7), torch.Size([8, 7, 7]), torch.tensor([7, 8, 7]),
                [torch.tensor(7), 7, 8], (1, 2, 7, 7, 7), range(7, 10), (True, 7, 7),
                (5.9, 6, 6), (7.0, 7, 7), ("7", 7, 7), (float("nan"), 7, 7),
                (float("inf"), 7, 7), (2**63, 7, 7), "777", 7.0, (7, 7)]


@pytest.mark.parametrize("output_size", OUTPUT_SIZES, ids=[repr(o) for o in OUTPUT_SIZES])
def test_output_size_taken_or_refused_like_torch(output_size):
    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose3d(2, 2, 3, stride=2).double()
    ours = phaseconv.convert(torch.nn.Sequential(ref))[0]
    x = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    try:
        expected = ref(x, output_size=output_size)
    except ALLOWED:
        with pytest.raises(ALLOWED) as info:
            ours(x, output_size=output_size)
        assert "output_size" in str(info.value), str(info.value)
        return
    torch.testing.assert_close(ours(x, output_size=output_size), expected, rtol=1e-12,
                               atol=1e-12)


EXPLAIN_REFUSALS = [  # layer arguments every torch call would refuse, and the word named
    (dict(stride=0), "stride"), (dict(stride=(1, -1, 1)), "stride"),
    (dict(padding=-1), "padding"), (dict(dilation=0), "dilation"),
    (dict(output_padding=3, stride=2), "output_padding"), (dict(groups=-1), "groups"),
    (dict(groups=0), "groups"), (dict(groups=4), "groups"), (dict(kernel_size=0), "kernel_size"),
    (dict(padding=5), "output size"), (dict(dilation=2**63), "dilation"),
    (dict(stride=1.5), "stride"), (dict(groups="1"), "groups"),
]


@pytest.mark.parametrize("changes,word", EXPLAIN_REFUSALS,
                         ids=[f"{sorted(c)[0]}={c[sorted(c)[0]]}" for c, _ in EXPLAIN_REFUSALS])
def test_explain_refuses_what_the_operator_refuses(changes, word):
    spec = dict(dict(in_channels=6, out_channels=6, kernel_size=3), **changes)
    with pytest.raises(ALLOWED) as info:
        phaseconv.explain(spec, (1, 6, 3, 3, 3))
    assert word in str(info.value), str(info.value)
