"""The module, convert and explain."""
import copy
import inspect
import io
import pickle

import pytest
import torch
import torch.nn as nn

import phaseconv

TIGHT = dict(rtol=1e-10, atol=1e-10)
ARGS = dict(in_channels=4, out_channels=6, kernel_size=(3, 4, 2), stride=(2, 3, 1),
            padding=(1, 0, 1), output_padding=(1, 2, 0), groups=2, dilation=(1, 1, 2))


def pair(**overrides):
    """A torch layer and a phaseconv layer holding the same float64 weights."""
    torch.manual_seed(0)
    args = dict(ARGS, **overrides)
    ref = nn.ConvTranspose3d(**args).double()
    ours = phaseconv.ConvTranspose3d(**args).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def x_for(layer, batch=2, size=(3, 4, 5)):
    return torch.randn((batch, layer.in_channels) + size, dtype=torch.float64)


def test_same_parameters_and_state_dict_keys_as_torch():
    ref, ours = pair()
    assert isinstance(ours, nn.ConvTranspose3d)
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    assert ours.weight.shape == (4, 3, 3, 4, 2)
    assert repr(ours) == "phaseconv." + repr(ref)  # the same arguments, named as ours
    # state_dict both ways
    back = nn.ConvTranspose3d(**ARGS).double()
    back.load_state_dict(ours.state_dict())
    x = x_for(ref)
    torch.testing.assert_close(ours(x), ref(x), **TIGHT)
    torch.testing.assert_close(back(x), ref(x), **TIGHT)
    no_bias = phaseconv.ConvTranspose3d(**dict(ARGS, bias=False))
    assert no_bias.bias is None and "bias" not in no_bias.state_dict()


def test_unbatched_and_empty_batch():
    ref, ours = pair()
    x = x_for(ref)
    torch.testing.assert_close(ours(x[0]), ref(x[0]), **TIGHT)
    empty = x[:0]
    assert ours(empty).shape == ref(empty).shape == (0, 6, 6, 15, 5)


@pytest.mark.parametrize("output_size", [(6, 15, 5), (5, 13, 5), [2, 6, 5, 14, 5],
                                         torch.Size([6, 14, 5])])
def test_output_size(output_size):
    ref, ours = pair()
    x = x_for(ref)
    expected = ref(x, output_size=output_size)
    torch.testing.assert_close(ours(x, output_size=output_size), expected, **TIGHT)
    assert tuple(expected.shape[2:]) == tuple(output_size)[-3:]


@pytest.mark.parametrize("output_size", [(4, 15, 5), (7, 15, 5), (6, 16, 5), (6, 15),
                                         (1, 2, 6, 15, 5, 1)])
def test_output_size_refused_like_torch(output_size):
    ref, ours = pair()
    x = x_for(ref)
    with pytest.raises(ValueError):
        ref(x, output_size=output_size)
    with pytest.raises(ValueError, match="output_size"):
        ours(x, output_size=output_size)


def test_unsupported_padding_mode_refused():
    for mode in ("reflect", "replicate", "circular", "bogus"):
        with pytest.raises(ValueError):
            nn.ConvTranspose3d(2, 2, 3, padding_mode=mode)
        with pytest.raises(ValueError, match="padding"):
            phaseconv.ConvTranspose3d(2, 2, 3, padding_mode=mode)
    layer = phaseconv.ConvTranspose3d(2, 2, 3)
    layer.padding_mode = "reflect"  # set after construction: refused at the call
    with pytest.raises(ValueError, match="padding_mode"):
        layer(torch.randn(1, 2, 3, 3, 3))


def test_training_mode_gradients_reach_the_original_weight():
    ref, ours = pair()
    x = x_for(ref)
    ref(x).square().sum().backward()
    ours(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **TIGHT)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **TIGHT)


def test_copy_and_pickle():
    ref, ours = pair()
    x = x_for(ref)
    with torch.no_grad():
        ours(x)
    clone = copy.deepcopy(ours)
    restored = pickle.loads(pickle.dumps(ours))
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    loaded = phaseconv.ConvTranspose3d(**ARGS).double()
    loaded.load_state_dict(torch.load(buf))
    with torch.no_grad():
        for layer in (clone, restored, loaded):
            torch.testing.assert_close(layer(x), ref(x), **TIGHT)


class Decoder(nn.Module):
    """A small nested encoder-decoder, shaped like a 3-D U-Net's up path."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv3d(2, 4, 3, stride=2, padding=1)
        self.up = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose3d(4, 4, 3, stride=2, padding=1, output_padding=1),
                          nn.ReLU()),
            nn.ConvTranspose3d(4, 2, 1, groups=2),
        ])
        self.head = nn.ModuleDict({"out": nn.ConvTranspose3d(2, 1, (2, 1, 3), padding=(0, 0, 1))})

    def forward(self, x):
        y = self.down(x)
        for m in self.up:
            y = m(y)
        return self.head["out"](y)


def test_convert_swaps_every_layer_and_shares_parameters():
    torch.manual_seed(0)
    model = Decoder().double()
    reference = copy.deepcopy(model)
    params_before = {name: p for name, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before conversion
    x = torch.randn(2, 2, 6, 6, 6, dtype=torch.float64)

    assert phaseconv.convert(model) is model
    swapped = [m for m in model.modules() if isinstance(m, phaseconv.ConvTranspose3d)]
    assert len(swapped) == 3
    assert not any(type(m) is nn.ConvTranspose3d for m in model.modules())
    assert isinstance(model.down, nn.Conv3d)
    for name, p in model.named_parameters():
        assert p is params_before[name]
    torch.testing.assert_close(model(x), reference(x), **TIGHT)

    # The optimizer built before conversion still trains the converted layers.
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for m, o in ((model, opt), (reference, ref_opt)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    torch.testing.assert_close(model(x), reference(x), **TIGHT)
    assert phaseconv.convert(model) is model  # idempotent


def test_convert_keeps_a_layer_shared_where_it_was():
    """One torch layer used at several places becomes one phaseconv layer used at the same
    places: hooks fire per call as torch's do, and assign-loading keeps the places tied."""
    torch.manual_seed(0)
    up = nn.ConvTranspose3d(2, 2, 3, padding=1)
    reference = nn.Sequential(up, nn.ReLU(), up, nn.Sequential(up)).double()
    model = phaseconv.convert(copy.deepcopy(reference))
    assert isinstance(model[0], phaseconv.ConvTranspose3d)
    assert model[0] is model[2] is model[3][0]
    x = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x), reference(x), **TIGHT)
    calls = {"torch": 0, "ours": 0}
    reference[0].register_forward_hook(lambda *_: calls.__setitem__("torch", calls["torch"] + 1))
    model[0].register_forward_hook(lambda *_: calls.__setitem__("ours", calls["ours"] + 1))
    reference(x)
    model(x)
    assert calls["ours"] == calls["torch"] == 3
    state = {k: torch.randn_like(v) for k, v in reference.state_dict().items()}
    if "assign" in inspect.signature(nn.Module.load_state_dict).parameters:
        model.load_state_dict(state, assign=True)
        assert model[0] is model[2] and model[0].weight is model[2].weight
    else:
        model.load_state_dict(state)
    reference.load_state_dict(state)
    torch.testing.assert_close(model(x), reference(x), **TIGHT)


def test_convert_bare_layer_and_leaves_subclasses_alone():
    layer = nn.ConvTranspose3d(2, 2, 3)
    new = phaseconv.convert(layer)
    assert isinstance(new, phaseconv.ConvTranspose3d) and new.weight is layer.weight

    class Custom(nn.ConvTranspose3d):
        pass

    model = nn.Sequential(Custom(2, 2, 3))
    phaseconv.convert(model)
    assert type(model[0]) is Custom


def test_monai_unet():
    monai = __import__("monai")  # in the test extras: a missing install fails, never skips
    torch.manual_seed(0)
    net = monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2,
                                   channels=(4, 8, 8), strides=(2, 2), num_res_units=1).double()
    reference = copy.deepcopy(net)
    phaseconv.convert(net)
    swapped = [m for m in net.modules() if isinstance(m, phaseconv.ConvTranspose3d)]
    assert len(swapped) == 2
    assert not any(type(m) is nn.ConvTranspose3d for m in net.modules())
    x = torch.randn(2, 1, 8, 8, 8, dtype=torch.float64)
    net.eval()
    reference.eval()
    torch.testing.assert_close(net(x), reference(x), **TIGHT)


def test_explain_table():
    layer = phaseconv.ConvTranspose3d(32, 32, (3, 5, 7), stride=2, padding=(1, 2, 3),
                                      output_padding=1, groups=4, bias=False)
    report = phaseconv.explain(layer, (8, 32, 12, 24, 48))
    text = str(report)
    assert report.plan.out_shape == (24, 48, 96)
    assert report.macs == 2972712960
    assert report.zero_insertion_macs == 8 * report.macs
    assert report.macs_saved == pytest.approx(0.875)
    assert "(1,0,1)" in text and "2,0 | 4,2,0 | 6,4,2,0" in text and "87.5% saved" in text
    assert report.engine.name == "reference"
    # the same from constructor arguments, unbatched
    from_args = phaseconv.explain(dict(in_channels=32, out_channels=32, kernel_size=(3, 5, 7),
                                       stride=2, padding=(1, 2, 3), output_padding=1,
                                       groups=4), (32, 12, 24, 48))
    assert from_args.macs * 8 == report.macs


def test_explain_kernel_smaller_than_stride_and_errors():
    report = phaseconv.explain(dict(in_channels=2, out_channels=2, kernel_size=1, stride=2),
                               (1, 2, 3, 3, 3))
    assert "only the bias lands there" in str(report)
    assert (report.macs, report.zero_insertion_macs) == (27 * 4, 125 * 4)
    with pytest.raises(TypeError, match="layer_or_args"):
        phaseconv.explain(nn.Conv3d(2, 2, 3), (1, 2, 3, 3, 3))
    with pytest.raises(ValueError, match="input_shape"):
        phaseconv.explain(dict(in_channels=2, out_channels=2, kernel_size=1), (2, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        phaseconv.explain(dict(in_channels=2, out_channels=2, kernel_size=1), (1, 3, 3, 3, 3))


def test_explain_memory_format():
    """The input's memory format: contiguous or channels_last_3d (a batched shape); other
    values are refused naming the argument; the reference engine's path does not depend on
    it."""
    spec = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1)
    plain = phaseconv.explain(spec, (2, 4, 5, 6, 7))
    cl = phaseconv.explain(spec, (2, 4, 5, 6, 7), memory_format=torch.channels_last_3d)
    assert str(cl) == str(plain) and cl.kernel.startswith("reference")
    assert str(phaseconv.explain(spec, (4, 5, 6, 7), memory_format=torch.contiguous_format)) \
        == str(phaseconv.explain(spec, (4, 5, 6, 7)))
    with pytest.raises(TypeError, match="memory_format must be a torch.memory_format"):
        phaseconv.explain(spec, (2, 4, 5, 6, 7), memory_format="channels_last_3d")
    with pytest.raises(ValueError, match="memory_format must be torch.contiguous_format or"):
        phaseconv.explain(spec, (2, 4, 5, 6, 7), memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="needs a batched input_shape"):
        phaseconv.explain(spec, (4, 5, 6, 7), memory_format=torch.channels_last_3d)


def test_repr_says_phaseconv():
    layer = torch.nn.ConvTranspose3d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
    model = torch.nn.Sequential(layer, torch.nn.ReLU())
    torch_text = repr(layer)
    phaseconv.convert(model)
    assert repr(model[0]) == "phaseconv." + torch_text
    assert "phaseconv.ConvTranspose3d(4, 6" in repr(model)
    forced = phaseconv.ConvTranspose3d(4, 6, 3, engine="reference")
    assert repr(forced).endswith("engine='reference')")


def test_the_constructor_shows_its_parameters():
    """help() and IDEs see torch's parameters and phaseconv's engine, in torch's order."""
    import inspect

    names = list(inspect.signature(phaseconv.ConvTranspose3d).parameters)
    torch_names = list(inspect.signature(torch.nn.ConvTranspose3d).parameters)
    assert names == torch_names + ["engine"]
    assert inspect.signature(phaseconv.ConvTranspose3d).parameters["engine"].kind == \
        inspect.Parameter.KEYWORD_ONLY
