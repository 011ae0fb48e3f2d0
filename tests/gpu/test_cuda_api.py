"""The public API on CUDA tensors (the CUDA engine) against torch.  Needs a GPU.

Run on the device machine; CI has no GPU and skips these.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import examples, run_kernelbench_check
from hypothesis import given, settings
from strategies import configs

import phaseconv
from phaseconv.checks import check_conv_transpose3d

pytestmark = pytest.mark.cuda
# Relative to the output's scale: fp32 accumulates in fp32; 16-bit types round their inputs
# and output but accumulate in fp32.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(got, expected, dtype):
    assert got.shape == expected.shape and got.dtype == dtype
    got, expected = got.double().cpu(), expected.double().cpu()
    assert torch.isfinite(got).all()
    if expected.numel() == 0:
        return
    scale = max(1.0, expected.abs().max().item())
    err = (got - expected).abs().max().item()
    assert err <= TOL[dtype] * scale, f"max error {err:.3e} (scale {scale:.3e}) in {dtype}"


def _reference(cfg, x, w, b):
    """torch in float64 on the CPU, from the same (rounded) values."""
    return F.conv_transpose3d(x.double().cpu(), w.double().cpu(),
                              None if b is None else b.double().cpu(), **cfg.kwargs)


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@settings(max_examples=examples(0.5))
@given(cfg=configs())
def test_forward_property_on_cuda(dtype, cfg):
    x, w, b = cfg.tensors(dtype=dtype, device="cuda")
    out = phaseconv.conv_transpose3d(x, w, b, **cfg.kwargs)
    _close(out, _reference(cfg, x, w, b), dtype)


@settings(max_examples=examples(0.3))
@given(cfg=configs())
def test_gradients_on_cuda(cfg):
    x, w, b = cfg.tensors(device="cuda", requires_grad=True)
    ours = phaseconv.conv_transpose3d(x, w, b, **cfg.kwargs)
    theirs = F.conv_transpose3d(x, w, b, **cfg.kwargs)
    _close(ours.detach(), theirs.detach(), torch.float64)
    g = torch.randn_like(theirs)
    inputs = [t for t in (x, w, b) if t is not None]
    for a, e in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(theirs, inputs, g)):
        _close(a, e, torch.float64)


def test_explain_names_the_cuda_kernel():
    """explain() shows which kernel the documented rule picks, per dtype."""
    founding = phaseconv.ConvTranspose3d(32, 32, (3, 5, 7), stride=2, padding=(1, 2, 3),
                                         output_padding=1, groups=4, bias=False).cuda()
    report = phaseconv.explain(founding, (8, 32, 12, 24, 48))
    assert report.kernel.startswith("mma-allphase") and "paired-w-stores" in report.kernel
    assert "kernel: mma-allphase" in str(report)
    half = phaseconv.explain(founding, (8, 32, 12, 24, 48), dtype=torch.bfloat16)
    assert half.kernel.startswith("mma-allphase") and "paired-w-stores" in half.kernel
    wide = dict(in_channels=128, out_channels=64, kernel_size=2, stride=2)
    report = phaseconv.explain(wide, (2, 128, 8, 8, 16), device="cuda", dtype=torch.bfloat16)
    assert report.kernel.startswith("implicit-gemm") and "contiguous input" in report.kernel
    wide3 = dict(in_channels=64, out_channels=32, kernel_size=3, stride=2, padding=1)
    report = phaseconv.explain(wide3, (2, 64, 8, 8, 8), device="cuda", dtype=torch.bfloat16)
    assert report.kernel.startswith("implicit-gemm") and "channels-last input" in report.kernel
    assert phaseconv.explain(wide, (2, 128, 8, 8, 16), device="cuda",
                             dtype=torch.float64).kernel.startswith("tiled")
    # on the CPU: the reference engine's path
    assert phaseconv.explain(wide, (2, 128, 8, 8, 16)).kernel == "reference, one conv3d per phase"


def test_engine_choice_and_explain():
    layer = phaseconv.ConvTranspose3d(4, 4, 3, stride=2).cuda()
    assert phaseconv.explain(layer, (1, 4, 5, 5, 5)).engine.name == "cuda"
    forced = phaseconv.explain(dict(in_channels=4, out_channels=4, kernel_size=3,
                                    engine="reference"), (1, 4, 5, 5, 5), device="cuda")
    assert forced.engine.name == "reference"
    x = torch.randn(1, 4, 5, 5, 5, device="cuda", dtype=torch.float64)
    w = torch.randn(4, 4, 3, 3, 3, device="cuda", dtype=torch.float64)
    a = phaseconv.conv_transpose3d(x, w, stride=2, engine="cuda")
    b = phaseconv.conv_transpose3d(x, w, stride=2, engine="reference")
    _close(a, b, torch.float64)
    with pytest.raises(ValueError, match="engine"):
        phaseconv.conv_transpose3d(x.cpu(), w.cpu(), engine="cuda")


def test_non_contiguous_and_channels_last_on_cuda():
    base = torch.randn(2, 8, 6, 7, 16, device="cuda")
    w = torch.randn(8, 3, 3, 4, 2, device="cuda")
    kw = dict(stride=(2, 1, 3), padding=1, groups=2)
    for x in (base[..., ::2], base.to(memory_format=torch.channels_last_3d),
              base.transpose(2, 4), base[1:, :, 1:-1]):
        _close(phaseconv.conv_transpose3d(x, w, **kw),
               F.conv_transpose3d(x.double().cpu(), w.double().cpu(), **kw), torch.float32)


def test_large_channels_on_cuda():
    x = torch.randn(2, 256, 5, 6, 7, device="cuda")
    w = torch.randn(256, 192, 4, 4, 4, device="cuda") / 64
    kw = dict(stride=2, padding=1)
    _close(phaseconv.conv_transpose3d(x, w, **kw),
           F.conv_transpose3d(x.double().cpu(), w.double().cpu(), **kw), torch.float32)


def test_module_training_step_on_cuda():
    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose3d(8, 6, 3, stride=2, padding=1, output_padding=1,
                                   groups=2).cuda().double()
    ours = phaseconv.convert(torch.nn.Sequential(ref))[0]
    x = torch.randn(2, 8, 4, 5, 6, device="cuda", dtype=torch.float64)
    with torch.no_grad():
        _close(ours(x), F.conv_transpose3d(x, ref.weight, ref.bias, 2, 1, 1, 2), torch.float64)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    ours(x).square().mean().backward()
    opt.step()
    with torch.no_grad():
        _close(ours(x), F.conv_transpose3d(x, ref.weight, ref.bias, 2, 1, 1, 2), torch.float64)


def test_founding_example_fp32_on_cuda():
    from phaseconv import founding

    torch.manual_seed(0)
    original = torch.nn.ConvTranspose3d(**founding.LAYER_ARGS).cuda()
    layer = phaseconv.convert(torch.nn.Sequential(original))[0]
    x = torch.rand(*founding.INPUT_SHAPE, device="cuda")
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            expected = F.conv_transpose3d(x, original.weight, None, 2, (1, 2, 3), 1, 4)
            got = layer(x)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    assert got.shape == founding.OUTPUT_SHAPE
    assert torch.allclose(got, expected, atol=founding.ATOL)


def test_kernelbench_check_on_cuda():
    assert "note: no CUDA" not in run_kernelbench_check()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    x = torch.randn(1, 4, 3, 4, 5, device="cuda:1", dtype=torch.float64)
    w = torch.randn(4, 2, 3, 3, 3, device="cuda:1", dtype=torch.float64)
    out = phaseconv.conv_transpose3d(x, w, stride=2)
    assert out.device == x.device
    _close(out, F.conv_transpose3d(x.cpu(), w.cpu(), stride=2), torch.float64)


def test_output_over_two_to_the_31_elements():
    # 1 x 2 x 1024 x 1024 x 1026 = 2.15e9 > 2**31 output elements (4.3 GB in float16).
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    torch.manual_seed(0)
    x = torch.randn(1, 2, 512, 512, 513, device="cuda", dtype=torch.float16)
    w = torch.randn(2, 2, 2, 2, 2, device="cuda", dtype=torch.float16)
    b = torch.randn(2, device="cuda", dtype=torch.float16)
    out = phaseconv.conv_transpose3d(x, w, b, stride=2)
    assert out.numel() > 2**31
    expected = F.conv_transpose3d(x, w, b, stride=2)
    # Compare the tail (where 32-bit indices would have wrapped) and a strided sample.
    for sl in ((0, slice(None), slice(-4, None)), (0, slice(None), slice(None, None, 97))):
        torch.testing.assert_close(out[sl].float(), expected[sl].float(), rtol=2e-2, atol=2e-2)
    del expected
    assert torch.isfinite(out[0, 1, -1]).all()


def test_gradients_bitwise_deterministic_on_cuda():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, 7, device="cuda", requires_grad=True)
    w = torch.randn(8, 4, 3, 4, 5, device="cuda", requires_grad=True)
    b = torch.randn(8, device="cuda", requires_grad=True)
    runs = []
    for _ in range(2):
        out = phaseconv.conv_transpose3d(x, w, b, stride=2, padding=1, groups=2)
        runs.append((out,) + torch.autograd.grad(out, (x, w, b), torch.ones_like(out)))
    for a, c in zip(*runs):
        assert torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_low_precision_gradients_on_cuda(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, 7, device="cuda", dtype=dtype, requires_grad=True)
    w = (torch.randn(8, 4, 3, 4, 5, device="cuda", dtype=dtype) / 8).requires_grad_()
    out = phaseconv.conv_transpose3d(x, w, stride=2, padding=1, groups=2)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, w), g)
    x64, w64 = (t.detach().double().cpu().requires_grad_() for t in (x, w))
    ref_out = F.conv_transpose3d(x64, w64, stride=2, padding=1, groups=2)
    theirs = torch.autograd.grad(ref_out, (x64, w64), g.double().cpu())
    for a, e in zip(ours, theirs):
        rel = ((a.double().cpu() - e).norm() / e.norm()).item()
        assert rel < (1e-5 if dtype == torch.float32 else 2e-2), rel


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="needs torch.compile")
@pytest.mark.parametrize("layout", ["ncdhw", "channels_last_3d"])
def test_torch_compile_on_cuda(layout):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = phaseconv.convert(torch.nn.Sequential(
        torch.nn.ConvTranspose3d(8, 4, 3, stride=2, padding=1, output_padding=1),
        torch.nn.ReLU(), torch.nn.ConvTranspose3d(4, 2, 2, stride=2))).cuda()
    x = torch.randn(2, 8, 4, 5, 6, device="cuda")
    if layout != "ncdhw":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    compiled = torch.compile(model, fullgraph=True)
    got, expected = compiled(x), model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.stride() == expected.stride()


# (layer, input shape): the implicit GEMM (wide 16-bit), the all-phase kernel, depthwise
_FORMAT_LAYERS = [
    (dict(in_channels=32, out_channels=48, kernel_size=3, stride=2, padding=1,
          output_padding=1), (2, 32, 4, 5, 6)),
    (dict(in_channels=32, out_channels=32, kernel_size=(3, 5, 7), stride=2, padding=(1, 2, 3),
          output_padding=1, groups=4), (2, 32, 3, 4, 5)),
    (dict(in_channels=8, out_channels=8, kernel_size=4, stride=2, padding=1, groups=8),
     (2, 8, 3, 4, 5)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c_out", [1, 2, 3, 4, 8, 16, 24])
def test_channels_last_result_of_narrow_layers(c_out, dtype):
    """A channels-last input to a narrow layer (8 input channels: the all-phase kernel, which
    stores the channels-last result itself, one channel, two, odd counts and pairs of them),
    in torch's format and with torch's values."""
    cl = torch.channels_last_3d
    gen = torch.Generator().manual_seed(c_out)
    x = torch.randn((2, 8, 3, 5, 7), generator=gen).to("cuda", dtype)
    x = x.contiguous(memory_format=cl)
    w = torch.randn((8, c_out, 3, 3, 3), generator=gen).to("cuda", dtype)
    got = phaseconv.conv_transpose3d(x, w, stride=2, padding=1)
    expected = F.conv_transpose3d(x, w, stride=2, padding=1)
    assert got.is_contiguous(memory_format=cl) == expected.is_contiguous(memory_format=cl)
    assert got.is_contiguous() == expected.is_contiguous()
    if c_out > 1:
        assert got.stride() == expected.stride()
    _close(got, F.conv_transpose3d(x.double(), w.double(), stride=2, padding=1), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c_out", [1, 2, 3])
def test_all_phase_forward_of_fewer_than_four_output_channels(c_out, dtype):
    """The all-phase kernel named on layers of 1-3 output channels (its 8-column tiles
    zero-padded; the rule takes it too, 16 input channels being whole octets), each tile that
    takes the layer, contiguous and channels-last inputs, with a bias, against torch in
    float64."""
    from phaseconv.engines import cuda

    gen = torch.Generator().manual_seed(c_out)
    x = torch.randn((2, 16, 5, 6, 7), generator=gen).to("cuda", dtype)
    w = torch.randn((16, c_out, 3, 3, 3), generator=gen).to("cuda", dtype)
    b = torch.randn((c_out,), generator=gen).to("cuda", dtype)
    kw = dict(stride=2, padding=1, output_padding=1)
    args = check_conv_transpose3d(x, w, b, (2, 2, 2), (1, 1, 1), (1, 1, 1), 1, (1, 1, 1))
    expected = F.conv_transpose3d(x.double(), w.double(), b.double(), **kw)
    ran = []
    for tile in range(5):
        kernel = cuda.ForwardKernel("allphase", allph_tile=tile)
        for xin in (x, x.contiguous(memory_format=torch.channels_last_3d)):
            try:
                got = cuda.forward(xin, w, b, args, kernel=kernel)
            except RuntimeError as refused:
                assert "no tile of it takes this layer" in str(refused), str(refused)
                continue
            _close(got, expected, dtype)
            ran.append(tile)
    assert 0 in ran and 4 in ran, ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c_out, groups", [(16, 1), (17, 1), (32, 1), (32, 4), (3, 1)])
def test_all_phase_kernel_writes_a_channels_last_result(c_out, groups, dtype):
    """Asked for a channels-last result, the all-phase kernel stores it itself where one group
    has 16 or more output channels (adjacent channels as one vector where C_out is even), and
    its contiguous result is copied once otherwise (the description says which); each tile
    that takes the layer, either input layout, with a bias: the bits of its contiguous result
    (the same sums in the same order), torch's format and values; an Inf in the input gives
    torch's non-finite pattern on the channels-last result (the fix-up)."""
    from phaseconv.engines import cuda

    cl = torch.channels_last_3d
    gen = torch.Generator().manual_seed(c_out)
    cin = 8 * groups
    x = torch.randn((2, cin, 3, 5, 7), generator=gen).to("cuda", dtype)
    w = torch.randn((cin, c_out // groups, 3, 5, 7), generator=gen).to("cuda", dtype)
    b = torch.randn((c_out,), generator=gen).to("cuda", dtype)
    kw = dict(stride=2, padding=(1, 2, 3), output_padding=1, groups=groups)
    args = check_conv_transpose3d(x, w, b, (2, 2, 2), (1, 2, 3), (1, 1, 1), groups, (1, 1, 1))
    expected = F.conv_transpose3d(x.double(), w.double(), b.double(), **kw)
    ran = []
    for tile in range(5):
        kernel = cuda.ForwardKernel("allphase", allph_tile=tile)
        for xin in (x, x.contiguous(memory_format=cl)):
            try:
                plain = cuda.forward(xin, w, b, args, kernel=kernel)
            except RuntimeError as refused:
                assert "no tile of it takes this layer" in str(refused), str(refused)
                continue
            got = cuda.forward(xin, w, b, args, kernel=kernel, out_channels_last=True)
            assert got.is_contiguous(memory_format=cl), (tile, got.stride())
            assert torch.equal(got.contiguous(), plain), tile
            _close(got, expected, dtype)
            ran.append(tile)
    assert 0 in ran and 4 in ran, ran
    text = cuda.describe(args, 2, dtype, x.device, True, "allphase", True)
    in_place = groups == 1 and c_out >= 16
    tail = ", channels-last output" if in_place else ", channels-last output (one copy)"
    assert text.endswith("(channels-last input)" + tail), text
    poisoned = x.clone()
    poisoned[0, 0, 1, 2, 3] = float("inf")
    got = cuda.forward(poisoned.contiguous(memory_format=cl), w, b, args, kernel="allphase",
                       out_channels_last=True).double().cpu()
    ref = F.conv_transpose3d(poisoned.double().cpu(), w.double().cpu(), b.double().cpu(), **kw)
    assert not torch.isfinite(ref).all()
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.equal(torch.isposinf(got), torch.isposinf(ref))
    assert torch.equal(torch.isneginf(got), torch.isneginf(ref))


@pytest.mark.parametrize("cin, cout, groups", [(32, 2, 1), (32, 3, 1), (64, 6, 2)])
def test_float32_all_phase_forward_with_the_halo_split_at_load(cin, cout, groups):
    """Where two float32 halo copies (split into tf32 big and small parts) do not fit, 32
    input channels a group at k3 (MONAI UNet's 32 -> 2), the all-phase kernel stages the halo
    once and splits each A fragment as it loads it: within float32's tolerance of torch in
    float64, by the rule and for each narrow tile by name (the wide ones refuse it), either
    input layout, with a bias, groups; results repeat bitwise."""
    from phaseconv.engines import cuda

    gen = torch.Generator().manual_seed(cin + cout)
    x = torch.randn((2, cin, 6, 7, 9), generator=gen).to("cuda")
    w = torch.randn((cin, cout // groups, 3, 3, 3), generator=gen).to("cuda")
    b = torch.randn((cout,), generator=gen).to("cuda")
    kw = dict(stride=2, padding=1, output_padding=1, groups=groups)
    args = check_conv_transpose3d(x, w, b, (2, 2, 2), (1, 1, 1), (1, 1, 1), groups, (1, 1, 1))
    text = cuda.describe(args, 2, torch.float32, x.device)
    assert text.startswith("mma-allphase") and "halo-split-at-load" in text, text
    expected = F.conv_transpose3d(x.double(), w.double(), b.double(), **kw)
    ran = []
    for kernel in ["auto"] + [cuda.ForwardKernel("allphase", allph_tile=t) for t in range(5)]:
        for xin in (x, x.contiguous(memory_format=torch.channels_last_3d)):
            try:
                got = cuda.forward(xin, w, b, args, kernel=kernel)
            except RuntimeError as refused:
                assert kernel != "auto" and kernel.allph_tile in (2, 3), str(refused)
                assert "no tile of it takes this layer" in str(refused), str(refused)
                continue
            _close(got, expected, torch.float32)
            assert torch.equal(got, cuda.forward(xin, w, b, args, kernel=kernel))
            ran.append(kernel)
    assert len(ran) == 8, ran


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_all_phase_forward_of_a_channels_last_input_in_one_halo_buffer(dtype):
    """Where two halo buffers do not fit shared memory (eight channel groups a position), the
    all-phase kernel reads a channels-last input in place through one buffer, filled and
    waited for at each tile (two tiles a block here, so the buffer is refilled), in torch's
    values and format, as the contiguous input's path gives them."""
    from phaseconv.engines import cuda

    gen = torch.Generator().manual_seed(7)
    x = torch.randn((4, 64, 24, 24, 24), generator=gen).to("cuda", dtype)
    w = (torch.randn((64, 16, 3, 3, 3), generator=gen) / 40).to("cuda", dtype)
    b = torch.randn((16,), generator=gen).to("cuda", dtype)
    kw = dict(stride=2, padding=1, output_padding=1)
    xcl = x.contiguous(memory_format=torch.channels_last_3d)
    args = check_conv_transpose3d(xcl, w, b, (2, 2, 2), (1, 1, 1), (1, 1, 1), 1, (1, 1, 1))
    text = cuda.describe(args, 4, dtype, x.device, True)
    assert text.startswith("mma-allphase") and "one-halo-buffer" in text, text
    assert text.endswith("(channels-last input)"), text
    assert "per_cta=1 " not in text, text
    expected = F.conv_transpose3d(x.double(), w.double(), b.double(), **kw)
    got = phaseconv.conv_transpose3d(xcl, w, b, **kw)
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    _close(got, expected, dtype)
    # the contiguous input's bits (the same sums in the same order)
    assert torch.equal(got.contiguous(), phaseconv.conv_transpose3d(x, w, b, **kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16,
                                   torch.float64], ids=str)
@pytest.mark.parametrize("layer", range(len(_FORMAT_LAYERS)))
def test_output_memory_format_matches_torch(layer, dtype):
    """The result comes in torch's memory format on CUDA (channels_last_3d for a
    channels_last_3d input or weight, except float64), with torch's values; the implicit GEMM
    writes channels-last in place, the other kernels copy once, and the description says so."""
    from phaseconv.engines import cuda

    spec, shape = _FORMAT_LAYERS[layer]
    theirs = torch.nn.ConvTranspose3d(**spec).to("cuda", dtype)
    ours = phaseconv.ConvTranspose3d.from_torch(theirs)
    cl = torch.channels_last_3d
    gen = torch.Generator().manual_seed(layer)
    x = torch.randn(shape, generator=gen).to("cuda", dtype)
    for x_cl, w_cl in ((False, False), (True, False), (False, True)):
        xin = x.contiguous(memory_format=cl) if x_cl else x
        w = theirs.weight.detach()
        w = w.contiguous(memory_format=cl) if w_cl else w.contiguous()
        kw = dict(stride=theirs.stride, padding=theirs.padding,
                  output_padding=theirs.output_padding, groups=theirs.groups)
        expected = F.conv_transpose3d(xin, w, theirs.bias, **kw)
        got = phaseconv.conv_transpose3d(xin, w, theirs.bias, **kw)
        assert got.is_contiguous(memory_format=cl) == expected.is_contiguous(memory_format=cl)
        assert got.is_contiguous() == expected.is_contiguous(), (x_cl, w_cl)
        assert got.stride() == expected.stride(), (x_cl, w_cl)
        ref = F.conv_transpose3d(xin.double(), w.double(), theirs.bias.double(), **kw)
        _close(got, ref, dtype)
    if layer == 2 or (layer == 0 and dtype in (torch.float16, torch.bfloat16)):
        conv = check_conv_transpose3d(x, theirs.weight, None, theirs.stride, theirs.padding,
                                      theirs.output_padding, theirs.groups, (1, 1, 1))
        text = cuda.describe(conv, shape[0], dtype, x.device, True, out_channels_last=True)
        if layer == 0:
            assert text.startswith("implicit-gemm") and text.endswith(", channels-last output")
        else:
            assert text.endswith(", channels-last output (one copy)"), text
    # training through a channels-last result
    xg = x.contiguous(memory_format=cl).requires_grad_()
    out = ours(xg)
    out.float().square().mean().backward()
    xr = x.contiguous(memory_format=cl).requires_grad_()
    theirs(xr).float().square().mean().backward()
    _close(xg.grad, xr.grad, dtype)


_BAD_BINDING_CALLS = """
import torch
from phaseconv.engines import cuda
from phaseconv.checks import check_conv_transpose3d
mod = cuda.load()
w = torch.randn(8, 4, 3, 3, 3, device="cuda")
x = torch.randn(1, 8, 4, 4, 4, device="cuda")
args = check_conv_transpose3d(x, w, None, (2, 2, 2), (1, 1, 1), (0, 0, 0), 2, (1, 1, 1))
t = cuda.layer_tables(w.shape, 2, (2, 2, 2), (1, 1, 1), (1, 1, 1), w.dtype, x.device)
h = t.host
good = [x, w, False, False, t.table, t.index, t.mma_taps, list(args.out_shape),
        list(h.stride), list(h.phase_dilation), list(h.max_taps), h.total_taps, 2,
        list(h.union_box), [1, 1, 1], [1, 1, 1], cuda.ForwardKernel().codes()]
cases = {  # each past the Python checks, straight into the binding
    "groups": lambda a: a.__setitem__(12, 3),
    "stride": lambda a: a.__setitem__(8, [2, 2]),
    "dims": lambda a: a.__setitem__(0, x[0]),
    "index": lambda a: a.__setitem__(5, t.index[1:]),
    "mma_taps": lambda a: a.__setitem__(6, t.mma_taps[1:]),
    "dtype": lambda a: a.__setitem__(1, w.double()),
}
for name, spoil in cases.items():
    args_ = list(good)
    spoil(args_)
    try:
        mod.ForwardPlan(*args_)
    except RuntimeError as exc:
        print("refused:", name, "|", str(exc).splitlines()[0][:120])
plan = mod.ForwardPlan(*good)
with_bias = mod.ForwardPlan(*(good[:2] + [True] + good[3:]))
for name, call in {"bias": lambda: with_bias(x, w, torch.randn(5, device="cuda")),
                   "shape": lambda: plan(x[:, :, 1:], w, None),
                   "weight": lambda: plan(x, w[:, :2], None)}.items():
    try:
        call()
    except RuntimeError as exc:
        print("refused:", name, "|", str(exc).splitlines()[0][:120])
gy = torch.randn(1, 8, 7, 7, 7, device="cuda")
try:
    mod.BackwardPlan(x, w, gy, 3, [2, 2, 2], [1, 1, 1], t.table, t.index, list(h.max_taps),
                     t.gi_table, t.gi_index, list(h.gi_max_taps), h.gi_total_taps,
                     [1, 1, 1], [1, 1, 1], 0, 0)
except RuntimeError as exc:
    print("refused: groups backward |", str(exc).splitlines()[0][:120])
other_groups = cuda.layer_tables(w.shape, 1, (2, 2, 2), (1, 1, 1), (1, 1, 1), w.dtype, x.device)
other_dtype = cuda.layer_tables(w.shape, 2, (2, 2, 2), (1, 1, 1), (1, 1, 1), torch.bfloat16,
                                x.device)
for name, call in {"pack taps": lambda: mod.pack_weight_mma(w, t.mma_taps[:, :1], 2),
                   "pack layout": lambda: mod.pack_weight_mma(w, t.mma_taps, 2, True),
                   "pack octets": lambda: mod.pack_weight_mma(w, None, 2, True),
                   "pack other groups": lambda: mod.pack_weight_mma(w, other_groups.mma_taps, 2),
                   "pack other dtype": lambda: mod.pack_weight_mma(w, other_dtype.mma_taps, 2),
                   }.items():
    try:
        call()
    except RuntimeError as exc:
        print("refused:", name, "|", str(exc).splitlines()[0][:120])
"""


def test_binding_refuses_bad_arguments_without_crashing():
    """A TORCH_CHECK inside the compiled binding raises RuntimeError (it used to kill the
    process when its message streamed an integer: messages now format numbers as strings)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _BAD_BINDING_CALLS], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:]
    refused = [line for line in result.stdout.splitlines() if line.startswith("refused:")]
    assert len(refused) == 15, result.stdout[-2000:]
    assert any("does not fit 8 input channels in 3 groups" in line for line in refused)
    assert sum("tap table does not lay out this weight" in line for line in refused) == 2
    assert any("the bias (shape [5], dtype Float" in line for line in refused)


# ---- the CUDA backward (grad_input through the forward kernels, grad_weight kernel)

@settings(max_examples=examples(0.1), deadline=None)
@given(cfg=configs(max_size=3))
def test_gradcheck_on_cuda(cfg):
    x, w, b = cfg.tensors(device="cuda", requires_grad=True)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*args):
        return phaseconv.conv_transpose3d(args[0], args[1], args[2] if b is not None else None,
                                          **cfg.kwargs)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


_BWD_CASES = [  # ragged phases, kernel < stride, dilation sharing a factor with the stride
    dict(n=2, cin=8, cout=12, groups=2, size=(3, 4, 5), k=(3, 5, 7), s=(2, 2, 2), p=(1, 2, 3),
         op=(1, 1, 1), d=(1, 1, 1)),
    dict(n=1, cin=6, cout=4, groups=1, size=(2, 3, 4), k=(1, 2, 1), s=(3, 4, 2), p=(0, 0, 0),
         op=(2, 1, 1), d=(1, 1, 1)),
    dict(n=2, cin=4, cout=8, groups=2, size=(4, 3, 5), k=(2, 3, 4), s=(2, 1, 3), p=(1, 1, 2),
         op=(1, 0, 2), d=(2, 1, 3)),
    dict(n=3, cin=32, cout=48, groups=1, size=(5, 6, 7), k=(3, 3, 3), s=(2, 2, 2), p=(1, 1, 1),
         op=(1, 1, 1), d=(1, 1, 1)),
    dict(n=2, cin=64, cout=64, groups=64, size=(6, 6, 6), k=(4, 4, 4), s=(2, 2, 2),
         p=(1, 1, 1), op=(0, 0, 0), d=(1, 1, 1)),
    dict(n=2, cin=32, cout=2, groups=1, size=(5, 6, 7), k=(3, 3, 3), s=(2, 2, 2), p=(1, 1, 1),
         op=(1, 1, 1), d=(1, 1, 1)),  # two output channels (MONAI UNet's last up-convolution)
    dict(n=1, cin=3, cout=6, groups=3, size=(4, 5, 3), k=(2, 3, 2), s=(2, 1, 2), p=(0, 1, 1),
         op=(1, 0, 0), d=(1, 1, 2)),  # one input channel, two output channels a group
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("case", range(len(_BWD_CASES)))
def test_cuda_gradients_match_float64(case, dtype):
    """grad_input and grad_weight of the CUDA engine against torch in float64 on the CPU."""
    c = _BWD_CASES[case]
    gen = torch.Generator().manual_seed(case)
    x = torch.randn((c["n"], c["cin"]) + c["size"], generator=gen).to(dtype)
    w = (torch.randn((c["cin"], c["cout"] // c["groups"]) + c["k"], generator=gen) / 4).to(dtype)
    kw = dict(stride=c["s"], padding=c["p"], output_padding=c["op"], groups=c["groups"],
              dilation=c["d"])
    xd, wd = x.cuda().requires_grad_(), w.cuda().requires_grad_()
    out = phaseconv.conv_transpose3d(xd, wd, **kw)
    g = torch.randn(out.shape, generator=gen).to(dtype)
    ours = torch.autograd.grad(out, (xd, wd), g.cuda())
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    theirs = torch.autograd.grad(F.conv_transpose3d(x64, w64, **kw), (x64, w64), g.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3,
           torch.bfloat16: 2e-2}[dtype]
    for a, e in zip(ours, theirs):
        assert a.dtype == dtype
        rel = ((a.double().cpu() - e).norm() / e.norm().clamp_min(1e-30)).item()
        assert rel < tol, rel


def test_cuda_backward_runs_under_deterministic_algorithms():
    """The CUDA backward needs no cuBLAS or atomics: torch's deterministic mode (without
    CUBLAS_WORKSPACE_CONFIG) does not refuse it, and it gives the same bits."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 6, 7, device="cuda", requires_grad=True)
    w = torch.randn(16, 8, 3, 4, 5, device="cuda", requires_grad=True)
    b = torch.randn(16, device="cuda", requires_grad=True)
    kw = dict(stride=2, padding=1, groups=2)
    out = phaseconv.conv_transpose3d(x, w, b, **kw)
    g = torch.randn_like(out)
    free = torch.autograd.grad(out, (x, w, b), g)
    torch.use_deterministic_algorithms(True)
    try:
        out = phaseconv.conv_transpose3d(x, w, b, **kw)
        det = torch.autograd.grad(out, (x, w, b), g)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, c in zip(free, det):
        assert torch.equal(a, c)


def _args(x, w, s, p, d, g, op=(0, 0, 0)):
    return check_conv_transpose3d(x, w, None, s, p, op, g, d)


def test_cuda_weight_gradient_kernel_against_reference():
    """The grad_weight kernels alone, written straight into the weight's layout, against the
    reference engine's phase-form gradient (float64; many output tiles: several splits)."""
    from phaseconv.engines import cuda, reference
    from phaseconv.geometry import phase_plan
    from phaseconv.packing import unpack_conv3d_phases

    torch.manual_seed(0)
    for k, s, p, d, g in [((3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), 4),
                          ((2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 1, 3), 2),
                          ((1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1)]:
        x = torch.randn(2, 8, 9, 10, 40, device="cuda", dtype=torch.float64)
        w = torch.randn(8, 12 // g, *k, device="cuda", dtype=torch.float64)
        plan = phase_plan((9, 10, 40), k, s, p, dilation=d, output_padding=(0, 0, 0))
        gy = torch.randn((2, 12) + plan.out_shape, device="cuda", dtype=torch.float64)
        _, ours = cuda.backward(gy, x, w, _args(x, w, s, p, d, g), need_input=False)
        assert ours.is_contiguous()
        phases = reference.grad_weight_phases(x, gy, plan, g, 12, tuple(w.shape))
        theirs = unpack_conv3d_phases(phases, tuple(w.shape), g, s, p, d)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-9)


_GW_MMA_CASES = [  # (n, cin, cout, groups, size, k, s, p, d): C_in/g and C_out/g >= 16
    (2, 32, 16, 1, (5, 6, 7), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1)),  # ragged phases
    (2, 40, 34, 2, (4, 5, 6), (2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 1, 3)),  # 20/17: tails
    (1, 160, 48, 1, (5, 6, 6), (4, 4, 4), (2, 2, 2), (1, 1, 1), (1, 1, 1)),  # 3 C_in blocks
    (3, 16, 96, 1, (9, 10, 40), (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1)),  # 10800 terms
    (2, 64, 64, 1, (3, 3, 3), (1, 2, 1), (3, 4, 2), (0, 0, 0), (1, 1, 1)),  # empty phases
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(_GW_MMA_CASES)))
def test_tensor_core_weight_gradient(case, dtype):
    """The tensor-core grad_weight kernel (3xTF32 for float32, flushed every 256 terms)
    against the reference phase-form gradient in float64 from the same rounded values:
    channel tails, several channel blocks, ragged and empty phases, dilation, long reductions
    (splits); the SIMT kernel on the same layer too."""
    from phaseconv.engines import cuda, reference
    from phaseconv.geometry import phase_plan
    from phaseconv.packing import unpack_conv3d_phases

    n, cin, cout, g, size, k, s, p, d = _GW_MMA_CASES[case]
    gen = torch.Generator().manual_seed(case)
    x = torch.randn((n, cin) + size, generator=gen).to(dtype)
    w = torch.randn((cin, cout // g) + k, generator=gen).to(dtype)
    plan = phase_plan(size, k, s, p, dilation=d, output_padding=(0, 0, 0))
    gy = torch.randn((n, cout) + plan.out_shape, generator=gen).to(dtype)
    xc, wc, gyc = x.cuda(), w.cuda(), gy.cuda()
    args = _args(xc, wc, s, p, d, g)
    assert cuda.describe_backward(args, n, dtype, xc.device)[1].startswith("tensor-core")
    _, ours = cuda.backward(gyc, xc, wc, args, need_input=False,
                            grad_weight_kernel="tensor-cores")
    assert ours.dtype == dtype
    phases = reference.grad_weight_phases(x.double(), gy.double(), plan, g, cout,
                                          tuple(w.shape))
    theirs = unpack_conv3d_phases(phases, tuple(w.shape), g, s, p, d)
    _assert_gradient_close(ours, theirs, dtype)
    _, simt = cuda.backward(gyc, xc, wc, args, need_input=False, grad_weight_kernel="simt")
    assert ((simt.double().cpu() - theirs).norm() / theirs.norm()).item() < _GRADIENT_TOL[dtype]


# a tensor-core gradient against float64: relative norm of the error, by dtype
_GRADIENT_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _assert_gradient_close(got, expected, dtype):
    """``got`` against its float64 value: the error's norm within the dtype's tolerance of the
    value's, and its largest element within four times that of the largest value."""
    err = got.double().cpu() - expected
    rel = (err.norm() / expected.norm()).item()
    worst = (err.abs().max() / expected.abs().max()).item()
    tol = _GRADIENT_TOL[dtype]
    assert rel < tol and worst < 4 * tol, (rel, worst)


def _layer_case(n, cin, cout, g, size, k, s, p, op, d, dtype, seed):
    """A layer's input, weight (scaled by 1/4) and grad_output in `dtype` on the GPU, its
    call arguments, and torch's float64 gradients (input, weight) from the same values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, cin) + size, generator=gen).to(dtype)
    w = (torch.randn((cin, cout // g) + k, generator=gen) / 4).to(dtype)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    out = F.conv_transpose3d(x64, w64, None, s, p, op, g, d)
    gy = torch.randn(out.shape, generator=gen).to(dtype)
    expected = torch.autograd.grad(out, (x64, w64), gy.double())
    xc, wc, gyc = x.cuda(), w.cuda(), gy.cuda()
    return xc, wc, gyc, _args(xc, wc, s, p, d, g, op), expected


_CL_BWD_CASES = [  # (n, cin, cout, groups, size, k, s, p, op, d): the channels-last kernels
    (2, 32, 16, 1, (5, 6, 7), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1)),  # ragged
    (2, 80, 48, 2, (4, 5, 6), (2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 0, 1), (2, 1, 3)),  # tails
    (1, 160, 64, 1, (5, 6, 6), (4, 4, 4), (2, 2, 2), (1, 1, 1), (0, 0, 0), (1, 1, 1)),  # blocks
    (3, 32, 96, 1, (9, 10, 40), (1, 1, 1), (1, 1, 1), (0, 0, 0), (0, 0, 0), (1, 1, 1)),  # splits
    (2, 64, 64, 1, (3, 3, 3), (1, 2, 1), (3, 4, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1)),  # empty
    (2, 272, 144, 2, (4, 5, 6), (3, 2, 3), (2, 2, 2), (1, 0, 1), (1, 1, 0), (1, 2, 1)),  # 2 tails
    (2, 256, 160, 1, (3, 4, 5), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1)),  # 128 x 128
    (2, 96, 40, 1, (12, 12, 12), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),  # 64 x 32
    # whole 64-channel steps of grad_y (the TMA tiles): strides 3 and 1, dilation; groups
    (2, 96, 64, 1, (5, 6, 7), (3, 3, 3), (3, 1, 2), (1, 1, 1), (2, 0, 1), (2, 1, 1)),
    (2, 128, 128, 2, (4, 5, 6), (2, 3, 3), (2, 2, 1), (0, 1, 1), (1, 0, 0), (1, 1, 2)),
    # 32-channel steps of grad_y (the TMA tile's 64-byte rows): 32 and 96 a group
    (2, 64, 32, 1, (6, 7, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    (1, 96, 192, 2, (4, 5, 6), (3, 2, 3), (2, 1, 2), (1, 0, 1), (0, 0, 1), (1, 2, 1)),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(_CL_BWD_CASES)))
def test_channels_last_backward_kernels(case, dtype):
    """The 16-bit backward of wide layers: grad_input on the implicit GEMM (grad_y read
    channels-last at the stride) and grad_weight on the channels-last tensor-core GEMM (on
    sm_90a, for C_in/g >= 64 and C_out/g >= 32, its warpgroup form), by the rule and forced (the
    mma.sync form and the narrow window kernel everywhere, the warpgroup form where it runs),
    against torch in float64 from the same rounded values (ragged and empty phases, dilation,
    groups, channel tails, several channel blocks, split reductions, tails in both channels,
    each tile of both forms); contiguous operands (copied channels-last) give the same bits as
    channels-last ones read in place, and results repeat bitwise."""
    from phaseconv.engines import cuda

    n, cin, cout, g, size, k, s, p, op, d = _CL_BWD_CASES[case]
    xc, wc, gyc, args, expected = _layer_case(n, cin, cout, g, size, k, s, p, op, d, dtype,
                                              case)
    gi_desc, gw_desc = cuda.describe_backward(args, n, dtype, xc.device)
    assert gi_desc.startswith("implicit-gemm grad-input"), gi_desc
    assert "grad_y channels-last" in gi_desc
    assert gw_desc.startswith("tensor-core gemm fp32-accumulate, channels-last operands"), \
        gw_desc
    warpgroups = cuda.warpgroup_kernels() and cin // g >= 64 and cout // g >= 32
    if warpgroups:
        tile = ("128x128" if cin // g >= 128 and cout // g >= 128 else
                "64x64" if cout // g >= 64 else "64x32")
    else:
        tile = "64x64" if cout // g > 32 else "64x32"
    assert f"operands, {tile} channel tile" in gw_desc, gw_desc
    assert ("wgmma-sm90a" in gw_desc) == warpgroups, gw_desc
    tol = {torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    # the narrow window kernel, named (whole octets on both sides)
    forced = [dict(grad_input_kernel="implicit-gemm", grad_weight_kernel="tensor-cores-cl"),
              dict(grad_input_kernel="implicit-gemm", grad_weight_kernel="tensor-cores-narrow")]
    if warpgroups:
        forced.append(dict(grad_input_kernel="implicit-gemm",
                           grad_weight_kernel="tensor-cores-wgmma"))
        # its TMA form: chunks are boxes of phase outputs, grad_y's at the stride
        forced.append(dict(grad_input_kernel="implicit-gemm",
                           grad_weight_kernel="tensor-cores-tma"))
    else:
        with pytest.raises(RuntimeError, match="warpgroup tensor-core gemm kernel was forced"):
            cuda.backward(gyc, xc, wc, args, grad_weight_kernel="tensor-cores-wgmma")
        with pytest.raises(RuntimeError, match="was forced"):
            cuda.backward(gyc, xc, wc, args, grad_weight_kernel="tensor-cores-tma")
    descs = [cuda.backward_plan(args, n, dtype, xc.device, **f)[1].grad_weight_description
             for f in forced]
    assert "wgmma" not in descs[0] and descs[1].startswith("tensor-core window") and \
        all("wgmma-sm90a" in e for e in descs[2:]), descs
    if warpgroups:
        assert f"operands, {tile} channel tile" in descs[2], descs[2]
        assert f"operands, {tile} channel tile" in descs[3] and "tma-box" in descs[3], descs[3]
    runs = [cuda.backward(gyc, xc, wc, args)] + [cuda.backward(gyc, xc, wc, args, **f)
                                                 for f in forced]
    for got in runs:
        for name, a, e in zip(("grad_input", "grad_weight"), got, expected):
            assert a.dtype == dtype and a.shape == e.shape, name
            rel = ((a.double().cpu() - e).norm() / e.norm()).item()
            assert rel < tol, (name, rel)
    cl = torch.channels_last_3d
    gyl, xl = gyc.contiguous(memory_format=cl), xc.contiguous(memory_format=cl)
    again = [cuda.backward(gyc, xc, wc, args)] + [cuda.backward(gyc, xc, wc, args, **f)
                                                  for f in forced]
    in_place = [cuda.backward(gyl, xl, wc, args)] + [cuda.backward(gyl, xl, wc, args, **f)
                                                     for f in forced]
    for first, repeated, read_in_place in zip(runs, again, in_place):
        for a, b, c in zip(first, repeated, read_in_place):
            assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("case", [0, 2, 6, 8])
def test_input_gradient_channels_last(case):
    """grad_input channels_last_3d where asked (by default where x or the weight suggests it,
    torch's layout): the implicit GEMM's tiles write it so, the other kernels' results are
    copied; the same values as the contiguous result, bit for bit, for every input-gradient
    kernel that takes the layer (bf16; float32's implicit GEMM named)."""
    from phaseconv.engines import cuda

    n, cin, cout, g, size, k, s, p, op, d = _CL_BWD_CASES[case]
    cl = torch.channels_last_3d
    for dtype in (torch.bfloat16, torch.float32):
        xc, wc, gyc, args, (expected, _) = _layer_case(n, cin, cout, g, size, k, s, p, op, d,
                                                       dtype, case)
        named = [dict(), dict(grad_input_kernel="implicit-gemm"),
                 dict(grad_input_kernel="tensor-cores"), dict(grad_input_kernel="naive")]
        if cuda.warpgroup_kernels():
            named += [dict(grad_input_kernel="implicit-gemm", grad_input_tile=t) for t in (4, 8)]
        ran = 0
        for kw in named:
            try:
                flat = cuda.backward(gyc, xc, wc, args, need_weight=False,
                                     grad_input_channels_last=False, **kw)[0]
            except RuntimeError as refused:
                assert "was forced and" in str(refused), str(refused)
                continue
            ran += 1
            both = cuda.backward(gyc, xc, wc, args, need_weight=False,
                                 grad_input_channels_last=True, **kw)[0]
            assert flat.is_contiguous() and both.is_contiguous(memory_format=cl), kw
            assert torch.equal(both, flat), kw
            rel = ((both.double().cpu() - expected).norm() / expected.norm()).item()
            assert rel < _GRADIENT_TOL[dtype], (kw, rel)
        assert ran >= 2
        # the default: torch's layout for the call
        by_rule = cuda.backward(gyc, xc.contiguous(memory_format=cl), wc, args,
                                need_weight=False)[0]
        assert by_rule.is_contiguous(memory_format=cl)
        assert cuda.backward(gyc, xc, wc, args, need_weight=False)[0].is_contiguous()


@pytest.mark.parametrize("case", [1, 2, 6, 8, 9, 10, 11])
def test_input_gradient_on_each_implicit_gemm_tile(case):
    """Every tile of the input gradient's implicit GEMM, named (grad_input_tile: what the
    benchmarks sweep), against torch in float64 (bf16): each mma.sync kind, and the warpgroup
    and TMA kinds where the build runs them (the TMA boxes read grad_y at the stride);
    results repeat bitwise."""
    from phaseconv.engines import cuda

    n, cin, cout, g, size, k, s, p, op, d = _CL_BWD_CASES[case]
    xc, wc, gyc, args, (expected, _) = _layer_case(n, cin, cout, g, size, k, s, p, op, d,
                                                   torch.bfloat16, case)
    ran = []
    w_cl = wc.contiguous(memory_format=torch.channels_last_3d)
    for tile in range(cuda.GEMM_TILE_KINDS):
        try:
            desc = cuda.backward_plan(args, n, torch.bfloat16, xc.device, "implicit-gemm",
                                      grad_input_tile=tile)[1].grad_input_description
        except RuntimeError as refused:
            assert "the named tile cannot take the layer" in str(refused), str(refused)
            continue
        assert f"kind={tile} " in desc, desc
        named = dict(grad_input_kernel="implicit-gemm", grad_input_tile=tile)
        got = cuda.backward(gyc, xc, wc, args, need_weight=False, **named)[0]
        rel = ((got.double().cpu() - expected).norm() / expected.norm()).item()
        assert rel < _GRADIENT_TOL[torch.bfloat16], (tile, rel)
        assert torch.equal(got, cuda.backward(gyc, xc, wc, args, need_weight=False,
                                              **named)[0])
        # a channels_last_3d weight: read in place by the 128-row TMA tiles (whole 16 bytes of
        # output channels a kernel tap), else packed; the same bits either way
        in_place = cuda.grad_input_weight_in_place(args, n, torch.bfloat16, xc.device, w_cl,
                                                   **named)
        assert in_place == (tile in (8, 10) and (cout // g) % 8 == 0), (tile, in_place)
        assert not cuda.grad_input_weight_in_place(args, n, torch.bfloat16, xc.device, wc,
                                                   **named)
        assert torch.equal(got, cuda.backward(gyc, xc, w_cl, args, need_weight=False,
                                              **named)[0]), tile
        ran.append(tile)
    assert ran[:4] == [0, 1, 2, 3], ran
    if cuda.warpgroup_kernels() and (cout // g) % 32 == 0:
        # the TMA tile in 64- or 32-channel k steps; the others only in 64
        whole = (cout // g) % 64 == 0
        assert 8 in ran and (4 in ran) == whole and (9 in ran) == (whole and cin // g > 64), ran
        assert 10 in ran and (11 in ran) == (9 in ran), ran


def test_input_gradient_rule_ping_pongs_two_waves():
    """Where the input gradient's rule takes the 128-column TMA tile in 64-channel k steps and
    its tiles fill two waves of the multiprocessors (here 9 x 32 boxes), it runs them
    ping-ponged (kind 10) on an sm_90a build: against torch in float64, the same bits as kind
    10 named; elsewhere no TMA tile is described."""
    from phaseconv.engines import cuda

    n = 9
    xc, wc, gyc, args, (expected, _) = _layer_case(n, 128, 64, 1, (16, 16, 16), (2, 2, 2),
                                                   (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1),
                                                   torch.bfloat16, 3)
    desc = cuda.describe_backward(args, n, torch.bfloat16, xc.device)[0]
    if cuda.warpgroup_kernels() and torch.cuda.get_device_properties(0).multi_processor_count \
            <= 144:  # 288 tiles: two waves
        assert "kind=10 BM=128 BN=128 BK=64 " in desc and "tma-box ping-pong" in desc, desc
    else:
        assert "ping-pong" not in desc, desc
    got = cuda.backward(gyc, xc, wc, args, need_weight=False)[0]
    _assert_gradient_close(got, expected, torch.bfloat16)
    if "kind=10 " in desc:
        named = cuda.backward(gyc, xc, wc, args, need_weight=False,
                              grad_input_kernel="implicit-gemm", grad_input_tile=10)[0]
        assert torch.equal(got, named)


_CL_WEIGHT_CASES = [  # (n, cin, cout, groups, size, k, s, p, op, d, dtype, named kernels)
    (2, 64, 40, 1, (5, 6, 7), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1),
     torch.bfloat16, ("tensor-cores-cl", "tensor-cores", "simt")),  # a run's channel tail
    (2, 32, 32, 4, (3, 4, 5), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1),
     torch.float32, ("simt", "naive")),  # the founding layer: the narrow kernel, 105 taps
    (1, 8, 16, 1, (3, 3, 3), (11, 11, 11), (2, 2, 2), (5, 5, 5), (0, 0, 0), (1, 1, 1),
     torch.float32, ("simt",)),  # 1331 taps: the contiguous weight's element-wise reduction
    # the channels-last reduction's batches (on an H100, 132 multiprocessors): tensor-cores-cl
    # 2 splits, 3 (a short batch of 4), 6 (of 8), 17 (a batch of 16 and a short one); the
    # warpgroup kernel 4, 8, 13, 19; its TMA form's 8 and 4 splits added in a cluster, and
    # (the last) a lone split stored by the kernel over 512 blocks
    (2, 64, 32, 1, (8, 8, 8), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1),
     torch.bfloat16, ("tensor-cores-cl",)),
    (2, 64, 40, 1, (10, 10, 10), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1),
     torch.bfloat16, ("tensor-cores-cl",)),
    (2, 64, 32, 1, (12, 12, 12), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1),
     torch.bfloat16, ("tensor-cores-cl",)),
    (2, 64, 32, 1, (20, 20, 20), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1),
     torch.bfloat16, ("tensor-cores-cl",)),
    (2, 128, 64, 1, (8, 8, 8), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1),
     torch.bfloat16, ("tensor-cores-cl",)),
    (1, 512, 256, 1, (4, 4, 4), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1),
     torch.bfloat16, ("tensor-cores-cl",)),
    (2, 12, 18, 3, (3, 4, 5), (2, 3, 2), (2, 1, 2), (0, 1, 0), (1, 0, 1), (1, 1, 1),
     torch.float64, ("simt", "naive")),
]


@pytest.mark.parametrize("case", range(len(_CL_WEIGHT_CASES)))
def test_weight_gradient_in_a_channels_last_weight(case):
    """A channels_last_3d weight gets its gradient in that layout (autograd then accumulates it
    in place) holding the bits of the contiguous weight's gradient, from every weight-gradient
    kernel (by the rule and named) and every reduction of their partial sums (the contiguous
    weight's rows or element-wise kernel against the channels-last kernel); Inf in the
    input takes the non-finite fix-up through the same layout.  The contiguous gradient is
    checked against torch in float64."""
    from phaseconv.engines import cuda

    n, cin, cout, g, size, k, s, p, op, d, dtype, named = _CL_WEIGHT_CASES[case]
    xc, wc, gyc, args, (_, expected) = _layer_case(n, cin, cout, g, size, k, s, p, op, d, dtype,
                                                   case)
    cl = torch.channels_last_3d
    wl = wc.contiguous(memory_format=cl)
    assert not wl.is_contiguous()
    kernels = ["auto", *named]
    if dtype == torch.bfloat16 and cuda.warpgroup_kernels():
        kernels += ["tensor-cores-wgmma", "tensor-cores-tma"]
    bits = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16}
    poisoned = xc.clone()
    poisoned[0, 0, 0, 0, 0] = float("inf")
    for kernel in kernels:
        for x in (xc, poisoned):
            plain = cuda.backward(gyc, x, wc, args, need_input=False,
                                  grad_weight_kernel=kernel)[1]
            in_layout = cuda.backward(gyc, x, wl, args, need_input=False,
                                      grad_weight_kernel=kernel)[1]
            assert plain.is_contiguous() and in_layout.is_contiguous(memory_format=cl), kernel
            assert torch.equal(in_layout.contiguous().view(bits[dtype]),
                               plain.view(bits[dtype])), kernel
        assert not torch.isfinite(plain).all(), kernel
        rel = ((cuda.backward(gyc, xc, wc, args, need_input=False, grad_weight_kernel=kernel)[1]
                .double().cpu() - expected).norm() / expected.norm()).item()
        assert rel < {torch.float64: 1e-12, **_GRADIENT_TOL}[dtype], (kernel, rel)


@pytest.mark.parametrize("case", range(len(_CL_BWD_CASES)))
def test_float32_input_gradient_on_the_implicit_gemm(case):
    """float32's input gradient on the implicit GEMM (3xTF32; by the rule where C_in/g >= 128
    and C_out/g >= 64 or C_in/g >= 64 and C_out/g >= 16, else only when named) within
    float32's tolerance against torch in
    float64, on the wide layers' cases; grad_y read in place when channels-last gives the same
    bits as its copy, and results repeat bitwise."""
    from phaseconv.engines import cuda

    n, cin, cout, g, size, k, s, p, op, d = _CL_BWD_CASES[case]
    xc, wc, gyc, args, (expected, _) = _layer_case(n, cin, cout, g, size, k, s, p, op, d,
                                                   torch.float32, case)
    forced = dict(grad_input_kernel="implicit-gemm", need_weight=False)
    wide = (cout // g) % 8 == 0 and ((cin // g >= 128 and cout // g >= 64) or
                                     (cin // g >= 64 and cout // g >= 16))
    assert cuda.describe_backward(args, n, torch.float32, xc.device)[0].startswith(
        "implicit-gemm") == wide
    desc = cuda.backward_plan(args, n, torch.float32, xc.device,
                              grad_input_kernel="implicit-gemm")[1].grad_input_description
    assert desc.startswith("implicit-gemm grad-input") and " 3xTF32" in desc, desc
    got = cuda.backward(gyc, xc, wc, args, **forced)[0]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    ref = expected.double()
    err = float((got.double().cpu() - ref).abs().max())
    assert err <= 1e-5 * max(1.0, float(ref.abs().max())), err
    again = cuda.backward(gyc, xc, wc, args, **forced)[0]
    in_place = cuda.backward(gyc.contiguous(memory_format=torch.channels_last_3d), xc, wc, args,
                             **forced)[0]
    assert torch.equal(got, again) and torch.equal(got, in_place)


# fewer than 8 output (grad_y) channels a group, one zero-padded octet, for both narrow
# gradients: 32 -> 2 (two input octets), odd groups of 3 (grad_y rows off 4-byte alignment),
# one output channel with dilation
_FEW_OUTPUT_CHANNEL_CASES = [
    (2, 32, 2, 1, (5, 6, 7), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    (1, 16, 6, 2, (4, 5, 6), (2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 0, 1), (2, 1, 3)),
    (2, 8, 1, 1, (3, 4, 21), (3, 2, 4), (2, 2, 3), (1, 0, 1), (1, 1, 2), (1, 2, 1)),
]
_NARROW_GW_CASES = [  # (n, cin, cout, groups, size, k, s, p, op, d): 8 channels a side
    (2, 32, 32, 4, (3, 5, 7), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1)),  # odd taps
    (1, 16, 8, 1, (6, 7, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),  # 16 -> 8
    (2, 8, 24, 1, (4, 5, 6), (2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 0, 1), (2, 1, 3)),  # tails
    (2, 40, 8, 1, (3, 3, 3), (1, 2, 1), (3, 4, 2), (0, 0, 0), (0, 0, 1), (1, 1, 1)),  # empty
    (1, 16, 8, 1, (2, 2, 600), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),  # long W
    (3, 32, 16, 2, (5, 6, 7), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1)),  # splits
    (1, 8, 8, 1, (4, 4, 5), (5, 5, 5), (1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1)),  # 8 groups
    (1, 8, 16, 1, (3, 4, 5), (6, 6, 6), (1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1)),  # 4 blocks
] + _FEW_OUTPUT_CHANNEL_CASES


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(_NARROW_GW_CASES)))
def test_narrow_weight_gradient(case, dtype):
    """The weight gradient of layers with 8 channels a group on one side, or fewer than 8 output
    channels (tensor cores over a staged input window, grad_y zero-padded to an octet; 3xTF32
    for float32), by the rule and forced, against torch in float64 from the same rounded values:
    odd tap counts (two taps share an mma tile), one and two input or output octets with tails,
    ragged and empty phases, dilation, groups, rows longer than a tile, split reductions; the
    SIMT kernel within the same tolerance; contiguous operands (copied channels-last) give the
    same bits as channels-last ones, and results repeat bitwise."""
    from phaseconv.engines import cuda

    n, cin, cout, g, size, k, s, p, op, d = _NARROW_GW_CASES[case]
    xc, wc, gyc, args, expected = _layer_case(n, cin, cout, g, size, k, s, p, op, d, dtype,
                                              case)
    gw_desc = cuda.describe_backward(args, n, dtype, xc.device)[1]
    precision = "3xTF32" if dtype == torch.float32 else "fp32-accumulate"
    assert gw_desc.startswith(f"tensor-core window {precision}, channels-last operands"), gw_desc
    runs = [cuda.backward(gyc, xc, wc, args, need_input=False)[1],
            cuda.backward(gyc, xc, wc, args, need_input=False,
                          grad_weight_kernel="tensor-cores-narrow")[1],
            cuda.backward(gyc, xc, wc, args, need_input=False, grad_weight_kernel="simt")[1]]
    for got in runs:
        assert got.dtype == dtype and got.shape == expected[1].shape
        _assert_gradient_close(got, expected[1], dtype)
    assert torch.equal(runs[0], runs[1])
    cl = torch.channels_last_3d
    gyl, xl = gyc.contiguous(memory_format=cl), xc.contiguous(memory_format=cl)
    assert torch.equal(cuda.backward(gyl, xl, wc, args, need_input=False)[1], runs[0])
    assert torch.equal(cuda.backward(gyc, xc, wc, args, need_input=False)[1], runs[0])


_NARROW_GI_CASES = [  # (n, cin, cout, groups, size, k, s, p, op, d): 8 or 16 grad_y channels
    (2, 32, 32, 4, (3, 5, 7), (3, 5, 7), (2, 2, 2), (1, 2, 3), (1, 1, 1), (1, 1, 1)),  # odd taps
    (1, 16, 8, 1, (6, 7, 9), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),  # 16 -> 8
    (2, 8, 16, 1, (4, 5, 6), (2, 3, 4), (3, 1, 2), (0, 1, 2), (2, 0, 1), (2, 1, 3)),  # dilation
    (2, 24, 8, 1, (3, 3, 3), (1, 2, 1), (3, 4, 2), (0, 0, 0), (0, 0, 1), (1, 1, 1)),  # empty
    (1, 16, 16, 1, (2, 2, 70), (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),  # long W
    (3, 32, 16, 2, (5, 6, 7), (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1)),  # groups
    (1, 8, 8, 1, (4, 4, 5), (5, 5, 5), (1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1)),  # stride 1
    (2, 40, 8, 1, (3, 4, 21), (1, 2, 4), (1, 2, 4), (0, 1, 0), (0, 1, 3), (1, 1, 1)),  # s 4
] + _FEW_OUTPUT_CHANNEL_CASES


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(_NARROW_GI_CASES)))
def test_narrow_input_gradient(case, dtype):
    """The input gradient of layers with 16, 8 or fewer grad_y channels a group (tensor cores
    over a staged grad_y window, every tap at its shift, fewer channels zero-padded to an
    octet; 3xTF32 for float32, its accumulators flushed every 256 terms: the founding case
    sums 840), by the rule and forced, against torch in float64 from the same rounded values:
    odd tap counts (a zero pair pads the last k step), one and two octets on each side,
    grad_x octet blocks with a tail, strides 1 to 4, dilation, ragged tiles, empty phases,
    groups, rows longer than a tile (float32 with 16 grad_y channels: the per-phase kernel by
    the rule, the narrow one named); the per-phase tensor-core kernel within the same
    tolerance; a contiguous grad_y (copied channels-last) gives the same bits as a
    channels-last one, and results repeat bitwise."""
    from phaseconv.engines import cuda

    n, cin, cout, g, size, k, s, p, op, d = _NARROW_GI_CASES[case]
    xc, wc, gyc, args, expected = _layer_case(n, cin, cout, g, size, k, s, p, op, d, dtype,
                                              case)
    gi_desc = cuda.describe_backward(args, n, dtype, xc.device)[0]
    precision = "3xTF32" if dtype == torch.float32 else "fp32-accumulate"
    if dtype == torch.float32 and cout // g == 16:  # the per-phase kernel by the rule
        assert gi_desc.startswith("mma grad-input"), gi_desc
    else:
        assert gi_desc.startswith(f"tensor-core window grad-input {precision}, grad_y "
                                  "channels-last"), gi_desc
    runs = [cuda.backward(gyc, xc, wc, args, need_weight=False,
                          grad_input_kernel="tensor-cores-narrow")[0],
            cuda.backward(gyc, xc, wc, args, need_weight=False)[0],
            cuda.backward(gyc, xc, wc, args, need_weight=False,
                          grad_input_kernel="tensor-cores")[0]]
    for got in runs:
        assert got.dtype == dtype and got.shape == expected[0].shape and got.is_contiguous()
        _assert_gradient_close(got, expected[0], dtype)
    named, by_rule, per_phase = runs
    assert torch.equal(by_rule, per_phase if gi_desc.startswith("mma") else named)
    gyl = gyc.contiguous(memory_format=torch.channels_last_3d)
    force = dict(grad_input_kernel="tensor-cores-narrow")
    assert torch.equal(cuda.backward(gyl, xc, wc, args, need_weight=False, **force)[0], named)
    assert torch.equal(cuda.backward(gyc, xc, wc, args, **force)[0], named)


def test_backward_kernel_rules():
    """The rules (phase_conv_bwd.cuh, phase_conv_fwd.cuh) are visible and forcing is checked,
    never rerouted."""
    from phaseconv.engines import cuda

    x = torch.randn(1, 8, 4, 4, 4, device="cuda")
    w = torch.randn(8, 4, 3, 3, 3, device="cuda")
    gy = torch.randn(1, 8, 7, 7, 7, device="cuda")
    narrow = _args(x, w, (2, 2, 2), (1, 1, 1), (1, 1, 1), 2)  # C_in/g = 4
    assert cuda.describe_backward(narrow, 1, x.dtype, x.device)[1].startswith("simt")
    with pytest.raises(RuntimeError, match="weight gradient: refused: the tensor-core gemm "
                       "kernel was forced"):
        cuda.backward(gy, x, w, narrow, grad_weight_kernel="tensor-cores")
    with pytest.raises(ValueError, match="grad_weight_kernel must be one of"):
        cuda.backward(gy, x, w, narrow, grad_weight_kernel="fast")
    depthwise = _args(x, torch.randn(8, 1, 3, 3, 3, device="cuda"), (2, 2, 2), (1, 1, 1),
                      (1, 1, 1), 8)
    gi, gw = cuda.describe_backward(depthwise, 1, x.dtype, x.device)
    assert gi.startswith("depthwise grad-input") and gw.startswith("depthwise weight-gradient")
    not_depthwise = "kernel was forced and the layer is not depthwise"
    # the per-phase tensor-core input gradient runs by name below 4 channels a group, even
    # on a depthwise layer (its one-channel groups zero-padded): the depthwise kernel's values
    named = cuda.backward(gy, x, w[:, :1], depthwise, need_weight=False,
                          grad_input_kernel="tensor-cores")[0]
    by_rule = cuda.backward(gy, x, w[:, :1], depthwise, need_weight=False)[0]
    assert (named - by_rule).abs().max() <= 1e-5 * by_rule.abs().max()
    for why, weight, layer, forced in [
            ("input gradient: refused: the depthwise " + not_depthwise, w, narrow,
             dict(grad_input_kernel="depthwise")),
            ("weight gradient: refused: the depthwise " + not_depthwise, w, narrow,
             dict(grad_weight_kernel="depthwise")),
            ("weight gradient: refused: the channels-last tensor-core gemm kernel was forced",
             w, narrow, dict(grad_weight_kernel="tensor-cores-cl")),
            ("weight gradient: refused: the narrow tensor-core window kernel was forced", w,
             narrow, dict(grad_weight_kernel="tensor-cores-narrow")),
            ("weight gradient: refused: the warpgroup tensor-core gemm kernel was forced", w,
             narrow, dict(grad_weight_kernel="tensor-cores-wgmma")),
            ("input gradient: refused: the implicit-gemm kernel was forced", w, narrow,
             dict(grad_input_kernel="implicit-gemm")),
            ("input gradient: refused: the narrow tensor-core window kernel was forced", w,
             narrow, dict(grad_input_kernel="tensor-cores-narrow"))]:
        with pytest.raises(RuntimeError, match=why):
            cuda.backward(gy, x, weight, layer, **forced)
    wide = dict(in_channels=64, out_channels=32, kernel_size=4, stride=2, padding=1)
    report = phaseconv.explain(wide, (2, 64, 6, 6, 6), device="cuda")
    assert report.grad_weight_kernel.startswith("tensor-core gemm 3xTF32")
    assert "grad_weight kernel: tensor-core" in str(report)
    half = phaseconv.explain(wide, (2, 64, 6, 6, 6), device="cuda", dtype=torch.bfloat16)
    assert half.grad_weight_kernel.startswith(
        "tensor-core gemm fp32-accumulate, channels-last operands, 64x32")
    tails = dict(wide, out_channels=36)  # C_out/g not a multiple of 8: contiguous operands
    assert phaseconv.explain(tails, (2, 64, 6, 6, 6), device="cuda", dtype=torch.bfloat16) \
        .grad_weight_kernel.startswith("tensor-core gemm fp32-accumulate, 64x64")
    assert half.grad_input_kernel.startswith("implicit-gemm grad-input")
    double = phaseconv.explain(wide, (2, 64, 6, 6, 6), device="cuda", dtype=torch.float64)
    assert double.grad_weight_kernel.startswith("simt")
    assert double.grad_input_kernel.startswith("naive grad-input")
    # float32: the implicit GEMM (3xTF32) from 16 grad_y and 64 grad_x channels a group
    assert report.grad_input_kernel.startswith("implicit-gemm grad-input"), report
    assert "grad_input kernel: implicit-gemm grad-input" in str(report)
    narrower = phaseconv.explain(dict(wide, in_channels=32), (2, 32, 6, 6, 6), device="cuda")
    assert narrower.grad_input_kernel.startswith("mma grad-input"), narrower


def test_explain_follows_the_input_memory_format():
    """explain(memory_format=...) names the kernels a call with such an input launches: a
    channels-last input read in place by the implicit GEMM, which writes the channels-last
    result; other kernels' results are copied once; a module's channels-last weight counts
    too; float64 results stay contiguous, as torch's."""
    cl = torch.channels_last_3d
    wide = dict(in_channels=64, out_channels=64, kernel_size=2, stride=2)
    shape = (2, 64, 6, 6, 6)
    report = phaseconv.explain(wide, shape, device="cuda", dtype=torch.bfloat16,
                               memory_format=cl)
    assert report.kernel.startswith("implicit-gemm") and "(channels-last input)" in \
        report.kernel and report.kernel.endswith(", channels-last output"), report.kernel
    layer = phaseconv.ConvTranspose3d(**wide).cuda().to(torch.bfloat16)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=cl)
    assert layer(x).is_contiguous(memory_format=cl)
    plain = phaseconv.explain(wide, shape, device="cuda", dtype=torch.bfloat16)
    assert "channels-last output" not in plain.kernel, plain.kernel
    founding = dict(in_channels=32, out_channels=32, kernel_size=(3, 5, 7), stride=2,
                    padding=(1, 2, 3), output_padding=1, groups=4)
    copied = phaseconv.explain(founding, (2, 32, 4, 6, 8), device="cuda", memory_format=cl)
    assert copied.kernel.endswith(", channels-last output (one copy)"), copied.kernel
    module = phaseconv.ConvTranspose3d(**founding).cuda().to(memory_format=cl)
    by_weight = phaseconv.explain(module, (2, 32, 4, 6, 8))
    assert by_weight.kernel.endswith(", channels-last output (one copy)"), by_weight.kernel
    double = phaseconv.explain(founding, (2, 32, 4, 6, 8), device="cuda", dtype=torch.float64,
                               memory_format=cl)
    assert "channels-last output" not in double.kernel, double.kernel
    # a 16-bit channels-last weight that the rule's TMA tile reads in place (sm_90a builds)
    tma = phaseconv.ConvTranspose3d(512, 256, 2, 2).cuda().to(torch.bfloat16)
    flat = phaseconv.explain(tma, (1, 512, 16, 16, 16), memory_format=cl)
    assert "weight read in place" not in flat.kernel + flat.grad_input_kernel
    tma.to(memory_format=cl)
    read = phaseconv.explain(tma, (1, 512, 16, 16, 16), memory_format=cl)
    in_place = "tma-box" in read.kernel
    assert read.kernel.endswith(", weight read in place (channels_last_3d)") == in_place
    from phaseconv.engines import cuda

    assert in_place == cuda.warpgroup_kernels(), read.kernel


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16,
                                   torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(_BWD_CASES)))
def test_input_gradient_kernels(case, dtype):
    """grad_input in one launch by the kernel of the rule (the narrow window kernel on
    whole grad_x octets and 16, 8 or fewer grad_y channels), the per-phase tensor-core kernel
    (where the rule takes it, and named on layers with fewer than 4 channels a group) and the
    naive kernel, against torch in float64."""
    from phaseconv.engines import cuda

    c = _BWD_CASES[case]
    gen = torch.Generator().manual_seed(case)
    x = torch.randn((c["n"], c["cin"]) + c["size"], generator=gen).to(dtype)
    w = (torch.randn((c["cin"], c["cout"] // c["groups"]) + c["k"], generator=gen) / 4).to(dtype)
    x64 = x.double().requires_grad_()
    out = F.conv_transpose3d(x64, w.double(), stride=c["s"], padding=c["p"],
                             output_padding=c["op"], groups=c["groups"], dilation=c["d"])
    gy = torch.randn(out.shape, generator=gen).to(dtype)
    expected, = torch.autograd.grad(out, x64, gy.double())
    xc, wc, gyc = x.cuda(), w.cuda(), gy.cuda()
    args = _args(xc, wc, c["s"], c["p"], c["d"], c["groups"], c["op"])
    desc = cuda.describe_backward(args, c["n"], dtype, xc.device)[0]
    depthwise = c["cin"] == c["groups"] == c["cout"]
    cin_g, cout_g = c["cin"] // c["groups"], c["cout"] // c["groups"]
    sixteen = dtype in (torch.float16, torch.bfloat16)
    # the per-phase tensor-core kernel: 4 channels a group on both sides, or (16-bit) fewer
    # grad_y channels (zero-padded) with grad_x's in whole octets
    mma = not depthwise and dtype != torch.float64 and (
        (cin_g >= 4 and cout_g >= 4) or (sixteen and cout_g < 4 and cin_g % 8 == 0))
    gemm = cout_g % 8 == 0 and (
        (dtype in (torch.float16, torch.bfloat16) and cout_g >= 16 and cin_g >= 32)
        or (dtype == torch.float32 and ((cin_g >= 128 and cout_g >= 64)
                                        or (cin_g >= 64 and cout_g >= 16))))
    # the narrow window kernel: grad_x channels in whole octets, grad_y's 16, 8 or fewer
    narrow = (not depthwise and dtype != torch.float64 and cin_g % 8 == 0
              and (cout_g in (8, 16) or cout_g < 8)
              and not (dtype == torch.float32 and cout_g > 8))
    rule = ("depthwise" if depthwise else "implicit-gemm" if gemm else
            "tensor-core window" if narrow else "mma" if mma else "naive")
    assert desc.startswith(rule + " grad-input"), desc
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3,
           torch.bfloat16: 2e-2}[dtype]
    # the per-phase tensor-core kernel by name on any layer but float64's and depthwise ones
    # (narrow groups zero-padded)
    named_mma = [] if depthwise or dtype == torch.float64 else ["tensor-cores"]
    forced = {"depthwise": ["depthwise"], "mma": named_mma, "naive": named_mma,
              "implicit-gemm": ["implicit-gemm", "tensor-cores"],
              "tensor-core window": ["tensor-cores-narrow", "tensor-cores"]}[rule]
    for kernel in ["auto", "naive"] + forced:
        got, _ = cuda.backward(gyc, xc, wc, args, need_weight=False, grad_input_kernel=kernel)
        assert got.dtype == dtype and got.shape == expected.shape
        rel = ((got.double().cpu() - expected).norm() / expected.norm()).item()
        assert rel < tol, (kernel, rel)


_DW_CASES = [  # (n, channels, size, k, s, p, op, d)
    (2, 3, (5, 7, 9), (4, 4, 4), (2, 2, 2), (1, 1, 1), (0, 0, 0), (1, 1, 1)),
    (1, 4, (3, 9, 40), (3, 5, 2), (2, 3, 1), (1, 2, 0), (1, 2, 0), (1, 1, 1)),  # ragged, wide
    (2, 2, (4, 5, 6), (1, 2, 1), (3, 4, 2), (0, 0, 0), (2, 1, 1), (1, 1, 1)),  # empty phases
    (1, 5, (6, 4, 33), (3, 3, 3), (2, 1, 2), (2, 1, 0), (1, 0, 1), (2, 1, 3)),  # dilation
    (3, 2, (17, 18, 19), (2, 2, 2), (1, 1, 1), (0, 0, 0), (0, 0, 0), (1, 1, 1)),  # many tiles
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16,
                                   torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(len(_DW_CASES)))
def test_depthwise_backward_kernels(case, dtype):
    """The depthwise input- and weight-gradient kernels, by the rule and forced, against
    torch in float64 (ragged and empty phases, dilation, tiles cut at every border), and
    bitwise repeatable."""
    from phaseconv.engines import cuda

    n, c, size, k, s, p, op, d = _DW_CASES[case]
    xc, wc, gyc, args, expected = _layer_case(n, c, c, c, size, k, s, p, op, d, dtype, case)
    gi_desc, gw_desc = cuda.describe_backward(args, n, dtype, xc.device)
    assert gi_desc.startswith("depthwise grad-input"), gi_desc
    assert gw_desc.startswith("depthwise weight-gradient"), gw_desc
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 3e-3,
           torch.bfloat16: 2e-2}[dtype]
    for kernel in ("auto", "depthwise"):
        got = cuda.backward(gyc, xc, wc, args, grad_input_kernel=kernel,
                            grad_weight_kernel=kernel)
        for name, a, e in zip(("grad_input", "grad_weight"), got, expected):
            assert a.dtype == dtype and a.shape == e.shape, name
            rel = ((a.double().cpu() - e).norm() / e.norm().clamp_min(1e-30)).item()
            assert rel < tol, (name, kernel, rel)
    again = cuda.backward(gyc, xc, wc, args)
    assert torch.equal(again[0], got[0]) and torch.equal(again[1], got[1])


def test_input_gradient_one_launch_long_reduction_float32():
    """3xTF32 flushed every 256 terms: the one-launch input gradient of a wide layer (8192
    terms per voxel: 128 channels x 64 taps) stays fp32-accurate, and is deterministic."""
    from phaseconv.engines import cuda

    torch.manual_seed(0)
    k, s, p = (4, 4, 4), (2, 2, 2), (1, 1, 1)
    x = torch.randn(2, 96, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(96, 128, *k, dtype=torch.float64) / 32
    out = F.conv_transpose3d(x, w, stride=s, padding=p)
    gy = torch.randn_like(out)
    expected, = torch.autograd.grad(out, x, gy)
    xc, wc, gyc = x.detach().float().cuda(), w.float().cuda(), gy.float().cuda()
    args = _args(xc, wc, s, p, (1, 1, 1), 1)
    got, _ = cuda.backward(gyc, xc, wc, args, need_weight=False,
                           grad_input_kernel="tensor-cores")
    again, _ = cuda.backward(gyc, xc, wc, args, need_weight=False,
                             grad_input_kernel="tensor-cores")
    assert torch.equal(got, again)
    _close(got, expected, torch.float32)
