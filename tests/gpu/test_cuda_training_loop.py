"""The real training loop on the CUDA engine: no host-device synchronization anywhere (first
call of a geometry included), one weight pack per call, every kernel path.  Needs a GPU.
"""
import pytest
import torch

import phaseconv
from phaseconv import ops

pytestmark = pytest.mark.cuda

# Layers chosen so that the rules route them through every kernel family; the test checks
# the routing through explain() before it trusts the coverage.
#   (name, constructor args, input shape, dtype, input layout,
#    forward kernel, grad_input kernel, grad_weight kernel) - description prefixes
PATHS = [
    ("all-phase fp32", dict(in_channels=32, out_channels=32, kernel_size=(3, 5, 7), stride=2,
                            padding=(1, 2, 3), output_padding=1, groups=4),
     (2, 32, 4, 6, 8), torch.float32, "ncdhw", "mma-allphase",
     "tensor-core window grad-input 3xTF32", "tensor-core window 3xTF32"),
    ("all-phase bf16 channels-last", dict(in_channels=32, out_channels=32, kernel_size=3,
                                          stride=2, padding=1, output_padding=1, groups=2),
     (2, 32, 4, 6, 8), torch.bfloat16, "cl", "mma-allphase", "tensor-core window grad-input",
     "tensor-core"),
    ("implicit gemm bf16", dict(in_channels=64, out_channels=64, kernel_size=2, stride=2),
     (2, 64, 4, 6, 8), torch.bfloat16, "ncdhw", "implicit-gemm", "implicit-gemm grad-input",
     "tensor-core gemm fp32-accumulate, channels-last operands"),
    ("implicit gemm fp16 copy", dict(in_channels=32, out_channels=48, kernel_size=3, stride=2,
                                     padding=1), (2, 32, 4, 5, 6), torch.float16, "ncdhw",
     "implicit-gemm", "implicit-gemm grad-input",
     "tensor-core gemm fp32-accumulate, channels-last operands, 64x64"),
    ("implicit gemm bf16 channels-last", dict(in_channels=64, out_channels=64, kernel_size=3,
                                              stride=2, padding=1), (2, 64, 3, 4, 5),
     torch.bfloat16, "cl", "implicit-gemm", "implicit-gemm grad-input",
     "tensor-core gemm fp32-accumulate, channels-last operands"),
    ("per-phase mma", dict(in_channels=16, out_channels=16, kernel_size=5, stride=(4, 4, 4),
                           padding=1), (1, 16, 3, 3, 4), torch.float32, "ncdhw", "mma ",
     "mma grad-input", "tensor-core"),
    ("tiled fp64", dict(in_channels=6, out_channels=4, kernel_size=3, stride=2, padding=1,
                        output_padding=1, groups=2), (2, 6, 3, 4, 5), torch.float64, "ncdhw",
     "tiled", "naive grad-input", "simt"),
    ("depthwise fp32", dict(in_channels=8, out_channels=8, kernel_size=4, stride=2, padding=1,
                            groups=8), (2, 8, 5, 6, 7), torch.float32, "ncdhw", "depthwise",
     "depthwise grad-input", "depthwise weight-gradient"),
    ("naive (huge dilation)", dict(in_channels=2, out_channels=3, kernel_size=3, stride=1,
                                   dilation=(40, 40, 40)), (1, 2, 1, 2, 1), torch.float32,
     "ncdhw", "naive", "naive grad-input", "naive"),
    ("narrow gradients bf16", dict(in_channels=32, out_channels=32, kernel_size=3, stride=2,
                                   padding=1, output_padding=1, groups=4),
     (2, 32, 4, 6, 8), torch.bfloat16, "ncdhw", "mma-allphase", "tensor-core window grad-input",
     "tensor-core window"),
]


def _layer_and_input(args, shape, dtype, layout):
    torch.manual_seed(0)
    layer = phaseconv.ConvTranspose3d(**args).to("cuda", dtype)
    x = torch.randn(shape, device="cuda", dtype=dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return layer, x.requires_grad_()


def _forget_plans():
    """A fresh process's state: the next call makes its tables and plans again."""
    from phaseconv.engines import cuda

    cuda._tables.clear()
    cuda._forward_plans.clear()
    cuda._backward_plans.clear()
    ops._CALLS.clear()


@pytest.mark.parametrize("path", PATHS, ids=[p[0] for p in PATHS])
def test_training_steps_never_wait_for_the_gpu(path):
    """Forward, backward and optimizer steps (plain and fused) under
    ``torch.cuda.set_sync_debug_mode("error")``, from the first call of the geometry on."""
    name, args, shape, dtype, layout, fwd, gi, gw = path
    layer, x = _layer_and_input(args, shape, dtype, layout)
    report = phaseconv.explain(layer, shape, dtype=dtype)
    assert report.kernel.startswith(fwd), report.kernel
    assert report.grad_input_kernel.startswith(gi), report.grad_input_kernel
    assert report.grad_weight_kernel.startswith(gw), report.grad_weight_kernel
    fused = dtype != torch.float64
    opts = [torch.optim.SGD(layer.parameters(), lr=1e-3, momentum=0.9)]
    if fused:
        opts.append(torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True))
    _forget_plans()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(4):
            opt = opts[step % len(opts)]
            opt.zero_grad(set_to_none=True)
            x.grad = None
            loss = layer(x).float().square().mean()
            loss.backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(layer.weight).all() and x.grad is not None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_naive_kernels_match_torch(dtype):
    """The naive forward, input-gradient and weight-gradient kernels (a dilation too large
    for any tile) against torch in float64."""
    import torch.nn.functional as F

    args = dict(stride=(1, 2, 1), padding=(3, 0, 5), dilation=(40, 30, 35))
    x = torch.randn(2, 4, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    out = F.conv_transpose3d(x, w, None, **args)
    g = torch.randn_like(out)
    expected = (out,) + torch.autograd.grad(out, (x, w), g)
    xc, wc = (t.detach().to("cuda", dtype).requires_grad_() for t in (x, w))
    report = phaseconv.explain(dict(in_channels=4, out_channels=3, kernel_size=(3, 2, 3), **args),
                               x.shape, device="cuda", dtype=dtype)
    assert report.kernel == "naive" and report.grad_weight_kernel.startswith("naive")
    ours = phaseconv.conv_transpose3d(xc, wc, None, **args)
    got = (ours,) + torch.autograd.grad(ours, (xc, wc), g.to("cuda", dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for a, e in zip(got, expected):
        torch.testing.assert_close(a.double().cpu(), e.detach(), rtol=tol, atol=tol)


def _cuda_activities(fn) -> list:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]


def _packs(names):
    """The weight-layout launches: the gather through an index map, or a tensor-core pack."""
    return sum("gather" in n or "pack_mma" in n for n in names)


def test_one_weight_pack_per_call():
    """A forward launches the weight's pack (a gather or a tensor-core pack), its kernel and the
    non-finite fix-up (which exits at once on finite data); a backward one pack, the input gradient
    and its fix-up, the weight gradient and its ordered reduction (and the bias' sum), plus the
    channels-last copies of x and grad_y where the weight gradient reads them so and they are
    not."""
    layer, x = _layer_and_input(PATHS[0][1], PATHS[0][2], torch.float32, "ncdhw")
    with torch.no_grad():
        layer(x)  # plans made
        names = _cuda_activities(lambda: layer(x))
    assert len(names) == 3, names
    assert _packs(names) == 1, names
    assert sum("fixup" in n for n in names) == 1, names
    out = layer(x)
    g = torch.randn_like(out)
    torch.autograd.grad(out, (x, layer.weight, layer.bias), g, retain_graph=True)
    names = _cuda_activities(lambda: torch.autograd.grad(out, (x, layer.weight, layer.bias), g,
                                                         retain_graph=True))
    assert _packs(names) == 1, names
    copies = [n for n in names if "to_channels_last" in n]
    assert len(copies) <= 2, names  # x and grad_y
    # pack, grad_input, fix-up, grad_weight, reduction, [memset], bias
    assert len(names) - len(copies) <= 7, names


def test_plans_are_made_once():
    """Repeated calls reuse one plan and one set of device tables (no work per call that
    grows with the layer), and a new weight of the same geometry shares the tables."""
    from phaseconv.engines import cuda

    layer, x = _layer_and_input(PATHS[2][1], PATHS[2][2], torch.bfloat16, "ncdhw")
    with torch.no_grad():
        layer(x)
        calls, tables = len(ops._CALLS), len(cuda._tables)
        for _ in range(3):
            layer(x)
            phaseconv.conv_transpose3d(x, layer.weight, layer.bias, stride=2)
        other = phaseconv.ConvTranspose3d(**PATHS[2][1]).to("cuda", torch.bfloat16)
        other(x)
    assert len(cuda._tables) == tables
    assert len(ops._CALLS) <= calls + 1  # the functional call (tuple arguments) is one more


@pytest.mark.skipif(not ops.HAS_CUSTOM_OPS, reason="torch.library custom ops need torch >= 2.4")
def test_custom_ops_pass_opcheck_on_cuda():
    x = torch.randn(2, 16, 3, 4, 5, device="cuda", requires_grad=True)
    w = torch.randn(16, 8, 3, 2, 3, device="cuda", requires_grad=True)
    b = torch.randn(16, device="cuda", requires_grad=True)
    conf = ([2, 1, 2], [1, 0, 1], [1, 0, 0], 2, [1, 1, 1])
    torch.library.opcheck(torch.ops.phaseconv.conv_transpose3d.default, (x, w, b) + conf + ("",))
    out = torch.ops.phaseconv.conv_transpose3d(x, w, b, *conf, "")
    gy = torch.randn_like(out)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(torch.ops.phaseconv.conv_transpose3d_backward.default,
                              (gy, x.detach(), w.detach()) + conf + (mask, ""))
