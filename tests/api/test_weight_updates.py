"""Every way a user changes a weight is seen by the next call: the forward and the backward
after it match torch's, on the layer's own tensors.

Nothing in phaseconv depends on noticing a change (no cache of the weight's values): these
tests pin that down for the ways that bypass torch's version counter or reuse an address -
fused optimizers, ``.data``, numpy, DLPack, freed-and-reused storage, ``swap_tensors``, EMA
copies - on the CPU (reference engine) and on CUDA (the CUDA engine; run on the device).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import phaseconv

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
ARGS = dict(in_channels=8, out_channels=6, kernel_size=(3, 2, 3), stride=2, padding=1,
            output_padding=1, groups=2)


def _layer(device, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return phaseconv.ConvTranspose3d(**ARGS).to(device, dtype)


def _x(device, dtype=torch.float64):
    return torch.randn(2, 8, 4, 3, 5, device=device, dtype=dtype,
                       generator=torch.Generator(device=device).manual_seed(1))


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)


def assert_matches_torch(layer, x):
    """The layer's forward and its three gradients against torch's functional on the layer's
    own parameters, as they are now."""
    w, b = layer.weight, layer.bias
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        xr = x.detach().clone().requires_grad_()
        ref = F.conv_transpose3d(xr, w, b, layer.stride, layer.padding, layer.output_padding,
                                 layer.groups, layer.dilation)
        xo = x.detach().clone().requires_grad_()
        out = layer(xo)
        tol = _tol(x.dtype)
        torch.testing.assert_close(out, ref, **tol)
        g = torch.randn_like(ref)
        expected = torch.autograd.grad(ref, (xr, w, b), g)
        got = torch.autograd.grad(out, (xo, w, b), g)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, **tol)


def _step(layer, opt, x):
    opt.zero_grad()
    layer(x).square().mean().backward()
    opt.step()


OPTIMIZERS = {
    "sgd": lambda p, **kw: torch.optim.SGD(p, lr=0.1, momentum=0.9, **kw),
    "adam": lambda p, **kw: torch.optim.Adam(p, lr=0.05, **kw),
    "adamw": lambda p, **kw: torch.optim.AdamW(p, lr=0.05, **kw),
    "adagrad": lambda p, **kw: torch.optim.Adagrad(p, lr=0.1, **kw),
}


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("device", DEVICES)
def test_optimizer_steps(device, name, fused):
    """Fused optimizers write the weight without bumping torch's version counter."""
    dtype = torch.float32 if device == "cuda" else torch.float64
    layer, x = _layer(device, dtype), _x(device, dtype)
    try:
        opt = OPTIMIZERS[name](layer.parameters(), **({"fused": True} if fused else {}))
        if fused:
            before = layer.weight.detach().clone()
            _step(layer, opt, x)
            assert not torch.equal(before, layer.weight)
    except (RuntimeError, TypeError, ValueError) as exc:
        if fused:
            pytest.skip(f"torch {torch.__version__} has no fused {name} on {device}: {exc}")
        raise
    for _ in range(3):
        _step(layer, opt, x)
        assert_matches_torch(layer, x)


@pytest.mark.parametrize("device", DEVICES)
def test_writes_through_data(device):
    layer, x = _layer(device), _x(device)
    assert_matches_torch(layer, x)
    layer.weight.data.mul_(-0.5)
    assert_matches_torch(layer, x)
    layer.weight.data[0, 0, 1] = 3.0
    assert_matches_torch(layer, x)
    # two new storages in turn: the second may reuse the first's freed address
    for seed in range(4):
        layer.weight.data = torch.randn_like(layer.weight,
                                             memory_format=torch.contiguous_format) * (seed + 1)
        assert_matches_torch(layer, x)


def test_writes_through_numpy():
    layer, x = _layer("cpu"), _x("cpu")
    assert_matches_torch(layer, x)
    array = layer.weight.detach().numpy()
    array *= -2.0
    array[1, 2, 0, 1, 2] = 7.0
    assert_matches_torch(layer, x)


@pytest.mark.parametrize("device", DEVICES)
def test_writes_through_dlpack(device):
    from torch.utils import dlpack

    layer, x = _layer(device), _x(device)
    assert_matches_torch(layer, x)
    alias = dlpack.from_dlpack(dlpack.to_dlpack(layer.weight.detach()))
    assert alias.data_ptr() == layer.weight.data_ptr()
    alias.mul_(3.0)
    alias[0].zero_()
    assert_matches_torch(layer, x)


@pytest.mark.parametrize("device", DEVICES)
def test_freed_and_reused_storage(device):
    """dtype round trips free the old storage; the new one may take its address."""
    layer, x = _layer(device), _x(device)
    for round_ in range(6):
        assert_matches_torch(layer, x)
        with torch.no_grad():
            layer.weight.add_(0.25 * round_)
        layer.half().double()  # new storage each time, often at a freed address


@pytest.mark.parametrize("device", DEVICES)
def test_swap_tensors_after_a_forward(device):
    swap = getattr(torch.utils, "swap_tensors", None)
    if swap is None:
        pytest.skip(f"torch {torch.__version__} has no torch.utils.swap_tensors")
    layer, x = _layer(device), _x(device)
    assert_matches_torch(layer, x)
    swap(layer.weight, torch.nn.Parameter(torch.randn_like(layer.weight)))
    assert_matches_torch(layer, x)


@pytest.mark.parametrize("device", DEVICES)
def test_swap_on_module_conversion_after_a_forward(device):
    """``.float()``/``.double()`` and ``load_state_dict`` swap the parameter tensors in place
    when torch is told to (``set_swap_module_params_on_conversion``)."""
    future = getattr(torch, "__future__", None)
    if future is None or not hasattr(future, "set_swap_module_params_on_conversion"):
        pytest.skip(f"torch {torch.__version__} cannot swap parameters on conversion")
    before = future.get_swap_module_params_on_conversion()
    future.set_swap_module_params_on_conversion(True)
    try:
        layer, x = _layer(device), _x(device)
        assert_matches_torch(layer, x)
        layer.float().double()
        assert_matches_torch(layer, x)
        layer.load_state_dict(_layer(device, seed=7).state_dict())
        assert_matches_torch(layer, x)
    finally:
        future.set_swap_module_params_on_conversion(before)


@pytest.mark.parametrize("device", DEVICES)
def test_ema_copy_updated_in_place(device):
    """An EMA / target network updated through ``.data`` (no optimizer step on it)."""
    model = torch.nn.Sequential(torch.nn.ConvTranspose3d(**ARGS)).to(device).double()
    phaseconv.convert(model)
    ema = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x = _x(device)
    for _ in range(3):
        _step(model, opt, x)
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.data.mul_(0.5).add_(p.data, alpha=0.5)
        assert_matches_torch(ema[0], x)
        assert_matches_torch(model[0], x)


@pytest.mark.parametrize("device", DEVICES)
def test_load_state_dict_and_functional_calls(device):
    layer, x = _layer(device), _x(device)
    other = _layer(device, seed=5)
    layer.load_state_dict(other.state_dict())
    assert_matches_torch(layer, x)
    w = torch.randn_like(layer.weight)
    for scale in (1.0, -2.0):  # the functional form, same weight tensor written in between
        w.mul_(scale)
        got = phaseconv.conv_transpose3d(x, w, None, 2, 1, 1, 2)
        torch.testing.assert_close(got, F.conv_transpose3d(x, w, None, 2, 1, 1, 2),
                                   **_tol(x.dtype))
