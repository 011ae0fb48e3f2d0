"""Deployment: ``phaseconv.revert`` (the inverse of ``convert``), and the export routes on a
converted MONAI UNet and a bare layer, reverted or directly: TorchScript script and trace
(saved, loaded, also in a process without phaseconv), ONNX with each exporter torch has (run
in onnxruntime, standard ``ConvTranspose`` nodes) and torch.export (phaseconv's operator, and
torch's after ``phaseconv.ops.decompositions()``)."""
import copy
import importlib.util
import inspect
import io
import subprocess
import sys
import textwrap

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


# --- direct export of a converted model: what each route records -----------------------------


def _converted(which):
    """A converted model (the UNet, or a bare phaseconv layer), an input and its eager output."""
    torch.manual_seed(0)
    if which == "unet":
        model, x = phaseconv.convert(_unet()), torch.randn(1, 1, 16, 16, 16)
    else:
        model = phaseconv.ConvTranspose3d(4, 6, (3, 2, 3), stride=(2, 1, 3), padding=(1, 0, 1),
                                          output_padding=(1, 0, 2), groups=2).eval()
        x = torch.randn(2, 4, 5, 4, 3)
    with torch.no_grad():
        want = model(x)
    return model, x, want


def _phaseconv_layers(model):
    return [m for m in model.modules() if isinstance(m, phaseconv.ConvTranspose3d)]


def _torchscript(model, x, how):
    with torch.no_grad():
        module = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    buf.seek(0)
    return module, torch.jit.load(buf)


@pytest.mark.parametrize("which", ["unet", "bare"])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_of_a_converted_model(how, which):
    model, x, want = _converted(which)
    layers = _phaseconv_layers(model)
    module, loaded = _torchscript(model, x, how)
    with torch.no_grad():
        got = loaded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    kinds = {node.kind() for node in loaded.inlined_graph.nodes()}
    assert kinds & {"aten::conv_transpose3d", "aten::_convolution"}, kinds
    assert all(k.startswith(("aten::", "prim::")) for k in kinds), kinds
    # exporting left the eager model as it was
    assert _phaseconv_layers(model) == layers
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_scripted_layer_takes_output_size():
    layer = phaseconv.ConvTranspose3d(2, 3, 3, stride=2, padding=1).eval()
    x = torch.randn(1, 2, 4, 5, 6)
    scripted = _torchscript(layer, x, "script")[1]
    with torch.no_grad():
        for size in (None, [7, 9, 11], [8, 10, 12]):
            torch.testing.assert_close(scripted(x, size), layer(x, size), rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception, match="output"):
            scripted(x, [9, 9, 9])


def test_torchscript_files_load_without_phaseconv(tmp_path):
    """A process that never imports phaseconv loads and runs the scripted and traced UNet."""
    model, x, want = _converted("unet")
    for how in ("script", "trace"):
        torch.jit.save(_torchscript(model, x, how)[0], str(tmp_path / f"{how}.pt"))
    torch.save({"x": x, "want": want}, str(tmp_path / "io.pt"))
    code = textwrap.dedent("""
        import sys, torch
        data = torch.load(sys.argv[1] + "/io.pt")
        for how in ("script", "trace"):
            module = torch.jit.load(sys.argv[1] + "/" + how + ".pt")
            with torch.no_grad():
                torch.testing.assert_close(module(data["x"]), data["want"], rtol=1e-4, atol=1e-5)
        assert not any(name.startswith("phaseconv") for name in sys.modules)
        print("loaded")
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, cwd=str(tmp_path), timeout=300)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]


def _has_dynamo_exporter() -> bool:
    return "dynamo" in inspect.signature(torch.onnx.export).parameters


def _onnx_bytes(model, x, exporter, tmp_path) -> bytes:
    path = str(tmp_path / "model.onnx")
    if exporter == "dynamo":
        if not _has_dynamo_exporter():
            pytest.skip("this torch has no torch.export-based ONNX exporter")
        pytest.importorskip("onnxscript")
        # the weights inside the file, which onnxruntime then reads from bytes
        kwargs = {"external_data": False} \
            if "external_data" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                          dynamo=True, verbose=False, **kwargs)
    else:
        kwargs = {"dynamo": False} if _has_dynamo_exporter() else {}
        torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"],
                          opset_version=17, **kwargs)
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("which", ["unet", "bare"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_export_of_a_converted_model(exporter, which, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model, x, want = _converted(which)
    layers = _phaseconv_layers(model)
    data = _onnx_bytes(model, x, exporter, tmp_path)
    graph = onnx.load_from_string(data).graph
    ops = {node.op_type for node in graph.node}
    assert "ConvTranspose" in ops, ops
    assert all(node.domain in ("", "ai.onnx") for node in graph.node), \
        {node.domain for node in graph.node}
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got, = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)
    assert _phaseconv_layers(model) == layers


def test_eager_calls_never_run_torchs_op(monkeypatch):
    """The export routes' switch to torch's op is for graphs only: eager calls, with and
    without a graph to record, run phaseconv's engine."""
    from phaseconv import ops

    def refuse(*args):
        raise AssertionError("eager call recorded torch's op")

    monkeypatch.setattr(ops, "torch_conv_transpose3d", refuse)
    model, x, want = _converted("bare")
    model(x).sum().backward()
    with torch.no_grad():
        assert torch.equal(model(x), want)
        phaseconv.conv_transpose3d(x, model.weight, model.bias, stride=model.stride,
                                   padding=model.padding, output_padding=model.output_padding,
                                   groups=model.groups)


def test_torch_export_records_phaseconvs_op():
    """torch.export keeps phaseconv's operator (torch >= 2.4); ``ops.decompositions()`` turns
    it into torch's conv_transpose3d."""
    from phaseconv import ops

    if not (ops.HAS_CUSTOM_OPS and hasattr(torch, "export")):
        pytest.skip("torch.export records custom ops from torch 2.4 on")
    model, x, want = _converted("bare")
    program = torch.export.export(model, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert targets == {"phaseconv.conv_transpose3d.default"}, targets
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), want, rtol=0, atol=0)
    torch_program = program.run_decompositions(ops.decompositions())
    targets = {str(n.target) for n in torch_program.graph.nodes if n.op == "call_function"}
    assert not any("phaseconv" in t for t in targets) and targets, targets
    with torch.no_grad():
        torch.testing.assert_close(torch_program.module()(x), want, rtol=1e-5, atol=1e-6)
    if _has_dynamo_exporter() and importlib.util.find_spec("onnxscript") is not None:
        onnx_program = torch.onnx.export(torch_program, verbose=False)
        assert "ConvTranspose" in {node.op_type for node in onnx_program.model_proto.graph.node}


def test_explain_says_what_export_records():
    text = str(phaseconv.explain(phaseconv.ConvTranspose3d(2, 2, 3), (1, 2, 4, 4, 4)))
    assert "torch.jit.trace and torch.onnx.export record torch's conv_transpose3d" in text
