"""The CUDA engine against torch's conv_transpose3d (needs a GPU; skipped without one)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from phaseconv.checks import check_conv_transpose3d
from phaseconv.engines.cuda import ForwardKernel

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"


def _cuda():
    from phaseconv.engines import cuda
    return cuda


@st.composite
def configs(draw, max_channels=3, max_w=6, min_n=0):
    k = [draw(st.integers(1, 5)) for _ in range(3)]
    s = [draw(st.integers(1, 4)) for _ in range(3)]
    d = [draw(st.integers(1, 3)) for _ in range(3)]
    p = [draw(st.integers(0, d[i] * (k[i] - 1))) for i in range(3)]
    op = [draw(st.integers(0, max(s[i], d[i]) - 1)) for i in range(3)]
    groups = draw(st.integers(1, 4))
    cin_g = draw(st.integers(1, max_channels))
    cout_g = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 9, 16, 17, 24, 40, 70, 130]
                                  [:max_channels + 3]))
    n = draw(st.integers(min_n, 2))
    ins = [draw(st.integers(1, 6)) for _ in range(2)] + [draw(st.integers(1, max_w))]
    outs = [(ins[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i in range(3)]
    if min(outs) <= 0:
        # shrink the padding until every axis has an output
        p = [0, 0, 0]
    bias = draw(st.booleans())
    return dict(k=tuple(k), s=tuple(s), d=tuple(d), p=tuple(p), op=tuple(op), groups=groups,
                cin=cin_g * groups, cout=cout_g * groups, n=n, ins=tuple(ins), bias=bias)


def _random_call(cfg, dtype, seed):
    """Random (x, weight, bias) of ``cfg`` in ``dtype`` on the CPU, and the float64 reference
    computed from those (rounded) values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((cfg["n"], cfg["cin"]) + cfg["ins"], generator=gen, dtype=torch.float64)
    w = torch.randn((cfg["cin"], cfg["cout"] // cfg["groups"]) + cfg["k"], generator=gen,
                    dtype=torch.float64)
    b = torch.randn(cfg["cout"], generator=gen, dtype=torch.float64) if cfg["bias"] else None
    xl, wl = x.to(dtype), w.to(dtype)
    bl = b.to(dtype) if b is not None else None
    ref = F.conv_transpose3d(xl.double(), wl.double(), bl.double() if bl is not None else None,
                             cfg["s"], cfg["p"], cfg["op"], cfg["groups"], cfg["d"])
    return xl, wl, bl, ref


def _run(cfg, dtype, kernel="auto", seed=0, refusal_ok=False):
    """(engine output, float64 reference) of a random call; ``kernel`` forces one by name.
    With ``refusal_ok`` (properties over drawn layers) a layer the forced kernel refuses is
    skipped: the refusals themselves are tests/plan/test_plan.py's."""
    xl, wl, bl, ref = _random_call(cfg, dtype, seed)
    try:
        y = _forward(xl.to(DEV), wl.to(DEV), bl.to(DEV) if bl is not None else None, cfg,
                     kernel=kernel)
    except RuntimeError as exc:
        if not (refusal_ok and "was forced and" in str(exc)):
            raise
        assume(False)
    return y, ref


def _forward(x, w, b, cfg, kernel="auto"):
    """The CUDA engine's forward on a batched input, ``cfg`` giving the geometry."""
    args = check_conv_transpose3d(x, w, b, cfg["s"], cfg["p"], cfg["op"], cfg["groups"],
                                  cfg["d"])
    return _cuda().forward(x, w, b, args, kernel=kernel)


def _check(y, ref, dtype):
    assert y.shape == ref.shape
    assert y.dtype == dtype
    yd = y.double().cpu()
    assert torch.isfinite(yd).all(), "non-finite output (unwritten or corrupted elements)"
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3,
           torch.bfloat16: 1.6e-2}[dtype]
    err = float((yd - ref).abs().max()) if ref.numel() else 0.0
    assert err <= tol * scale, f"max error {err} > {tol * scale} (scale {scale})"


@settings(deadline=None, max_examples=150)
@given(cfg=configs())
def test_float64_matches_torch(cfg):
    y, ref = _run(cfg, torch.float64)
    _check(y, ref, torch.float64)


@settings(deadline=None, max_examples=60)
@given(cfg=configs())
def test_naive_path_matches_torch(cfg):
    y, ref = _run(cfg, torch.float64, kernel="naive")
    _check(y, ref, torch.float64)


# the rule, the SIMT tiles, the tensor cores (3xTF32 for float32)
@pytest.mark.parametrize("kernel", ["auto", "tiled", "tensor-cores"])
@settings(deadline=None, max_examples=60)
@given(cfg=configs(max_channels=10))
def test_float32_matches_torch(cfg, kernel):
    y, ref = _run(cfg, torch.float32, kernel=kernel, refusal_ok=True)
    _check(y, ref, torch.float32)


@pytest.mark.parametrize("kernel", ["auto", "tiled", "tensor-cores"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(deadline=None, max_examples=40)
@given(cfg=configs(max_channels=10))
def test_half_dtypes_match_torch(cfg, dtype, kernel):
    y, ref = _run(cfg, dtype, kernel=kernel, refusal_ok=True)
    _check(y, ref, dtype)


@st.composite
def gemm_configs(draw):
    """Drawn layers the implicit GEMM takes: C_in/groups a multiple of 8."""
    cfg = draw(configs(max_channels=10))
    return dict(cfg, cin=draw(st.sampled_from([8, 16, 24, 40])) * cfg["groups"])


# the implicit GEMM forced on drawn layers (ragged and empty phases, dilation, groups, odd
# C_out/groups): float32 as 3xTF32, bfloat16
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(deadline=None, max_examples=40)
@given(cfg=gemm_configs())
def test_implicit_gemm_matches_torch_on_drawn_layers(cfg, dtype):
    y, ref = _run(cfg, dtype, kernel=ForwardKernel("gemm"), refusal_ok=True)
    _check(y, ref, dtype)


@st.composite
def depthwise_configs(draw):
    # W up to 40 inputs: output rows longer than a W group of 128; a batch (torch's CPU
    # reference rejects some empty depthwise batches)
    cfg = draw(configs(max_channels=1, max_w=40, min_n=1))
    groups = draw(st.integers(1, 6))
    return dict(cfg, groups=groups, cin=groups, cout=groups)


# the depthwise kernel on every dtype, by the rule and forced (rows longer than a warp too)
@pytest.mark.parametrize("kernel", ["auto", "depthwise"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@settings(deadline=None, max_examples=40)
@given(cfg=depthwise_configs())
# float64 slab of 16 rows past 48 KB (D and H dilated 3): a tile of fewer row groups
@example(cfg=dict(k=(4, 5, 1), s=(1, 1, 1), d=(3, 3, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1,
                  cin=1, cout=1, n=1, ins=(1, 1, 22), bias=False))
def test_depthwise_kernel_matches_torch(cfg, dtype, kernel):
    y, ref = _run(cfg, dtype, kernel=kernel)
    _check(y, ref, dtype)


def _layer_case(n, cin, cout, groups, dhw, k, s, p, op, dtype, bias=True, seed=1,
                kernel="auto"):
    torch.manual_seed(seed)
    k, s, p, op = [(v,) * 3 if isinstance(v, int) else tuple(v) for v in (k, s, p, op)]
    x = torch.rand((n, cin) + tuple(dhw), device=DEV, dtype=torch.float64)
    w = (torch.rand((cin, cout // groups) + k, device=DEV, dtype=torch.float64) - 0.5) * 0.2
    b = torch.rand(cout, device=DEV, dtype=torch.float64) if bias else None
    ref = F.conv_transpose3d(x, w, b, s, p, op, groups, 1).cpu()
    cfg = dict(s=s, p=p, op=op, d=(1, 1, 1), groups=groups)
    y = _forward(x.to(dtype), w.to(dtype), b.to(dtype) if b is not None else None, cfg,
                 kernel=kernel)
    return y, ref


def test_founding_example_float32():
    torch.manual_seed(0)
    m = torch.nn.ConvTranspose3d(32, 32, kernel_size=(3, 5, 7), stride=2, padding=(1, 2, 3),
                                 output_padding=1, groups=4, bias=False).to(DEV)
    x = torch.rand(8, 32, 12, 24, 48, device=DEV)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ref = m(x)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    cfg = dict(s=(2, 2, 2), p=(1, 2, 3), op=(1, 1, 1), d=(1, 1, 1), groups=4)
    y = _forward(x, m.weight.detach(), None, cfg)
    assert y.shape == (8, 32, 24, 48, 96)
    assert torch.allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_large_channels(dtype):
    y, ref = _layer_case(2, 256, 128, 1, (6, 7, 5), 4, 2, 1, 0, dtype)
    _check(y, ref, dtype)
    y, ref = _layer_case(1, 96, 200, 2, (5, 9, 17), 3, (1, 2, 2), 1, 0, dtype)
    _check(y, ref, dtype)


CONTIGUOUS_TC = ForwardKernel("tensor-cores", contiguous_input=True)


@pytest.mark.parametrize("kernel", ["tensor-cores", CONTIGUOUS_TC, "mma"],
                         ids=["tensor-cores", "tensor-cores-contiguous", "mma"])
def test_float32_long_reductions_on_tensor_cores(kernel):
    """3xTF32 flushes its accumulators every 256 terms: fp32-accurate at 4096 terms (512
    channels x 8 taps) on the all-phase and per-phase kernels, either input layout."""
    y, ref = _layer_case(1, 512, 24, 1, (4, 5, 6), 4, 2, 1, 0, torch.float32, kernel=kernel)
    _check(y, ref, torch.float32)
    cfg = dict(k=(4, 4, 4), s=(2, 2, 2), p=(1, 1, 1), op=(0, 0, 0), d=(1, 1, 1), groups=1,
               cin=512, cout=24, n=1, ins=(4, 5, 6))
    assert _describe(cfg, torch.float32, kernel=kernel).startswith("mma")


def test_wide_grouped_and_depthwise():
    y, ref = _layer_case(2, 64, 64, 64, (9, 8, 7), 4, 2, 1, 0, torch.float32)
    _check(y, ref, torch.float32)
    assert _describe(dict(s=(2, 2, 2), p=(1, 1, 1), op=(0, 0, 0), d=(1, 1, 1), groups=64,
                          cin=64, cout=64, n=2, ins=(9, 8, 7), k=(4, 4, 4)),
                     torch.float32).startswith("depthwise")
    y, ref = _layer_case(1, 48, 96, 3, (5, 6, 7), (3, 4, 4), (1, 2, 2), 1, 0, torch.float32)
    _check(y, ref, torch.float32)


def test_every_output_written_exactly():
    """The kernel allocates its output, so poisoning is impossible; instead: fp64 results are
    finite and match the reference tightly everywhere, including bias-only phases (kernel
    shorter than the stride) and phases whose window misses the input."""
    cfgs = [
        dict(k=(1, 2, 1), s=(3, 4, 2), d=(1, 1, 1), p=(0, 0, 0), op=(2, 3, 1), groups=2, cin=4,
             cout=6, n=2, ins=(3, 4, 5), bias=True),
        dict(k=(3, 3, 3), s=(4, 4, 4), d=(3, 3, 3), p=(3, 2, 1), op=(3, 2, 1), groups=1, cin=3,
             cout=5, n=1, ins=(1, 2, 1), bias=True),
        dict(k=(5, 5, 5), s=(1, 1, 1), d=(3, 2, 1), p=(6, 4, 2), op=(0, 1, 0), groups=1, cin=2,
             cout=3, n=1, ins=(1, 1, 1), bias=False),
    ]
    for cfg in cfgs:
        y, ref = _run(cfg, torch.float64)
        _check(y, ref, torch.float64)
        assert torch.equal(torch.isnan(y).cpu(), torch.zeros_like(ref, dtype=torch.bool))


def test_noncontiguous_input_and_empty_batch():
    x = torch.randn(2, 3, 5, 6, 7, device=DEV, dtype=torch.float64).transpose(3, 4)
    w = torch.randn(3, 2, 3, 3, 3, device=DEV, dtype=torch.float64)
    cfg = dict(s=(2, 2, 2), p=(1, 1, 1), op=(0, 0, 0), d=(1, 1, 1), groups=1)
    y = _forward(x, w, None, cfg)
    ref = F.conv_transpose3d(x, w, None, 2, 1)
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-10)
    y0 = _forward(x[:0], w, None, cfg)
    assert y0.shape == (0, 2) + tuple(ref.shape[2:])


def test_bad_arguments_raise():
    x = torch.randn(1, 4, 3, 3, 3, device=DEV)
    w = torch.randn(4, 2, 3, 3, 3, device=DEV)
    cfg = dict(s=(2, 2, 2), p=(0, 0, 0), op=(0, 0, 0), d=(1, 1, 1), groups=1)
    args = check_conv_transpose3d(x, w, None, cfg["s"], cfg["p"], cfg["op"], 1, cfg["d"])
    with pytest.raises(RuntimeError, match="dtype"):
        _cuda().forward(x.double(), w, None, args)
    with pytest.raises(RuntimeError, match="bias"):
        _cuda().forward(x, w, torch.randn(3, device=DEV), args)


_TC_CASES = [  # grouped, dilated, odd channel counts, several C_out tilings (BN 8/16/64/128)
    dict(k=(3, 5, 7), s=(2, 2, 2), d=(1, 1, 1), p=(1, 2, 3), op=(1, 1, 1), groups=4, cin=32,
         cout=32, n=2, ins=(3, 6, 9), bias=True),
    dict(k=(3, 4, 2), s=(2, 3, 1), d=(1, 2, 1), p=(1, 2, 0), op=(1, 2, 0), groups=1, cin=10,
         cout=15, n=1, ins=(3, 5, 4), bias=True),
    dict(k=(2, 3, 3), s=(3, 1, 2), d=(2, 1, 3), p=(0, 1, 2), op=(1, 0, 2), groups=2, cin=14,
         cout=34, n=2, ins=(4, 3, 5), bias=False),
    dict(k=(4, 4, 4), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(0, 0, 0), groups=1, cin=12,
         cout=130, n=1, ins=(3, 4, 5), bias=True),
    dict(k=(1, 1, 1), s=(1, 1, 1), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=3, cin=9,
         cout=24, n=2, ins=(2, 9, 33), bias=True),
    # whole and partial all-phase tiles side by side (the whole ones skip the bounds checks)
    dict(k=(3, 5, 7), s=(2, 2, 2), d=(1, 1, 1), p=(1, 2, 3), op=(1, 1, 1), groups=4, cin=32,
         cout=32, n=1, ins=(5, 16, 20), bias=True),
]


# tensor cores (the all-phase kernel where it fits), the per-phase kernel, the all-phase
# kernel without the staged output, the all-phase kernel's 8-warp BN 8 tile (any C_out/g: it
# takes several C_out blocks)
@pytest.mark.parametrize("kernel", ["tensor-cores", "mma",
                                    ForwardKernel("tensor-cores", direct_stores=True),
                                    ForwardKernel("tensor-cores", allph_tile=4)],
                         ids=["tensor-cores", "mma", "direct-stores", "allphase-8-warps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_TC_CASES)))
def test_tensor_core_kernels(case, dtype, kernel):
    y, ref = _run(_TC_CASES[case], dtype, kernel=kernel, seed=case)
    _check(y, ref, dtype)


# The implicit-GEMM kernel (16-bit dtypes, C_in/groups a multiple of 8, channels-last input):
# partial channel groups and C_out tiles, dilation, kernel < stride, 1x1x1, several row tiles.
_GEMM_CASES = [
    dict(k=(3, 3, 3), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(1, 1, 1), groups=1, cin=16,
         cout=32, n=2, ins=(3, 5, 9), bias=True),
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=64,
         cout=72, n=1, ins=(4, 4, 5), bias=True),
    dict(k=(3, 4, 2), s=(2, 3, 1), d=(1, 2, 1), p=(1, 2, 0), op=(1, 2, 0), groups=2, cin=48,
         cout=40, n=2, ins=(3, 5, 4), bias=False),
    dict(k=(1, 2, 1), s=(3, 4, 2), d=(1, 1, 1), p=(0, 0, 0), op=(2, 1, 1), groups=1, cin=8,
         cout=32, n=1, ins=(2, 3, 4), bias=True),
    dict(k=(1, 1, 1), s=(1, 1, 1), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=40,
         cout=96, n=2, ins=(2, 9, 33), bias=True),
    dict(k=(3, 3, 3), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(1, 1, 1), groups=1, cin=32,
         cout=64, n=2, ins=(6, 7, 9), bias=True),
    # three W phases, odd output width; four W phases of one tap each
    dict(k=(2, 3, 3), s=(1, 2, 3), d=(1, 1, 1), p=(0, 1, 1), op=(0, 1, 2), groups=1, cin=16,
         cout=48, n=1, ins=(3, 4, 5), bias=True),
    dict(k=(1, 1, 4), s=(1, 1, 4), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=2, cin=16,
         cout=80, n=2, ins=(2, 3, 5), bias=False),
]


# the implicit GEMM with the rule's tile; tiles BN = 32, 64, 128, 64 (8 warps); one phase per
# block (no grouping of the W phases); 32 channels a k step
_GEMM_VARIANTS = {
    "auto-tile": ForwardKernel("gemm"),
    "BN32": ForwardKernel("gemm", gemm_tile=0),
    "BN64": ForwardKernel("gemm", gemm_tile=1),
    "BN128": ForwardKernel("gemm", gemm_tile=2),
    "BN64-8warps": ForwardKernel("gemm", gemm_tile=3),
    "phase-per-block": ForwardKernel("gemm", gemm_one_phase=True),
    "phase-per-block-BN128": ForwardKernel("gemm", gemm_tile=2, gemm_one_phase=True),
    "k32-BN128": ForwardKernel("gemm", gemm_tile=2, gemm_k32=True),
}


@pytest.mark.parametrize("variant", list(_GEMM_VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_GEMM_CASES)))
def test_implicit_gemm_kernel(case, dtype, variant):
    y, ref = _run(_GEMM_CASES[case], dtype, kernel=_GEMM_VARIANTS[variant], seed=case)
    _check(y, ref, dtype)



# The implicit GEMM's shared-A tile (kind 6 on mma.sync, kind 7 on wgmma: sm_90a builds):
# k == s layers with no padding, channels-last input and result.  Several row tiles with a
# partial last one, partial 64-column blocks, groups, unequal strides, a pointwise layer, 256
# channels a group, 64 phases, few rows (the (phase, column) chunks split over blocks).
_SHARED_A_CASES = [
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=128,
         cout=64, n=2, ins=(5, 6, 7), bias=True),
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=64,
         cout=72, n=1, ins=(4, 4, 5), bias=True),
    dict(k=(1, 2, 3), s=(1, 2, 3), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=2, cin=128,
         cout=48, n=2, ins=(3, 5, 4), bias=False),
    dict(k=(1, 1, 1), s=(1, 1, 1), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=256,
         cout=96, n=2, ins=(2, 9, 33), bias=True),
    dict(k=(4, 4, 4), s=(4, 4, 4), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=64,
         cout=136, n=1, ins=(2, 3, 3), bias=True),
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=4, cin=256,
         cout=32, n=3, ins=(3, 3, 3), bias=False),
    # 8192 rows: several (phase, column) chunks a block (staging and accumulators reused)
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=128,
         cout=64, n=2, ins=(16, 16, 16), bias=True),
]


def _channels_last_weight_call(cfg, dtype, seed):
    """A channels-last call of ``cfg`` on the GPU with its weight both ways: (x, a weight with
    no adjacent output channels (always packed), the channels_last_3d weight, bias, checked
    arguments, float64 reference)."""
    xl, wl, bl, ref = _random_call(cfg, dtype, seed)
    x = xl.to(DEV).contiguous(memory_format=torch.channels_last_3d)
    b = bl.to(DEV) if bl is not None else None
    # output channels never adjacent (a contiguous 1 x 1 x 1 weight is channels-last too)
    w_packed = wl.to(DEV).transpose(0, 1).contiguous().transpose(0, 1)
    w_cl = w_packed.contiguous(memory_format=torch.channels_last_3d)
    args = check_conv_transpose3d(x, w_cl, b, cfg["s"], cfg["p"], cfg["op"], cfg["groups"],
                                  cfg["d"])
    return x, w_packed, w_cl, b, args, ref


def _misaligned_copy(w):
    """A copy of ``w`` with its strides, 8 bytes into its storage (no 16-byte alignment)."""
    base = torch.empty(w.numel() + 4, dtype=w.dtype, device=w.device)
    w_off = base[4:].as_strided(w.shape, w.stride())
    w_off.copy_(w)
    return w_off


def _shared_a_call(cfg, dtype, seed, kernel):
    """(result, float64 reference, plan description) of a channels-last call of ``cfg``.  The
    result's memory is NaN before the call (the allocator hands the freed block back), so an
    output the kernel leaves unwritten fails the check."""
    xl, wl, bl, ref = _random_call(cfg, dtype, seed)
    x = xl.to(DEV).contiguous(memory_format=torch.channels_last_3d)
    w, b = wl.to(DEV), (bl.to(DEV) if bl is not None else None)
    args = check_conv_transpose3d(x, w, b, cfg["s"], cfg["p"], cfg["op"], cfg["groups"],
                                  cfg["d"])
    desc = _cuda().describe(args, x.shape[0], dtype, x.device, channels_last=True,
                            kernel=kernel, out_channels_last=True)
    poison = torch.full((ref.numel(),), float("nan"), dtype=dtype, device=DEV)
    del poison
    y = _cuda().forward(x, w, b, args, kernel=kernel, out_channels_last=True)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    return y, ref, desc


@pytest.mark.parametrize("kernel", ["auto", "mma-sync", "wgmma"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_SHARED_A_CASES)))
def test_implicit_gemm_shared_a_tile(case, dtype, kernel):
    cfg = _SHARED_A_CASES[case]
    warpgroups = _cuda().warpgroup_kernels()
    if kernel == "wgmma" and not warpgroups:
        pytest.skip("no sm_90a build on an sm_90 GPU: the plan refuses kind 7 (test_plan.py)")
    forced = {"auto": "auto", "mma-sync": ForwardKernel("gemm", gemm_tile=6),
              "wgmma": ForwardKernel("gemm", gemm_tile=7)}[kernel]
    # a seed of its own for each kernel: no result of another run can stand in for its own
    seed = 3 * case + ("auto", "mma-sync", "wgmma").index(kernel)
    y, ref, desc = _shared_a_call(cfg, dtype, seed, forced)
    # the rule takes the implicit GEMM from 32 output channels a group, and its wgmma form
    # or not by the blocks a multiprocessor holds (tests/plan/test_plan.py)
    shared = kernel != "auto" or cfg["cout"] // cfg["groups"] >= 32
    kinds = {"auto": ("kind=7 ", "kind=6 ") if warpgroups else ("kind=6 ",),
             "mma-sync": ("kind=6 ",), "wgmma": ("kind=7 ",)}[kernel]
    assert (any(k in desc for k in kinds) and "phases-share-a" in desc) == shared, desc
    _check(y, ref, dtype)


@pytest.mark.parametrize("case", [0, 4])
def test_implicit_gemm_shared_a_tile_nonfinite(case):
    """NaN and Inf reach exactly the outputs torch gives them (the tile flags its non-finite
    stores; the fix-up recomputes those from their real pairs)."""
    cfg = _SHARED_A_CASES[case]
    gen = torch.Generator().manual_seed(case)
    x = torch.randn((cfg["n"], cfg["cin"]) + cfg["ins"], generator=gen).to(torch.bfloat16)
    w = torch.randn((cfg["cin"], cfg["cout"]) + cfg["k"], generator=gen).to(torch.bfloat16)
    x[0, 3, 1, 1, 1], x.view(-1)[-1] = float("nan"), float("inf")
    w[5, 7, 0, 1, 0] = float("-inf")
    ref = F.conv_transpose3d(x.double(), w.double(), None, cfg["s"])
    xd = x.to(DEV).contiguous(memory_format=torch.channels_last_3d)
    args = check_conv_transpose3d(xd, w.to(DEV), None, cfg["s"], cfg["p"], cfg["op"], 1,
                                  cfg["d"])
    assert "phases-share-a" in _cuda().describe(args, cfg["n"], torch.bfloat16, xd.device,
                                                channels_last=True, out_channels_last=True)
    y = _cuda().forward(xd, w.to(DEV), None, args, out_channels_last=True).double().cpu()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.equal(y[ref.isinf()], ref[ref.isinf()])
    finite = ref.isfinite()
    assert bool(finite.any())
    scale = max(1.0, float(ref[finite].abs().max()))
    assert float((y[finite] - ref[finite]).abs().max()) <= 1.6e-2 * scale


# The implicit GEMM in float32 (3xTF32 on the mma.sync tiles, taken only when named): one
# phase a block, the input read channels-last (copied where it is not), the accumulators
# flushed every 256 terms where a phase's reduction is longer.  The 16-bit cases, then long
# reductions: 768 terms a phase (96 channels x 8 taps) and 4096 (512 x 8) with a partial
# C_out tile.
_TF32_GEMM_CASES = _GEMM_CASES + [
    dict(k=(3, 3, 3), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(1, 1, 1), groups=1, cin=96,
         cout=72, n=1, ins=(3, 4, 5), bias=True),
    dict(k=(4, 4, 4), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(0, 0, 0), groups=1, cin=512,
         cout=40, n=1, ins=(3, 4, 5), bias=False),
]


def _phase_terms(cfg):
    """Reduction terms of a phase at most: C_in/groups x its taps."""
    t = _cuda().host_tables((cfg["cin"], cfg["cout"] // cfg["groups"]) + cfg["k"],
                            cfg["groups"], cfg["s"], cfg["p"], cfg["d"], 4)
    return cfg["cin"] // cfg["groups"] * math.prod(t.max_taps)


@pytest.mark.parametrize("result", ["ncdhw", "channels_last"])
@pytest.mark.parametrize("variant", list(_GEMM_VARIANTS))
@pytest.mark.parametrize("case", range(len(_TF32_GEMM_CASES)))
def test_implicit_gemm_float32(case, variant, result):
    """float32 on the implicit GEMM (3xTF32) within float32's tolerance at every reduction
    length, on every mma.sync tile, either result layout."""
    cfg, kernel = _TF32_GEMM_CASES[case], _GEMM_VARIANTS[variant]
    desc = _describe(cfg, torch.float32, kernel=kernel)
    assert desc.startswith("implicit-gemm") and "one-phase" in desc, desc
    assert "channels-last input" in desc and "wgmma" not in desc, desc
    flushed = _phase_terms(cfg) > 256
    assert (" 3xTF32 flushed" in desc) == flushed and " 3xTF32" in desc, desc
    xl, wl, bl, ref = _random_call(cfg, torch.float32, case)
    x, w = xl.to(DEV), wl.to(DEV)
    b = bl.to(DEV) if bl is not None else None
    args = check_conv_transpose3d(x, w, b, cfg["s"], cfg["p"], cfg["op"], cfg["groups"],
                                  cfg["d"])
    y = _cuda().forward(x, w, b, args, kernel=kernel,
                        out_channels_last=result == "channels_last")
    assert y.is_contiguous(memory_format=torch.channels_last_3d if result == "channels_last"
                           else torch.contiguous_format)
    _check(y, ref, torch.float32)


@pytest.mark.parametrize("case", [0, 2, len(_GEMM_CASES)])
def test_implicit_gemm_float32_nonfinite(case):
    """NaN and Inf in the input and the weight reach exactly the outputs torch gives them
    (the kernel flags its non-finite stores, and the fix-up recomputes those from their real
    pairs)."""
    cfg = _TF32_GEMM_CASES[case]
    x, w, b, _ = _random_call(cfg, torch.float32, case)
    x.view(-1)[0], x.view(-1)[-1] = float("nan"), float("inf")
    w.view(-1)[1] = float("-inf")
    ref = F.conv_transpose3d(x.double(), w.double(), b.double() if b is not None else None,
                             cfg["s"], cfg["p"], cfg["op"], cfg["groups"], cfg["d"])
    y = _forward(x.to(DEV), w.to(DEV), b.to(DEV) if b is not None else None, cfg,
                 kernel=ForwardKernel("gemm")).double().cpu()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert bool(ref.isfinite().any())
    finite = ref.isfinite()
    assert torch.equal(y[ref.isinf()], ref[ref.isinf()])
    scale = max(1.0, float(ref[finite].abs().max()))
    assert float((y[finite] - ref[finite]).abs().max()) <= 1e-5 * scale


# The implicit GEMM's warpgroup tile (sm_90a wgmma; C_in/groups a multiple of 64): BN 32, 64
# and 128 with partial C_out tiles, grouped W phases (2, 3, 4) and one phase per block, empty
# phases (kernel < stride), several k steps a tap, long reductions, several row tiles.
_WGMMA_CASES = [
    dict(k=(3, 3, 3), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(1, 1, 1), groups=1, cin=64,
         cout=32, n=2, ins=(3, 5, 9), bias=True),
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=128,
         cout=72, n=1, ins=(4, 4, 5), bias=True),
    dict(k=(3, 4, 2), s=(2, 3, 1), d=(1, 2, 1), p=(1, 2, 0), op=(1, 2, 0), groups=2, cin=128,
         cout=80, n=2, ins=(3, 5, 4), bias=False),
    dict(k=(2, 3, 3), s=(1, 2, 3), d=(1, 1, 1), p=(0, 1, 1), op=(0, 1, 2), groups=1, cin=64,
         cout=48, n=1, ins=(3, 4, 5), bias=True),
    dict(k=(1, 1, 1), s=(1, 1, 1), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=192,
         cout=136, n=2, ins=(2, 9, 33), bias=True),
    dict(k=(1, 2, 1), s=(3, 4, 2), d=(1, 1, 1), p=(0, 0, 0), op=(2, 1, 1), groups=1, cin=64,
         cout=32, n=1, ins=(2, 3, 4), bias=True),
    dict(k=(4, 4, 4), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(0, 0, 0), groups=1, cin=256,
         cout=128, n=2, ins=(3, 4, 5), bias=False),
    dict(k=(1, 1, 4), s=(1, 1, 4), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=2, cin=128,
         cout=80, n=2, ins=(2, 3, 5), bias=True),
    # 512 terms a phase, 64 output channels: the 128-row TMA tile by the rule, either result
    # layout
    dict(k=(4, 4, 4), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(0, 0, 0), groups=1, cin=64,
         cout=64, n=2, ins=(3, 5, 6), bias=True),
]


def _rule_takes_256_rows(cfg, describe) -> bool:
    """Whether the forward's TMA rule takes 256 rows for ``cfg``: C_out/groups > 64, whole
    64-channel k steps, and the named 256-row tile's blocks (its grid, from ``describe(kernel)``)
    fill a wave of the multiprocessors."""
    if cfg["cout"] // cfg["groups"] <= 64 or (cfg["cin"] // cfg["groups"]) % 64 != 0:
        return False
    desc = describe(ForwardKernel("gemm", gemm_tile=9))
    blocks = int(desc.split(" grid=")[1].split()[0])
    return blocks >= torch.cuda.get_device_properties(0).multi_processor_count


@pytest.mark.parametrize("variant", ["auto", "forced", "phase-per-block", "four-warpgroups",
                                     "tma", "tma-256-rows", "tma-ping-pong",
                                     "tma-256-rows-persistent"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_WGMMA_CASES)))
def test_implicit_gemm_warpgroup_tile(case, dtype, variant):
    cfg = _WGMMA_CASES[case]
    kernel = {"auto": "auto", "forced": ForwardKernel("gemm", gemm_tile=4),
              "phase-per-block": ForwardKernel("gemm", gemm_tile=4, gemm_one_phase=True),
              "four-warpgroups": ForwardKernel("gemm", gemm_tile=5),
              "tma": ForwardKernel("gemm", gemm_tile=8),
              "tma-256-rows": ForwardKernel("gemm", gemm_tile=9),
              "tma-ping-pong": ForwardKernel("gemm", gemm_tile=10),
              "tma-256-rows-persistent": ForwardKernel("gemm", gemm_tile=11)}[variant]
    if (variant == "four-warpgroups" and cfg["cout"] // cfg["groups"] <= 32) or (
            variant.startswith("tma-256-rows") and cfg["cout"] // cfg["groups"] <= 64):
        # four warpgroups: its 512 threads each copy B (BN >= 64); the 256-row TMA tile: BN 128
        with pytest.raises(RuntimeError, match="was forced and"):
            _run(cfg, dtype, kernel=kernel, seed=case)
        return
    if not _cuda().warpgroup_kernels():
        if variant == "auto":
            assert "wgmma" not in _describe(cfg, dtype, kernel=kernel)
        else:  # forcing it is refused, never rerouted
            with pytest.raises(RuntimeError, match="was forced and"):
                _run(cfg, dtype, kernel=kernel, seed=case)
        return
    desc = _describe(cfg, dtype, kernel=kernel)
    # the rule takes the warpgroup tiles for reductions of >= 512 terms per phase, in the
    # forward fed by the TMA unit: 256 rows where C_out/groups > 64 and their blocks fill a
    # wave of the multiprocessors (for this (N, C, D, H, W) result in persistent blocks),
    # else 128; from 256 terms with C_out/groups >= 32 too (from 128 with 32)
    k_per_phase = (cfg["cin"] // cfg["groups"] * cfg["k"][0] * cfg["k"][1] * cfg["k"][2] /
                   (cfg["s"][0] * cfg["s"][1] * cfg["s"][2]))
    cout_g = cfg["cout"] // cfg["groups"]
    if variant == "auto" and (k_per_phase >= 512 or (k_per_phase >= 256 and cout_g >= 32)
                              or (k_per_phase >= 128 and cout_g == 32)):
        variant = "tma-256-rows-persistent" if _rule_takes_256_rows(
            cfg, lambda tile: _describe(cfg, dtype, kernel=tile)) else "tma"
    if variant in ("tma", "tma-256-rows"):
        bm = 256 if variant == "tma-256-rows" else 128
        assert desc.startswith(f"implicit-gemm kind={7 + bm // 128} BM={bm} "), desc
        assert "tma-box" in desc, desc
        assert "wgmma-sm90a" in desc, desc
    elif variant == "tma-ping-pong":
        assert desc.startswith("implicit-gemm kind=10 BM=128 "), desc
        assert "tma-box ping-pong" in desc and "threads=384" in desc, desc
        assert "wgmma-sm90a" in desc, desc
    elif variant == "tma-256-rows-persistent":
        assert desc.startswith("implicit-gemm kind=11 BM=256 "), desc
        assert "tma-box persistent" in desc and "threads=384" in desc, desc
        assert "wgmma-sm90a" in desc, desc
    elif variant == "four-warpgroups":
        assert desc.startswith("implicit-gemm kind=5 BM=256") and "one-phase" in desc, desc
        assert "wgmma-sm90a" in desc, desc
    elif variant != "auto":
        assert desc.startswith("implicit-gemm kind=4") and "wgmma-sm90a" in desc, desc
    else:
        assert "wgmma" not in desc, desc
    y, ref = _run(cfg, dtype, kernel=kernel, seed=case)
    _check(y, ref, dtype)


_TMA_TILES = {"tma": 8, "tma-256-rows": 9, "tma-ping-pong": 10, "tma-256-rows-persistent": 11}
# the warpgroup cases, and C_in/groups odd multiples of 32 (the TMA tiles' 32-channel k steps)
# with BN 32, 128 and 64
_TMA_WEIGHT_CASES = _WGMMA_CASES + [
    dict(k=(3, 3, 3), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(1, 1, 1), groups=1, cin=96,
         cout=32, n=2, ins=(3, 5, 9), bias=True),
    dict(k=(3, 4, 2), s=(2, 3, 1), d=(1, 2, 1), p=(1, 2, 0), op=(1, 2, 0), groups=2, cin=192,
         cout=144, n=2, ins=(3, 5, 4), bias=False),
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=32,
         cout=64, n=2, ins=(4, 4, 5), bias=True),
]


@pytest.mark.parametrize("tile", sorted(_TMA_TILES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_TMA_WEIGHT_CASES)))
def test_tma_tiles_read_a_channels_last_weight_in_place(case, dtype, tile):
    """A channels_last_3d weight read in place by each TMA tile (its B boxes at the phase's
    flipped, strided kernel taps) gives bit for bit the result of the same tile reading the
    packed weight, and matches torch; a weight the rule does not take is packed."""
    cfg = _TMA_WEIGHT_CASES[case]
    cout_g, cin_g = cfg["cout"] // cfg["groups"], cfg["cin"] // cfg["groups"]
    kind = _TMA_TILES[tile]
    if not _cuda().warpgroup_kernels():
        pytest.skip("the TMA tiles need an sm_90a build on an sm_90 GPU")
    if kind in (9, 11) and (cout_g <= 64 or cin_g % 64):
        pytest.skip("the 256-row tiles take BN 128 and 64-channel k steps")
    kernel = ForwardKernel("gemm", gemm_tile=kind)
    x, w_packed, w_cl, b, args, ref = _channels_last_weight_call(cfg, dtype, case)
    cuda = _cuda()
    for out_cl in (False, True):
        in_place = cuda.weight_in_place(args, cfg["n"], dtype, x.device, w_cl, True, kernel,
                                        out_cl)
        assert in_place == (cout_g % 8 == 0)
        assert not cuda.weight_in_place(args, cfg["n"], dtype, x.device, w_packed, True, kernel,
                                        out_cl)
        desc = cuda.describe(args, cfg["n"], dtype, x.device, True, kernel, out_cl,
                             weight_strides=w_cl.stride())
        assert desc.startswith(f"implicit-gemm kind={kind} "), desc
        assert desc.endswith(", weight read in place (channels_last_3d)") == in_place, desc
        y_cl = cuda.forward(x, w_cl, b, args, kernel=kernel, out_channels_last=out_cl)
        y_packed = cuda.forward(x, w_packed, b, args, kernel=kernel, out_channels_last=out_cl)
        assert torch.equal(y_cl, y_packed)
        _check(y_cl, ref, dtype)
    # a misaligned channels-last weight (a view 8 bytes into its storage) is packed
    w_off = _misaligned_copy(w_cl)
    assert not cuda.weight_in_place(args, cfg["n"], dtype, x.device, w_off, True, kernel)
    assert torch.equal(cuda.forward(x, w_off, b, args, kernel=kernel),
                       cuda.forward(x, w_packed, b, args, kernel=kernel))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tma_weight_in_place_nonfinite_and_captured(dtype):
    """A weight read in place (no pack to zero the call's non-finite flag: a memset does)
    puts NaN and Inf exactly where torch does, call after call and in a CUDA graph."""
    if not _cuda().warpgroup_kernels():
        pytest.skip("the TMA tiles need an sm_90a build on an sm_90 GPU")
    cfg = _WGMMA_CASES[0]
    kernel = ForwardKernel("gemm", gemm_tile=8)
    x, _, w, b, args, _ = _channels_last_weight_call(cfg, dtype, 3)
    cuda = _cuda()
    assert cuda.weight_in_place(args, cfg["n"], dtype, x.device, w, True, kernel)

    def reference():
        return F.conv_transpose3d(x.double(), w.double(), b.double() if b is not None else None,
                                  cfg["s"], cfg["p"], cfg["op"], cfg["groups"], cfg["d"])

    def check(y, ref):
        y = y.double()
        assert torch.equal(torch.isnan(y), torch.isnan(ref))
        assert torch.equal(torch.isinf(y), torch.isinf(ref))
        assert torch.equal(y[ref.isinf()], ref[ref.isinf()])
        finite = ref.isfinite()
        assert bool(finite.any())
        _check(torch.where(finite, y, ref.new_zeros(())).to(dtype),
               torch.where(finite, ref, ref.new_zeros(())).cpu(), dtype)

    finite_w = w.clone()
    w[1, 2, 0, 1, 2] = float("inf")
    check(cuda.forward(x, w, b, args, kernel=kernel), reference())
    # the next call's flag starts at zero again: all finite, nothing recomputed
    w.copy_(finite_w)
    check(cuda.forward(x, w, b, args, kernel=kernel), reference())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cuda.forward(x, w, b, args, kernel=kernel)  # planned outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = cuda.forward(x, w, b, args, kernel=kernel)
    w[0, 0, 1, 1, 1] = float("nan")
    graph.replay()
    check(y, reference())
    w.copy_(finite_w)
    graph.replay()
    check(y, reference())


def _channels_last_call(cfg, dtype, seed):
    """A random call of ``cfg`` on the device, the input channels_last_3d: (x, weight, bias,
    checked arguments, float64 reference)."""
    xl, wl, bl, ref = _random_call(cfg, dtype, seed)
    xd = xl.to(DEV).contiguous(memory_format=torch.channels_last_3d)
    wd, bd = wl.to(DEV), (bl.to(DEV) if bl is not None else None)
    args = check_conv_transpose3d(xd, wd, bd, cfg["s"], cfg["p"], cfg["op"], cfg["groups"],
                                  cfg["d"])
    return xd, wd, bd, args, ref


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_WGMMA_CASES)))
def test_implicit_gemm_four_warpgroups_channels_last_result(case, dtype):
    """A channels-last result from a channels-last input: the 4-warpgroup tile (256 rows, one
    phase a block, its output staged in the drained pipeline) where C_out/groups > 32, and the
    128-row TMA tile, both named; the rule's tile for the same call (the TMA tiles where
    C_in/groups is whole 64-channel steps, k == s layers aside)."""
    cfg = _WGMMA_CASES[case]
    cl = torch.channels_last_3d
    xd, wd, bd, args, ref = _channels_last_call(cfg, dtype, case)
    wide = cfg["cout"] // cfg["groups"] > 32
    four = ForwardKernel("gemm", gemm_tile=5)
    boxes = ForwardKernel("gemm", gemm_tile=8)
    for kernel in ("auto", four, boxes):
        if kernel is boxes and not _cuda().warpgroup_kernels():
            with pytest.raises(RuntimeError, match="was forced and"):
                _cuda().forward(xd, wd, bd, args, kernel=kernel, out_channels_last=True)
            continue
        if kernel is four and not (wide and _cuda().warpgroup_kernels()):
            with pytest.raises(RuntimeError, match="was forced and"):
                _cuda().forward(xd, wd, bd, args, kernel=kernel, out_channels_last=True)
            continue
        desc = _cuda().describe(args, xd.shape[0], dtype, xd.device, channels_last=True,
                                kernel=kernel, out_channels_last=True)
        if kernel is four:
            assert "kind=5 BM=256" in desc, desc
        elif kernel is boxes:
            assert "kind=8 BM=128" in desc and "tma-box" in desc, desc
        elif "wgmma" in desc and "phases-share-a" not in desc:
            # the rule: the TMA tiles for a channels-last result (k == s layers: shared A),
            # 256 rows where C_out/groups > 64 and their blocks fill a wave
            kind = 9 if _rule_takes_256_rows(cfg, lambda tile: _cuda().describe(
                args, xd.shape[0], dtype, xd.device, channels_last=True, kernel=tile,
                out_channels_last=True)) else 8
            assert desc.startswith(f"implicit-gemm kind={kind} ") and "tma-box" in desc, desc
        y = _cuda().forward(xd, wd, bd, args, kernel=kernel, out_channels_last=True)
        assert y.is_contiguous(memory_format=cl)
        _check(y, ref, dtype)


# The TMA tile's 32-channel k steps (C_in/groups an odd multiple of 32: 64-byte rows in the
# 64-byte swizzle), named in the forward: 32 and 96 channels a group, BN 32, 64 and 128 with
# partial C_out tiles, strides past 1 and dilation.
_TMA_K32_CASES = [
    dict(k=(3, 3, 3), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(1, 1, 1), groups=1, cin=32,
         cout=32, n=2, ins=(3, 5, 9), bias=True),
    dict(k=(2, 3, 3), s=(1, 2, 3), d=(2, 1, 1), p=(0, 1, 1), op=(0, 1, 2), groups=2, cin=192,
         cout=80, n=1, ins=(3, 4, 5), bias=False),
    dict(k=(4, 4, 4), s=(2, 2, 2), d=(1, 1, 1), p=(1, 1, 1), op=(0, 0, 0), groups=1, cin=96,
         cout=136, n=2, ins=(3, 4, 5), bias=True),
]


@pytest.mark.parametrize("out_cl", [False, True], ids=["ncdhw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_TMA_K32_CASES)))
def test_tma_tile_32_channel_k_steps(case, dtype, out_cl):
    """The 128-row TMA tile in 32-channel k steps, named, against torch in float64 in either
    result layout, bitwise repeatable; the 256-row tile (64-channel steps only) is refused,
    and the forward's rule takes these steps for a channels-last result from 96 channels a
    group."""
    cfg = _TMA_K32_CASES[case]
    cl = torch.channels_last_3d
    xd, wd, bd, args, ref = _channels_last_call(cfg, dtype, case)
    tma, tma256 = ForwardKernel("gemm", gemm_tile=8), ForwardKernel("gemm", gemm_tile=9)
    if not _cuda().warpgroup_kernels():
        with pytest.raises(RuntimeError, match="was forced and"):
            _cuda().forward(xd, wd, bd, args, kernel=tma, out_channels_last=out_cl)
        return
    desc = _cuda().describe(args, xd.shape[0], dtype, xd.device, channels_last=True,
                            kernel=tma, out_channels_last=out_cl)
    assert "kind=8 BM=128 " in desc and " BK=32 " in desc and "tma-box" in desc, desc
    y = _cuda().forward(xd, wd, bd, args, kernel=tma, out_channels_last=out_cl)
    assert y.is_contiguous(memory_format=cl if out_cl else torch.contiguous_format)
    _check(y, ref, dtype)
    assert torch.equal(y, _cuda().forward(xd, wd, bd, args, kernel=tma,
                                          out_channels_last=out_cl))
    with pytest.raises(RuntimeError, match="was forced and"):
        _cuda().forward(xd, wd, bd, args, kernel=tma256, out_channels_last=out_cl)
    auto = _cuda().describe(args, xd.shape[0], dtype, xd.device, channels_last=True,
                            out_channels_last=out_cl)
    by_rule = out_cl and cfg["cin"] // cfg["groups"] >= 96
    assert ("tma-box" in auto and " BK=32 " in auto) == by_rule, auto


# Layers whose phases all read W at one offset (k == s along W, no padding there) and whose
# rows come in whole 16-byte vectors along W: the implicit GEMM reads a contiguous input in
# place (no channels-last copy).
_GEMM_NCDHW_CASES = [
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=16,
         cout=32, n=2, ins=(3, 5, 8), bias=True),
    dict(k=(3, 3, 2), s=(2, 1, 2), d=(1, 1, 1), p=(1, 1, 0), op=(1, 0, 0), groups=2, cin=48,
         cout=80, n=1, ins=(3, 4, 16), bias=True),
    dict(k=(1, 1, 1), s=(1, 1, 1), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=32,
         cout=64, n=2, ins=(2, 3, 24), bias=False),
    # 64-channel k steps with a partial last one (C_in/g = 96), a partial C_out tile
    dict(k=(2, 2, 2), s=(2, 2, 2), d=(1, 1, 1), p=(0, 0, 0), op=(0, 0, 0), groups=1, cin=96,
         cout=136, n=1, ins=(2, 3, 8), bias=True),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("variant", ["auto", "phase-per-block", "BN128", "BN64-8warps"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(_GEMM_NCDHW_CASES)))
def test_implicit_gemm_reads_either_layout(case, dtype, variant, layout):
    cfg = _GEMM_NCDHW_CASES[case]
    kernel = _GEMM_VARIANTS.get(variant, "auto")
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    desc = _describe(cfg, dtype, kernel=kernel, memory_format=fmt)
    assert desc.startswith("implicit-gemm")
    assert ("contiguous input" if layout == "contiguous" else "channels-last input") in desc
    gen = torch.Generator().manual_seed(case)
    x = torch.randn((cfg["n"], cfg["cin"]) + cfg["ins"], generator=gen).to(dtype)
    w = torch.randn((cfg["cin"], cfg["cout"] // cfg["groups"]) + cfg["k"], generator=gen).to(dtype)
    b = torch.randn(cfg["cout"], generator=gen).to(dtype) if cfg["bias"] else None
    ref = F.conv_transpose3d(x.double(), w.double(), b.double() if b is not None else None,
                             cfg["s"], cfg["p"], cfg["op"], cfg["groups"], cfg["d"])
    y = _forward(x.to(DEV).contiguous(memory_format=fmt), w.to(DEV),
                 b.to(DEV) if b is not None else None, cfg, kernel=kernel)
    _check(y, ref, dtype)


def _describe(cfg, dtype, kernel="auto", memory_format=torch.contiguous_format):
    # shapes only: the arguments are checked on meta tensors
    x = torch.empty((max(cfg["n"], 1), cfg["cin"]) + cfg["ins"], device="meta", dtype=dtype)
    w = torch.empty((cfg["cin"], cfg["cout"] // cfg["groups"]) + cfg["k"], device="meta",
                    dtype=dtype)
    args = check_conv_transpose3d(x, w, None, cfg["s"], cfg["p"], cfg["op"], cfg["groups"],
                                  cfg["d"])
    return _cuda().describe(args, x.shape[0], dtype, torch.device(DEV),
                            channels_last=memory_format == torch.channels_last_3d,
                            kernel=kernel)


def test_path_rules_are_visible():
    wide, grouped = _GEMM_CASES[5], _TC_CASES[0]
    assert _describe(wide, torch.bfloat16).startswith("implicit-gemm")
    assert "channels-last input" in _describe(wide, torch.bfloat16)
    # this grouped layer (C_out/groups 8): the all-phase kernel's 8-warp tile, reading the input
    # in the layout it comes in, its two W phases stored in pairs (stride 2 along W); its 4-warp
    # tile stages a 16-bit output in shared memory
    desc = _describe(grouped, torch.bfloat16)
    assert desc.startswith("mma-allphase kind=4") and "contiguous input" in desc
    assert "paired-w-stores" in desc
    desc = _describe(grouped, torch.bfloat16, memory_format=torch.channels_last_3d)
    assert desc.startswith("mma-allphase") and "channels-last input" in desc
    assert "paired-w-stores" in _describe(grouped, torch.float32)
    four_warps = ForwardKernel("tensor-cores", allph_tile=0)
    assert "staged-output" in _describe(grouped, torch.bfloat16, kernel=four_warps)
    assert "direct-stores" in _describe(grouped, torch.float32, kernel=four_warps)
    # contiguous_input keeps the input contiguous; float64 never uses tensor cores
    desc = _describe(grouped, torch.bfloat16, kernel=CONTIGUOUS_TC,
                     memory_format=torch.channels_last_3d)
    assert desc.startswith("mma-allphase") and "contiguous input" in desc
    assert _describe(wide, torch.float64).startswith("tiled")
    # C_in/groups not a multiple of 8: no channels-last kernel for 16-bit dtypes
    assert "channels-last" not in _describe(_TC_CASES[1], torch.bfloat16)


def test_describe_reads_shapes_only():
    """describe() (and so explain()) plans without an input: it allocates nothing of the
    input's size, yet names the kernel the forward launches."""
    wide = _GEMM_CASES[5]  # needs a channels-last copy of a contiguous input
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    desc = _describe(dict(wide, ins=(32, 32, 32)), torch.bfloat16)
    assert torch.cuda.max_memory_allocated() - before < 2**20
    assert desc.startswith("implicit-gemm") and "channels-last input" in desc


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("kernel", ["auto", "tensor-cores", CONTIGUOUS_TC, "mma", "tiled"],
                         ids=["auto", "tensor-cores", "tensor-cores-contiguous", "mma", "tiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_layouts(layout, kernel, dtype):
    """Channels-last and strided inputs give the same result on every path."""
    cfg = dict(_GEMM_CASES[2]) if kernel != "tiled" else dict(_TC_CASES[0])
    torch.manual_seed(3)
    x = torch.randn((cfg["n"], cfg["cin"]) + cfg["ins"], device=DEV).to(dtype)
    w = torch.randn((cfg["cin"], cfg["cout"] // cfg["groups"]) + cfg["k"], device=DEV).to(dtype)
    if layout == "channels_last":
        xin = x.contiguous(memory_format=torch.channels_last_3d)
    else:  # every other element along W of a twice-as-wide tensor
        wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), device=DEV, dtype=dtype)
        wide[..., ::2] = x
        xin = wide[..., ::2]
        assert not xin.is_contiguous()
    want = _forward(x, w, None, cfg, kernel=kernel)
    got = _forward(xin, w, None, cfg, kernel=kernel)
    assert got.is_contiguous()
    assert torch.equal(got, want)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_strided_weights_are_packed_in_place(dtype, fmt):
    """The weight's pack (gather or tensor-core pack) reads any strides: a channels-last or sliced
    weight gives the same result as its contiguous copy, on every weight layout the kernels read."""
    kernels = ("auto", "tiled") + (("tensor-cores",) if dtype != torch.float64 else ())
    for kernel in kernels:
        cfg = dict(_TC_CASES[0])
        torch.manual_seed(4)
        x = torch.randn((cfg["n"], cfg["cin"]) + cfg["ins"], device=DEV).to(dtype)
        big = torch.randn((cfg["cin"], 2 * cfg["cout"] // cfg["groups"]) + cfg["k"],
                          device=DEV).to(dtype).contiguous(memory_format=fmt)
        w = big[:, ::2]
        assert not w.is_contiguous()
        want = _forward(x, w.contiguous(), None, cfg, kernel=kernel)
        assert torch.equal(_forward(x, w, None, cfg, kernel=kernel), want)


_PACK_GEOMETRIES = [
    ((32, 8, 3, 5, 7), 4, (2, 2, 2), (1, 2, 3), (1, 1, 1)),     # the founding layer
    ((256, 128, 4, 4, 4), 1, (2, 2, 2), (1, 1, 1), (1, 1, 1)),  # shape 5: eight taps a thread
    ((20, 3, 3, 2, 5), 2, (2, 1, 3), (2, 0, 1), (1, 2, 1)),     # C_in/g 10: padded groups
    ((8, 2, 11, 11, 11), 1, (3, 2, 4), (5, 4, 3), (1, 1, 1)),   # 1331 taps: split tap runs
    ((16, 700, 1, 1, 2), 2, (1, 1, 2), (0, 0, 0), (1, 1, 1)),   # 2 taps: many column tiles
]


def _weights_to_pack(shape, dtype):
    """A weight with NaN and Inf, contiguous, sliced, channels-last, and channels-last one
    element off 16-byte alignment."""
    torch.manual_seed(5)
    big = torch.randn((shape[0], 2 * shape[1]) + shape[2:], device=DEV).to(dtype)
    big.view(-1)[::97] = float("nan")
    big.view(-1)[::89] = float("inf")
    cl = torch.channels_last_3d
    return (big[:, ::2].contiguous(), big[:, ::2], big[:, ::2].contiguous(memory_format=cl),
            big.contiguous(memory_format=cl)[:, 1:1 + shape[1]])


def _same_bits(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    bits = torch.int32 if got.dtype == torch.float32 else torch.int16
    assert torch.equal(got.view(bits), want.view(bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("geometry", _PACK_GEOMETRIES)
def test_tensor_core_weight_packed_from_its_tap_table(geometry, dtype):
    """The forward's tensor-core pack (csrc/phase_conv_pack.cu: pack_mma_kernel, from the
    layer's mma_taps) writes the bytes of the gather through its index map, NaN and
    Inf included, for contiguous and strided weights."""
    shape, groups, stride, padding, dilation = geometry
    cuda = _cuda()
    t = cuda.layer_tables(shape, groups, stride, padding, dilation, dtype, torch.device(DEV))
    cuda.wait_for_tables(t)
    index = cuda.forward_mma_index(shape, groups, stride, padding, dilation,
                                   16 // torch.empty((), dtype=dtype).element_size()).to(DEV)
    for w in _weights_to_pack(shape, dtype):
        _same_bits(cuda.load().pack_weight_mma(w, t.mma_taps, groups), cuda.gather(w, index))


@pytest.mark.parametrize("dtype, cg", [(torch.float32, 8), (torch.float32, 4),
                                       (torch.float16, 8), (torch.bfloat16, 8)])
@pytest.mark.parametrize("shape, groups", [
    ((32, 8, 3, 5, 7), 4),      # the founding layer's weight
    ((64, 16, 4, 4, 4), 1),     # two octets of output channels
    ((24, 8, 11, 11, 11), 3),   # 1331 taps: split tap runs
    ((700, 8, 1, 1, 2), 1),     # 2 taps: many column tiles
    ((256, 128, 4, 4, 4), 1),   # shape 5: a thread takes eight taps (kPackMinThreads)
])
def test_input_gradient_tensor_core_weight_pack(shape, groups, dtype, cg):
    """The input gradient's tensor-core layout, [groups][kD][kH][kW][C_out/g / cg][C_in/g][cg]
    (pack_weight_mma with over_outputs: octets of output channels for the narrow kernel, 32
    bytes in float32; quads for float32's implicit GEMM), is the gather through that layout's
    index map, bit for bit (a channels-last weight's aligned groups by vector loads, its
    unaligned ones element by element)."""
    cuda = _cuda()
    index = cuda.grad_input_mma_index(shape, groups, cg).to(DEV)
    for w in _weights_to_pack(shape, dtype):
        _same_bits(cuda.load().pack_weight_mma(w, None, groups, over_outputs=True, cg=cg),
                   cuda.gather(w, index))


def test_the_engine_launches_the_plan_computed_on_the_host():
    """The plan the engine launches is the host-built plan (tests/plan/test_plan.py) for this GPU's
    properties: forward, input gradient and weight gradient, over the sweep."""
    import plan_harness as ph

    from phaseconv.bench import SWEEP

    if ph.compiler() is None:
        pytest.skip("needs a C++ compiler")
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    optin = getattr(props, "shared_memory_per_block_optin", None)
    per_sm = getattr(props, "shared_memory_per_multiprocessor", None)
    if optin is None or per_sm is None:
        pytest.skip("this torch does not report the shared-memory properties")
    device = ph.Device(props.name, props.multi_processor_count, optin, per_sm,
                       int(_cuda().warpgroup_kernels()))
    cuda = _cuda()
    for shape in SWEEP:
        args = ph.sweep_args(shape)
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for channels_last in (False, True):
                assert cuda.describe(args, shape.batch, dtype, torch.device(DEV),
                                     channels_last) == \
                    ph.forward(args, shape.batch, dtype, device, channels_last).text
            gi, gw = cuda.describe_backward(args, shape.batch, dtype, torch.device(DEV))
            assert gi == ph.grad_input(args, shape.batch, dtype, device).text
            assert gw == ph.grad_weight(args, shape.batch, dtype, device).text


# The fix-up runs after its hot kernel as a programmatic dependent launch on sm_90 (its blocks
# start during the hot kernel's last wave and wait for it), and as a plain launch in a stream
# being captured: either way it must see every store of a hot kernel of several waves.  Only
# x holds non-finite values and the weight is finite, so zero padding meets finite values and
# float64 torch on the GPU is the reference.  (n, in, out, size, dtype, channels-last, k, p,
# op, groups): sweep shapes 4 and 3 (the 256-row TMA tile and the shared-A tile on sm_90a,
# else the mma.sync tiles), two waves and more; the founding layer (the all-phase kernel).
_FIXUP_LAYERS = [(1, 512, 256, (16, 16, 16), torch.bfloat16, True, 2, 0, 0, 1),
                 (2, 128, 64, (32, 32, 32), torch.bfloat16, True, 2, 0, 0, 1),
                 (8, 32, 32, (12, 24, 48), torch.bfloat16, False, (3, 5, 7), (1, 2, 3), 1, 4)]


@pytest.mark.parametrize("capture", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("layer", range(len(_FIXUP_LAYERS)))
def test_fixup_sees_every_store_of_a_hot_kernel_of_many_waves(layer, capture):
    n, cin, cout, size, dtype, cl, k, p, op, groups = _FIXUP_LAYERS[layer]
    gen = torch.Generator().manual_seed(layer)
    x = torch.randn((n, cin) + size, generator=gen).to(dtype)
    w = torch.randn((cin, cout // groups) + ((k,) * 3 if isinstance(k, int) else k),
                    generator=gen).to(dtype)
    # the last voxel's outputs are written by the last blocks, the first's by the first
    x.view(-1)[-1], x.view(-1)[0] = float("inf"), float("nan")
    ref = F.conv_transpose3d(x.to(DEV).double(), w.to(DEV).double(), None, 2, p, op, groups)
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    xd, wd = x.to(DEV).contiguous(memory_format=fmt), w.to(DEV)
    args = check_conv_transpose3d(xd, wd, None, (2, 2, 2), p, op, groups, (1, 1, 1))
    forward = lambda: _cuda().forward(xd, wd, None, args, out_channels_last=cl)  # noqa: E731
    y = forward()
    if capture:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = forward()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured.view(torch.int16), y.view(torch.int16))
        y = captured
    y = y.double()
    assert bool(torch.isnan(y[0, :, 0, 0, 0]).any()) and bool(torch.isinf(y).any())
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.equal(y[ref.isinf()], ref[ref.isinf()])
    finite = ref.isfinite()
    scale = max(1.0, float(ref[finite].abs().max()))
    assert float((y[finite] - ref[finite]).abs().max()) <= 2e-2 * scale
