"""Deployment: ``phaseconv.revert`` (the inverse of ``convert``) and the export routes it
opens, TorchScript and ONNX (run in onnxruntime), on a converted MONAI UNet."""
import copy
import inspect
import io

import pytest
import torch
import torch.nn as nn

import phaseconv


def _unet():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    return nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16),
                     strides=(2, 2), num_res_units=1).eval()


def test_revert_of_convert_has_the_original_state_dict():
    model = _unet()
    before = model.state_dict()
    phaseconv.convert(model)
    assert any(isinstance(m, phaseconv.ConvTranspose3d) for m in model.modules())
    phaseconv.revert(model)
    assert not any(isinstance(m, phaseconv.ConvTranspose3d) for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():  # the same tensors, not copies
        assert after[key] is value or after[key].data_ptr() == value.data_ptr(), key
        assert torch.equal(after[key], value), key


def test_revert_shares_parameters_keeps_sharing_and_hooks():
    up = nn.ConvTranspose3d(2, 3, 3, stride=2)
    model = nn.Sequential(up, nn.ReLU(), nn.Sequential(up))
    seen = []
    up.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    phaseconv.convert(model)
    converted = model[0]
    assert model[2][0] is converted
    phaseconv.revert(model)
    back = model[0]
    assert type(back) is nn.ConvTranspose3d and model[2][0] is back
    assert back.weight is converted.weight and back.bias is converted.bias
    assert not hasattr(back, "engine")
    back(torch.randn(1, 2, 3, 3, 3))
    assert seen == [torch.Size([1, 3, 7, 7, 7])]
    # a bare layer, and layers that are not phaseconv's, are returned as they are
    bare = phaseconv.ConvTranspose3d(2, 3, 3)
    assert type(phaseconv.revert(bare)) is nn.ConvTranspose3d
    torch_layer = nn.ConvTranspose3d(2, 3, 3)
    assert phaseconv.revert(torch_layer) is torch_layer


def test_a_trained_converted_model_reverts_to_the_same_function():
    model = phaseconv.convert(_unet().double().train())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64)
    model(x).square().mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        want = model(x)
        got = phaseconv.revert(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _exported_pair():
    """A converted UNet's output and its reverted copy (the deployment route)."""
    model = phaseconv.convert(_unet())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        want = model(x)
    return phaseconv.revert(copy.deepcopy(model)), x, want


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_route(how):
    deployed, x, want = _exported_pair()
    with torch.no_grad():
        module = torch.jit.script(deployed) if how == "script" else torch.jit.trace(deployed, x)
        buf = io.BytesIO()
        torch.jit.save(module, buf)
        buf.seek(0)
        got = torch.jit.load(buf)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_export_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    deployed, x, want = _exported_pair()
    buf = io.BytesIO()
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters \
        else {}
    torch.onnx.export(deployed, (x,), buf, input_names=["x"], output_names=["y"],
                      opset_version=17, **kwargs)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got, = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load_from_string(buf.getvalue()).graph.node}
    assert "ConvTranspose" in ops
