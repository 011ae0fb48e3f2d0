"""The CUDA engine's kernel plan, on the CPU: which kernel family, tile and input layout a GPU
with recorded properties (H100, A100) launches for a layer, and what forcing a kernel by name
does.  The plan is csrc/phase_conv_plan.cpp itself, built with the host compiler
(tests/plan_harness.py); tests/gpu/test_cuda_engine.py checks on a GPU that the engine launches
the plan this computes."""
import math
import re

import plan_harness as ph
import pytest
import torch

from phaseconv.bench import SWEEP
from phaseconv.engines import cuda

pytestmark = pytest.mark.skipif(ph.compiler() is None, reason="needs a C++ compiler")

BF16, F32, F64 = torch.bfloat16, torch.float32, torch.float64
FOUNDING = ph.conv_args(32, 32, (3, 5, 7), (12, 24, 48), 2, (1, 2, 3), 1, 4, batch=8)
WIDE = ph.sweep_args(SWEEP[1])                              # 64 -> 32, 32^3, k3 s2
WIDER = ph.sweep_args(SWEEP[2])                             # 128 -> 64, 32^3, k2 s2
NARROW = ph.conv_args(2, 3, 3, 8, 2, 1, 1)                  # C_in/groups < 4
DEPTHWISE = ph.sweep_args(SWEEP[6])                         # 64 groups of one channel
MANY_PHASES = ph.conv_args(32, 32, 4, 8, 4)                 # 64 phases: past the all-phase table
PURE_GEMM = ph.conv_args(64, 64, 2, 16, 2)                  # k == s, no padding
HUGE_DILATION = ph.conv_args(8, 8, 3, 4, dilation=150)      # no tile's window fits
EMPTY = ph.conv_args(8, 8, 3, 4, 2, 1, 1, batch=0)
FEW_OUT = ph.conv_args(64, 8, 3, 24, 2, 1, 1, batch=2)      # 512 terms a phase, 8 out
TWO_OUT = ph.conv_args(32, 2, 3, 48, 2, 1, 1, batch=2)      # MONAI UNet's last up-convolution

# (layer, batch, dtype, x offered channels-last) -> (family, reads channels-last)
FORWARD_RULE = [
    ("founding fp32", FOUNDING, 8, F32, False, "allphase", False),
    ("founding fp32 channels-last", FOUNDING, 8, F32, True, "allphase", True),
    ("founding bf16", FOUNDING, 8, BF16, False, "allphase", False),
    ("founding fp64", FOUNDING, 8, F64, False, "tiled", False),
    ("wide bf16", WIDE, 2, BF16, False, "gemm", True),     # copies x channels-last
    ("wide fp32", WIDE, 2, F32, False, "gemm", True),      # 3xTF32 BN 32, copies x
    ("wider fp32", WIDER, 2, F32, False, "gemm", True),    # 3xTF32, copies x channels-last
    ("pure gemm bf16", PURE_GEMM, 1, BF16, False, "gemm", False),  # reads NCDHW in place
    ("many phases fp32", MANY_PHASES, 1, F32, False, "gemm", True),  # copies x
    ("few output channels fp32", FEW_OUT, 2, F32, False, "mma", False),  # flushed, per phase
    ("two output channels fp32", TWO_OUT, 2, F32, False, "allphase", False),  # one halo copy
    ("two output channels bf16", TWO_OUT, 2, BF16, False, "allphase", False),
    ("wide flushed, C_in/g 16, fp32", ph.conv_args(16, 32, (3, 5, 7), 12, 2, 1, 1), 1, F32,
     False, "tiled", False),                                # 16 x 24 taps a phase, no GEMM
    ("narrow fp32", NARROW, 1, F32, False, "tiled", False),
    ("depthwise bf16", DEPTHWISE, 4, BF16, False, "depthwise", False),
    ("depthwise fp64", DEPTHWISE, 4, F64, False, "depthwise", False),
    ("depthwise bf16 channels-last", DEPTHWISE, 4, BF16, True, "depthwise", False),
    ("huge dilation fp32", HUGE_DILATION, 1, F32, False, "naive", False),
    ("empty", EMPTY, 0, F32, False, "none", False),
]


@pytest.mark.parametrize("device", ph.DEVICES, ids=lambda d: d.name.split()[0])
@pytest.mark.parametrize("name, args, batch, dtype, offered, family, reads_cl", FORWARD_RULE,
                         ids=[c[0] for c in FORWARD_RULE])
def test_forward_rule_routes_every_family(device, name, args, batch, dtype, offered, family,
                                          reads_cl):
    plan = ph.forward(args, batch, dtype, device, channels_last=offered)
    assert plan.ok and plan.family == family, plan.text
    assert plan.channels_last == reads_cl, plan.text
    assert plan.text.startswith({"gemm": "implicit-gemm", "allphase": "mma-allphase",
                                 "mma": "mma kind", "tiled": "tiled", "naive": "naive",
                                 "depthwise": "depthwise", "none": "none"}[family])


@pytest.mark.parametrize("device", ph.DEVICES, ids=lambda d: d.name.split()[0])
def test_every_sweep_shape_has_a_plan(device):
    for shape in SWEEP:
        args = ph.sweep_args(shape)
        for dtype in (F32, BF16, torch.float16, F64):
            for offered in (False, True):
                plan = ph.forward(args, shape.batch, dtype, device, channels_last=offered)
                assert plan.ok and plan.family != "naive", (shape.name, dtype, plan.text)
            assert ph.grad_input(args, shape.batch, dtype, device).ok
            assert ph.grad_weight(args, shape.batch, dtype, device).ok


# (layer, dtype) -> (input-gradient family, weight-gradient family)
BACKWARD_RULE = [
    ("founding fp32", FOUNDING, F32, "tensor-cores-narrow",
     "tensor-cores-narrow"),                                 # 8 x 8 channels a group
    ("founding fp64", FOUNDING, F64, "naive", "simt"),
    ("founding bf16", FOUNDING, BF16, "tensor-cores-narrow",
     "tensor-cores-narrow"),                                 # 8 x 8 channels a group
    ("eight output channels fp16", ph.sweep_args(SWEEP[7]), torch.float16,
     "tensor-cores-narrow", "tensor-cores-narrow"),          # 16 -> 8
    ("sixteen channels bf16", ph.conv_args(16, 16, 3, 6, 2, 1, 1), BF16,
     "tensor-cores-narrow", "tensor-cores-cl"),              # grad_y 16 channels a group
    ("sixteen channels fp32", ph.conv_args(16, 16, 3, 6, 2, 1, 1), F32, "mma",
     "tensor-cores"),                                        # float32: per phase by the rule
    ("eight input channels bf16", ph.conv_args(8, 64, 3, 6, 2, 1, 1), BF16, "mma",
     "tensor-cores-narrow"),
    ("four channels a group bf16", ph.conv_args(8, 8, 3, 6, 2, 1, 1, 2), BF16, "mma",
     "simt"),                                                # not whole octets
    ("two output channels bf16", ph.conv_args(32, 2, 3, 6, 2, 1, 1, 1), BF16,
     "tensor-cores-narrow", "tensor-cores-narrow"),          # one zero-padded output octet
    ("two output channels fp32", ph.conv_args(32, 2, 3, 6, 2, 1, 1, 1), F32,
     "tensor-cores-narrow", "tensor-cores-narrow"),
    ("two input channels bf16", ph.conv_args(2, 32, 3, 6, 2, 1, 1, 1), BF16, "naive",
     "simt"),                                                # input octets whole only
    ("wide bf16", WIDE, BF16, "gemm", "tensor-cores-cl"),    # grad_y read channels-last
    ("wider fp16", WIDER, torch.float16, "gemm", "tensor-cores-cl"),
    ("wide fp32", WIDE, F32, "gemm", "tensor-cores"),     # grad-input 3xTF32
    ("channel tails bf16", ph.conv_args(40, 36, 3, 6, 2, 1, 1), BF16, "mma", "tensor-cores"),
    ("few output channels bf16", ph.conv_args(64, 16, 3, 6, 2, 1, 1), BF16, "gemm",
     "tensor-cores-cl"),                                    # grad-input reduction 16 x taps
    ("few input channels bf16", ph.conv_args(16, 64, 3, 6, 2, 1, 1), BF16, "mma",
     "tensor-cores-cl"),                                    # grad_x: C_in/g 16 < 32
    ("narrow fp32", NARROW, F32, "naive", "simt"),
    ("depthwise bf16", DEPTHWISE, BF16, "depthwise", "depthwise"),
    ("depthwise fp64", DEPTHWISE, F64, "depthwise", "depthwise"),
    ("depthwise huge dilation fp32", ph.conv_args(8, 8, 3, 4, dilation=150, groups=8), F32,
     "naive", "naive"),                                     # no grad_y box fits
    ("huge dilation fp32", HUGE_DILATION, F32, "naive", "naive"),
]


@pytest.mark.parametrize("device", ph.DEVICES, ids=lambda d: d.name.split()[0])
@pytest.mark.parametrize("name, args, dtype, gi, gw", BACKWARD_RULE,
                         ids=[c[0] for c in BACKWARD_RULE])
def test_backward_rule_routes_every_family(device, name, args, dtype, gi, gw):
    gi_plan = ph.grad_input(args, 2, dtype, device)
    assert gi_plan.family == gi
    # the binding copies grad_y channels-last for the input gradient of exactly these kernels
    assert gi_plan.channels_last == (gi in ("gemm", "tensor-cores-narrow")), gi_plan.text
    plan = ph.grad_weight(args, 2, dtype, device)
    assert plan.family == gw
    # the binding copies x and grad_y channels-last for exactly these kernels
    assert plan.channels_last == (gw in ("tensor-cores-cl", "tensor-cores-narrow")), plan.text


FORCED = [  # (kernel, layer, dtype): the kernel takes the layer
    ("gemm", WIDE, BF16), ("gemm", WIDE, F32), ("allphase", FOUNDING, F32), ("mma", FOUNDING, BF16),
    ("tiled", WIDE, BF16), ("naive", WIDE, F32), ("tensor-cores", FOUNDING, F32),
    ("depthwise", DEPTHWISE, F32), ("tiled", DEPTHWISE, BF16),
]


@pytest.mark.parametrize("kernel, args, dtype", FORCED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(FORCED)])
def test_a_forced_kernel_runs_by_name(kernel, args, dtype):
    plan = ph.forward(args, 2, dtype, ph.H100, kernel=kernel)
    want = "allphase" if kernel == "tensor-cores" else kernel
    assert plan.ok and plan.family == want, plan.text


REFUSED = [  # (kernel, layer, dtype, why): a forced kernel that cannot take the layer
    ("gemm", NARROW, BF16, "no tile of it takes this layer"),       # C_in/groups % 8
    ("gemm", NARROW, F32, "no tile of it takes this layer"),
    ("mma", HUGE_DILATION, F32, "no tile of it takes this layer"),
    ("allphase", MANY_PHASES, F32, "no tile of it takes this layer"),
    ("mma", FOUNDING, F64, "float64 has no tensor-core kernel"),
    ("tensor-cores", FOUNDING, F64, "float64 has no tensor-core kernel"),
    ("tiled", HUGE_DILATION, F32, "no tile of it fits shared memory"),
    ("depthwise", WIDE, F32, "the layer is not depthwise (C_in/groups and C_out/groups must "
     "be 1)"),
    ("depthwise", FOUNDING, BF16, "the layer is not depthwise (C_in/groups and C_out/groups "
     "must be 1)"),
]


@pytest.mark.parametrize("kernel, args, dtype, why", REFUSED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(REFUSED)])
def test_a_forced_kernel_that_cannot_run_is_refused(kernel, args, dtype, why):
    plan = ph.forward(args, 1, dtype, ph.H100, kernel=kernel)
    assert not plan.ok and plan.text.startswith("refused: the ") and plan.text.endswith(why)


@pytest.mark.parametrize("device", ph.DEVICES + (ph.H100_SM90A,),
                         ids=lambda d: d.name.split(",")[0].replace(" ", "-"))
def test_float32_implicit_gemm(device):
    """float32 on the implicit GEMM (3xTF32): the mma.sync tiles, one phase a block, x read
    channels-last, flushed where a phase sums over 256 terms; the warpgroup tiles refuse it.
    The rule takes it for C_in/g >= 32 (whole channel octets) and C_out/g >= 16 (sweep shapes
    2-6, measured), the narrowest of the BN 32, 64 and 128 tiles that covers C_out/g; other
    layers reach it only by name.  Its input gradient by the rule only for C_in/g >= 128 and
    C_out/g >= 64."""
    for shape in SWEEP:
        args = ph.sweep_args(shape)
        rule = ph.forward(args, shape.batch, F32, device)
        cin_g = shape.in_channels // shape.groups
        cout_g = shape.out_channels // shape.groups
        by_rule = cin_g % 8 == 0 and cin_g >= 32 and cout_g >= 16
        assert (rule.family == "gemm") == by_rule, rule.text
        if by_rule:
            assert rule.channels_last and "one-phase" in rule.text, rule.text
            kind = 0 if cout_g <= 32 else 1 if cout_g <= 64 else 2
            assert f"kind={kind} " in rule.text, rule.text
        # the input gradient (its reduction runs over C_out/g, its columns C_in/g)
        wide = cout_g % 8 == 0 and ((cin_g >= 128 and cout_g >= 64) or
                                    (cin_g >= 64 and cout_g >= 16))
        gi = ph.grad_input(args, shape.batch, F32, device)
        assert (gi.family == "gemm") == wide, gi.text
        assert not wide or " 3xTF32" in gi.text, gi.text
        for offered in (False, True):
            plan = ph.forward(args, shape.batch, F32, device, channels_last=offered,
                              kernel=cuda.ForwardKernel("gemm"))
            cin_g = shape.in_channels // shape.groups
            if cin_g % 8:
                assert not plan.ok, plan.text
                continue
            assert plan.ok and plan.family == "gemm" and plan.channels_last, plan.text
            assert "one-phase" in plan.text and " 3xTF32" in plan.text, plan.text
            assert "wgmma" not in plan.text, plan.text
            weight = (shape.in_channels, shape.out_channels // shape.groups) + shape.kernel
            taps = math.prod(cuda.host_tables(weight, shape.groups, shape.stride,
                                              shape.padding, 1, 4).max_taps)
            assert ("3xTF32 flushed" in plan.text) == (cin_g * taps > 256), plan.text
            # a k step: 32 float32 channels on the 8-warp tiles where C_in/g allows, else 16
            assert re.search(r"BK=(16|32) ", plan.text), plan.text
    for tile in (4, 5):
        plan = ph.forward(WIDER, 2, F32, device,
                          kernel=cuda.ForwardKernel("gemm", gemm_tile=tile))
        assert not plan.ok, plan.text


def test_forced_backward_kernels():
    for device in ph.DEVICES:
        assert ph.grad_input(WIDE, 2, F32, device, "naive").family == "naive"
        assert not ph.grad_input(FOUNDING, 2, F64, device, "tensor-cores").ok
        assert ph.grad_weight(WIDE, 2, F32, device, "simt").family == "simt"
        assert ph.grad_weight(WIDE, 2, F32, device, "naive").family == "naive"
        assert not ph.grad_weight(FOUNDING, 2, F64, device, "tensor-cores").ok
        assert not ph.grad_weight(HUGE_DILATION, 2, F32, device, "simt").ok
        # the 16-bit wide layers' channels-last kernels, and the older ones still by name
        assert ph.grad_input(WIDE, 2, BF16, device, "implicit-gemm").family == "gemm"
        assert ph.grad_input(FOUNDING, 2, BF16, device, "implicit-gemm").family == "gemm"
        assert ph.grad_input(WIDE, 2, BF16, device, "tensor-cores").family == "mma"
        assert ph.grad_weight(WIDER, 2, BF16, device, "tensor-cores").family == "tensor-cores"
        assert ph.grad_weight(WIDE, 2, BF16, device, "tensor-cores-cl").family == \
            "tensor-cores-cl"
        assert ph.grad_weight(FOUNDING, 2, BF16, device, "simt").family == "simt"
        assert ph.grad_weight(FOUNDING, 2, BF16, device, "tensor-cores-narrow").family == \
            "tensor-cores-narrow"
        # named on wider layers too (whole octets), where the rule takes the wide GEMMs
        assert ph.grad_weight(WIDE, 2, BF16, device, "tensor-cores-narrow").family == \
            "tensor-cores-narrow"
        assert ph.grad_weight(WIDE, 2, BF16, device).family != "tensor-cores-narrow"
        # fewer than 4 output channels a group (zero-padded; the forward: FORWARD_RULE's
        # TWO_OUT rows): both the narrow input and weight gradients (one zero-padded grad_y
        # octet); narrower inputs the SIMT forward and the naive input gradient, the
        # per-phase tensor-core kernel when named
        for dtype in (BF16, F32):
            assert ph.grad_input(TWO_OUT, 2, dtype, device).family == "tensor-cores-narrow"
            assert ph.grad_weight(TWO_OUT, 2, dtype, device).family == "tensor-cores-narrow"
            assert ph.grad_input(TWO_OUT, 2, dtype, device, "tensor-cores").family == "mma"
        assert not ph.grad_input(TWO_OUT, 2, F64, device, "tensor-cores").ok
        odd_in = ph.conv_args(12, 2, 3, (8, 8, 8), 2, 1, 1, 1, batch=2)  # 12: not whole octets
        assert ph.forward(odd_in, 2, BF16, device).family == "tiled"
        assert ph.grad_input(odd_in, 2, BF16, device).family == "naive"
        # float32's input gradient on the implicit GEMM (3xTF32) by the rule from 16 grad_y
        # and 64 grad_x channels a group, else only when named
        assert ph.grad_input(WIDE, 2, F32, device).family == "gemm"
        assert ph.grad_input(ph.conv_args(32, 32, 3, 8, 2, 1, 1), 2, F32, device).family \
            == "mma"
        gi = ph.grad_input(WIDE, 2, F32, device, "implicit-gemm")
        assert gi.family == "gemm" and gi.channels_last and " 3xTF32 flushed" in gi.text, \
            gi.text  # 32 channels x 27 taps
        assert "wgmma" not in gi.text and re.search(r"BK=(16|32) ", gi.text), gi.text
        # its tile: the narrowest that covers grad_x's channels, or narrower while the wider
        # one's blocks would fill fewer than half the multiprocessors (MONAI UNet's 128 -> 32
        # at 12^3: 27 row tiles, 128 grad_x channels on BN 32); sweep shapes 4-6 keep BN 128
        up3 = ph.conv_args(128, 32, 3, 12, 2, 1, 1, batch=2)
        bn = 128
        while bn > 32 and 2 * 27 * (128 // bn) < device.sms:
            bn //= 2
        assert bn < 128 and f"BM=128 BN={bn} " in ph.grad_input(up3, 2, F32, device).text
        assert "BN=128 " in ph.grad_input(up3, 2, F32, device, "implicit-gemm",
                                          tile=2).text
        assert "BN=128 " in ph.grad_input(up3, 2, BF16, device).text  # 16-bit: unchanged
        for shape in SWEEP[3:6]:
            wide_gi = ph.grad_input(ph.sweep_args(shape), shape.batch, F32, device)
            assert "BN=128 " in wide_gi.text, wide_gi.text
        for refused in (ph.grad_input(NARROW, 1, F32, device, "implicit-gemm"),
                        ph.grad_input(NARROW, 1, BF16, device, "implicit-gemm"),
                        ph.grad_weight(WIDE, 2, F32, device, "tensor-cores-cl"),
                        ph.grad_weight(FOUNDING, 2, BF16, device, "tensor-cores-cl"),
                        ph.grad_weight(FOUNDING, 2, F64, device, "tensor-cores-narrow"),
                        ph.grad_weight(ph.conv_args(12, 16, 3, 6, 2, 1, 1), 2, BF16, device,
                                       "tensor-cores-narrow")):
            assert not refused.ok and refused.text.startswith("refused: the "), refused.text


def test_named_tiles_of_the_input_gradient_gemm():
    """grad_input_tile names the input gradient's implicit-GEMM tile (benchmarks sweep them):
    each of the mma.sync kinds, the warpgroup and TMA kinds on an sm_90a build only, never
    the shared-A ones (the input gradient is one phase); a tile with another kernel, or out
    of range, is refused before the plan."""
    for device in (ph.H100, ph.H100_SM90A):
        rule = ph.grad_input(WIDER, 2, BF16, device)
        for tile in range(12):
            plan = ph.grad_input(WIDER, 2, BF16, device, "implicit-gemm", tile)
            runs = tile <= 3 or (tile in (4, 5, 8, 9, 10, 11) and device.wgmma)
            assert plan.ok == runs, (device.name, tile, plan.text)
            if runs:
                assert plan.family == "gemm" and f"kind={tile} " in plan.text, plan.text
                assert ("wgmma-sm90a" in plan.text) == (tile >= 4), plan.text
                if f"kind={tile} " in rule.text:
                    assert plan.text == rule.text
            else:
                assert plan.text.startswith("refused: the implicit-gemm kernel was forced and "
                                            "the named tile"), plan.text
    for kernel, tile in (("auto", 1), ("tensor-cores", 1), ("implicit-gemm", 12),
                         ("implicit-gemm", -1)):
        with pytest.raises(ValueError, match="grad_input_tile"):
            cuda.grad_input_code(kernel, tile)


def test_forced_variants_of_the_implicit_gemm():
    from phaseconv.engines.cuda import ForwardKernel

    base = ph.forward(WIDE, 2, BF16, ph.H100, kernel="gemm").text
    assert "w-phases-grouped" in base and "BK=32" in base
    one = ph.forward(WIDE, 2, BF16, ph.H100, kernel=ForwardKernel("gemm", gemm_one_phase=True))
    assert "one-phase" in one.text
    for tile, bn in ((0, 32), (1, 64), (2, 128), (3, 64)):
        plan = ph.forward(WIDE, 2, BF16, ph.H100, kernel=ForwardKernel("gemm", gemm_tile=tile))
        assert f"kind={tile} " in plan.text and f"BN={bn} " in plan.text
    wide = ph.forward(ph.sweep_args(SWEEP[4]), 1, BF16, ph.H100, kernel="gemm").text
    assert "BK=64" in wide
    k32 = ph.forward(ph.sweep_args(SWEEP[4]), 1, BF16, ph.H100,
                     kernel=ForwardKernel("gemm", gemm_k32=True)).text
    assert "BK=32" in k32
    contiguous = ph.forward(WIDE, 2, BF16, ph.H100, channels_last=True,
                            kernel=ForwardKernel(contiguous_input=True))
    assert not contiguous.channels_last and contiguous.family != "gemm"


def test_warpgroup_tile_of_the_implicit_gemm():
    """sm_90a builds on sm_90: the implicit GEMM takes the warpgroup (wgmma) tile for a
    channels-last input with C_in/groups a multiple of 64 and >= 512 reduction terms per
    phase (the input gradient: >= 1024); shorter reductions keep the mma.sync tiles, which
    stay nameable; the tile is refused where it cannot run (no sm_90a build, C_in/groups not
    a multiple of 64)."""
    from phaseconv.engines.cuda import ForwardKernel

    wgmma = ForwardKernel("gemm", gemm_tile=4)
    long_k = ph.sweep_args(SWEEP[4])   # 256->128, k4 s2: 2048 terms a phase
    short_k = ph.sweep_args(SWEEP[2])  # 128->64, k2 s2: 128
    plan = ph.forward(long_k, 16, BF16, ph.H100_SM90A, kernel=wgmma)
    assert plan.family == "gemm" and plan.channels_last
    assert "kind=4 " in plan.text and "threads=256" in plan.text and "wgmma-sm90a" in plan.text
    assert "BN=128 " in plan.text and "BK=64" in plan.text
    # (by the rule the forward takes the TMA tiles there: test_tma_tile_rule)
    assert "kind=11 " in ph.forward(long_k, 16, BF16, ph.H100_SM90A).text
    assert "wgmma" not in ph.forward(long_k, 16, BF16, ph.H100).text
    assert "wgmma" not in ph.forward(short_k, 2, BF16, ph.H100_SM90A, channels_last=True).text
    forced = ph.forward(short_k, 2, BF16, ph.H100_SM90A, channels_last=True, kernel=wgmma)
    assert forced.ok and "kind=4 " in forced.text and "BN=64 " in forced.text
    for tile in (0, 1, 2, 3):  # the mma.sync tiles (the sm_80 path) on the same device
        plan = ph.forward(long_k, 16, BF16, ph.H100_SM90A,
                          kernel=ForwardKernel("gemm", gemm_tile=tile))
        assert plan.ok and f"kind={tile} " in plan.text and "wgmma" not in plan.text
    odd_channels = ph.conv_args(96, 64, 3, 8, 2, 1, 1)  # C_in/groups 96: half a k step
    for device, args in ((ph.H100, long_k), (ph.A100, long_k), (ph.H100_SM90A, odd_channels)):
        refused = ph.forward(args, 2, BF16, device, channels_last=True, kernel=wgmma)
        assert not refused.ok and refused.text.startswith("refused: the "), refused.text
    # a contiguous input of a k == s layer is read in place, unless a channels-last copy
    # feeds the warpgroup tile (512 -> 256 k2: K 512; the named mma.sync tiles stay in place)
    pure_long = ph.sweep_args(SWEEP[3])
    copied = ph.forward(pure_long, 1, BF16, ph.H100_SM90A)
    assert copied.channels_last and "kind=11 " in copied.text, copied.text
    assert copied.text.endswith("(channels-last input, copied)"), copied.text
    assert ph.forward(pure_long, 1, BF16, ph.H100_SM90A, channels_last=True).text.endswith(
        "(channels-last input)")
    # a named 32-channel k step is the mma.sync tiles': the rule keeps them (in place) and
    # a named warpgroup tile is refused
    k32 = ForwardKernel("gemm", gemm_k32=True)
    for device, kernel in ((ph.H100, "auto"), (ph.H100_SM90A, ForwardKernel("gemm", gemm_tile=2)),
                           (ph.H100_SM90A, ForwardKernel(contiguous_input=True)),
                           (ph.H100_SM90A, k32)):
        in_place = ph.forward(pure_long, 1, BF16, device, kernel=kernel)
        assert in_place.ok and not in_place.channels_last, in_place.text
        assert "contiguous input" in in_place.text and "wgmma" not in in_place.text
    assert "BK=32" in ph.forward(pure_long, 1, BF16, ph.H100_SM90A, kernel=k32).text
    for tile in (4, 5):
        refused = ph.forward(long_k, 16, BF16, ph.H100_SM90A, channels_last=True,
                             kernel=k32._replace(gemm_tile=tile))
        assert not refused.ok and refused.text.startswith("refused: the "), refused.text
    assert not ph.forward(ph.sweep_args(SWEEP[2]), 2, BF16, ph.H100_SM90A).channels_last
    # four warpgroups (256 rows, 512 threads), one phase a block, 4 stages of 48 KB, by
    # name (the rule's TMA tiles take the forward where it ran: test_tma_tile_rule); refused
    # without an sm_90a build and where C_out/groups <= 32 (every thread copies B)
    four = ForwardKernel("gemm", gemm_tile=5)
    plan = ph.forward(long_k, 16, BF16, ph.H100_SM90A, channels_last=True, kernel=four)
    assert plan.ok and "kind=5 BM=256 BN=128 BK=64 threads=512 stages=4 " in plan.text
    sixty_four = ph.sweep_args(SWEEP[5])  # 128 -> 64, k(3, 4, 4), s(1, 2, 2)
    for out_cl in (False, True):
        named = ph.forward(sixty_four, 2, BF16, ph.H100_SM90A, out_channels_last=out_cl,
                           kernel=four)
        assert "kind=5 BM=256 BN=64 " in named.text, named.text
        assert "kind=4 " in ph.forward(sixty_four, 2, BF16, ph.H100_SM90A, out_channels_last=out_cl,
                                       kernel=ForwardKernel("gemm", gemm_tile=4)).text
        sm80 = ph.forward(sixty_four, 2, BF16, ph.H100, out_channels_last=out_cl)
        assert "wgmma" not in sm80.text, sm80.text
    # (a k == s layer with a channels-last result takes the shared-A tile instead)
    assert "kind=7 " in ph.forward(short_k, 2, BF16, ph.H100_SM90A, channels_last=True,
                                   out_channels_last=True).text
    assert "one-phase" in plan.text and "wgmma-sm90a" in plan.text
    assert f"smem={4 * 48 * 1024 + 256 * 32 + 32 * 24 + 1024} " in plan.text
    narrow_out = ph.conv_args(64, 32, 3, 8, 2, 1, 1)
    for device, args in ((ph.H100, long_k), (ph.H100_SM90A, narrow_out)):
        refused = ph.forward(args, 2, BF16, device, channels_last=True, kernel=four)
        assert not refused.ok and refused.text.startswith("refused: the "), refused.text
    # the TMA tile (kind 8): a box of 128 output voxels of one phase (256->128 k4 s2 at 8^3:
    # phases of 8^3, boxes of 2 x 8 x 8), a producer warp and 4 stages; refused without an
    # sm_90a build, for float32 and where C_in/groups is not whole 32-channel steps
    tma = ForwardKernel("gemm", gemm_tile=8)
    for out_cl in (False, True):
        boxes = ph.forward(long_k, 16, BF16, ph.H100_SM90A, channels_last=True, kernel=tma,
                           out_channels_last=out_cl)
        assert boxes.ok and "kind=8 BM=128 BN=128 BK=64 threads=288 stages=4 " in boxes.text
        assert "one-phase tma-box wgmma-sm90a" in boxes.text, boxes.text
        assert f"m_tiles={16 * 4} " in boxes.text, boxes.text  # 16 samples x 4 boxes
        assert f"smem={1024 + 4 * (16384 + 16384) + 64 + 128 * 24} " in boxes.text
    # its 32-column tile keeps three stages (three blocks a multiprocessor): sweep shape 2,
    # 64 -> 32
    narrow = ph.forward(ph.sweep_args(SWEEP[1]), 2, BF16, ph.H100_SM90A, channels_last=True,
                        kernel=tma, out_channels_last=True)
    assert narrow.ok and "kind=8 BM=128 BN=32 BK=64 threads=288 stages=3 " in narrow.text
    assert f"smem={1024 + 3 * (16384 + 4096) + 48 + 128 * 24} " in narrow.text, narrow.text
    # C_in/groups 96 (three 32-channel steps a tap): 32-channel k steps in 64-byte rows,
    # twice the stages (each half as large)
    k32 = ph.forward(odd_channels, 2, BF16, ph.H100_SM90A, channels_last=True, kernel=tma,
                     out_channels_last=True)
    assert k32.ok and "kind=8 BM=128 BN=64 BK=32 threads=288 stages=8 " in k32.text, k32.text
    assert f"smem={1024 + 8 * (8192 + 4096) + 128 + 128 * 24} " in k32.text, k32.text
    quarter = ph.conv_args(40, 64, 3, 8, 2, 1, 1)  # C_in/groups 40: not whole 32-channel steps
    for args, dtype, device in ((long_k, BF16, ph.H100), (long_k, F32, ph.H100_SM90A),
                                (quarter, BF16, ph.H100_SM90A)):
        refused = ph.forward(args, 2, dtype, device, channels_last=True, kernel=tma)
        assert not refused.ok and refused.text.startswith("refused: the "), refused.text
    # 256 rows (kind 9: 128 a consumer warpgroup) for C_out/groups > 64: boxes of 4 x 8 x 8
    tma256 = ForwardKernel("gemm", gemm_tile=9)
    boxes = ph.forward(long_k, 16, BF16, ph.H100_SM90A, channels_last=True, kernel=tma256)
    assert boxes.ok and "kind=9 BM=256 BN=128 BK=64 threads=288 stages=4 " in boxes.text
    assert f"m_tiles={16 * 2} " in boxes.text, boxes.text
    assert f"smem={1024 + 4 * (32768 + 16384) + 64 + 256 * 24} " in boxes.text, boxes.text
    refused = ph.forward(ph.conv_args(96, 128, 3, 8, 2, 1, 1), 2, BF16, ph.H100_SM90A,
                         channels_last=True, kernel=tma256)  # 32-channel k steps: 128 rows
    assert not refused.ok, refused.text
    refused = ph.forward(ph.sweep_args(SWEEP[5]), 2, BF16, ph.H100_SM90A, channels_last=True,
                         kernel=tma256)  # 64 output channels
    assert not refused.ok and refused.text.startswith("refused: the "), refused.text
    grad_input = ph.grad_input(long_k, 16, BF16, ph.H100_SM90A, "implicit-gemm", tile=4)
    assert grad_input.ok and "kind=4 " in grad_input.text and "wgmma-sm90a" in grad_input.text
    assert "kind=8 " in ph.grad_input(long_k, 16, BF16, ph.H100_SM90A).text  # the TMA rule
    # the input gradient takes it from 1024 terms (shape 3's is 64 x 8 taps = 512), and
    # its TMA tile from 512 (test_tma_tile_rule)
    assert "kind=2 " in ph.grad_input(short_k, 2, BF16, ph.H100_SM90A, "implicit-gemm",
                                      tile=2).text
    assert "kind=10 " in ph.grad_input(short_k, 2, BF16, ph.H100_SM90A, "implicit-gemm").text



def test_tma_ping_pong_tile():
    """Kind 10, named only: kind 8's 128-row tiles ping-ponged between two consumer
    warpgroups of persistent blocks (one a multiprocessor): 384 threads, the ring's stages by
    the columns and the k step, each consumer's output staging and row tables in shared
    memory, forward and input gradient; never where kind 8 cannot run."""
    from phaseconv.engines.cuda import ForwardKernel

    named = ForwardKernel("gemm", gemm_tile=10)
    # (layer, BN, BK, stages, shared memory): the ring, its barriers, 2 x (row tables and
    # 16-bit output staging), 1 KB of alignment slack
    for args, bn, bk, stages in ((ph.sweep_args(SWEEP[3]), 128, 64, 4),
                                 (ph.sweep_args(SWEEP[2]), 64, 64, 6),
                                 (ph.conv_args(96, 128, 3, 8, 2, 1, 1), 128, 32, 8),
                                 (ph.sweep_args(SWEEP[1]), 32, 64, 6)):
        for out_cl in (False, True):
            plan = ph.forward(args, 1, BF16, ph.H100_SM90A, channels_last=True,
                              out_channels_last=out_cl, kernel=named)
            smem = 1024 + stages * bk * 2 * (128 + bn) + stages * 16 + 2 * 128 * 24 + \
                2 * 128 * bn * 2
            assert plan.ok and (f"kind=10 BM=128 BN={bn} BK={bk} threads=384 stages={stages} "
                                in plan.text), plan.text
            assert f" smem={smem} " in plan.text and "tma-box ping-pong wgmma-sm90a" in plan.text
            kind8 = ph.forward(args, 1, BF16, ph.H100_SM90A, channels_last=True,
                               out_channels_last=out_cl, kernel=ForwardKernel("gemm", gemm_tile=8))
            tiles = int(kind8.text.split(" grid=")[1].split()[0])
            assert f" grid={min(tiles, 132)} " in plan.text, plan.text
        for device in (ph.H100, ph.A100):
            assert not ph.forward(args, 1, BF16, device, channels_last=True, kernel=named).ok
        assert not ph.forward(args, 1, F32, ph.H100_SM90A, channels_last=True,
                              kernel=named).ok
    gi = ph.grad_input(ph.sweep_args(SWEEP[3]), 1, BF16, ph.H100_SM90A, "implicit-gemm", tile=10)
    assert gi.ok and "kind=10 BM=128 BN=128 " in gi.text and "tma-box ping-pong" in gi.text, \
        gi.text


def test_tma_persistent_tile():
    """Kind 11, named only: kind 9's 256-row tiles walked by persistent blocks (one a
    multiprocessor) of a producer warpgroup and two consumer warpgroups: 384 threads, three
    stages, the output staged apart; BN 128 and 64-channel k steps only, as kind 9."""
    from phaseconv.engines.cuda import ForwardKernel

    named = ForwardKernel("gemm", gemm_tile=11)
    args = ph.sweep_args(SWEEP[3])
    plan = ph.forward(args, 1, BF16, ph.H100_SM90A, channels_last=True, out_channels_last=True,
                      kernel=named)
    smem = 1024 + 3 * 128 * (256 + 128) + 3 * 16 + 256 * 24 + 256 * 128 * 2
    assert plan.ok and "kind=11 BM=256 BN=128 BK=64 threads=384 stages=3 " in plan.text, \
        plan.text
    assert f" smem={smem} " in plan.text and "tma-box persistent wgmma-sm90a" in plan.text
    kind9 = ph.forward(args, 1, BF16, ph.H100_SM90A, channels_last=True, out_channels_last=True,
                       kernel=ForwardKernel("gemm", gemm_tile=9))
    tiles = int(kind9.text.split(" grid=")[1].split()[0])
    assert f" grid={min(tiles, 132)} " in plan.text, plan.text
    # where kind 9 refuses: C_out/groups <= 64, 32-channel k steps; no sm_90a build
    for refused in (ph.forward(ph.sweep_args(SWEEP[2]), 2, BF16, ph.H100_SM90A,
                               channels_last=True, kernel=named),
                    ph.forward(ph.conv_args(96, 128, 3, 8, 2, 1, 1), 2, BF16, ph.H100_SM90A,
                               channels_last=True, kernel=named),
                    ph.forward(args, 1, BF16, ph.H100, channels_last=True, kernel=named)):
        assert not refused.ok, refused.text
    gi = ph.grad_input(args, 1, BF16, ph.H100_SM90A, "implicit-gemm", tile=11)
    assert gi.ok and "kind=11 BM=256 " in gi.text and "tma-box persistent" in gi.text, gi.text


def test_tma_tile_rule():
    """sm_90a builds on sm_90: the rule takes the TMA tiles (256 rows for C_out/groups > 64
    where they fill a wave of the multiprocessors: kind 9 for a channels-last result, the
    persistent kind 11 for an (N, C, D, H, W) one; else kind 8) where the warpgroup tiles
    would run, in the forward and the input gradient, and where the forward's result is
    channels-last or comes from 256 terms a phase with C_out/groups >= 32 (128 with
    C_out/groups 32; C_in/groups a multiple of 64); k == s layers with a channels-last result
    keep the shared-A tile, an sm_80 path (no sm_90a build, an A100) the mma.sync tiles, and
    a named tile wins over the rule.  The input gradient's 128-column tile in 64-channel k
    steps runs ping-ponged (kind 10) from two waves of tiles."""
    from phaseconv.engines.cuda import ForwardKernel

    forms = {8: "tma-box wgmma-sm90a", 9: "tma-box wgmma-sm90a",
             10: "tma-box ping-pong wgmma-sm90a", 11: "tma-box persistent wgmma-sm90a"}
    for index, out_cl, kind in ((4, False, 11), (4, True, 9), (3, False, 11), (3, True, 9),
                                (5, False, 8), (5, True, 8), (1, True, 8), (1, False, 8),
                                (2, True, 7)):
        shape = SWEEP[index]
        plan = ph.forward(ph.sweep_args(shape), shape.batch, BF16, ph.H100_SM90A,
                          channels_last=True, out_channels_last=out_cl)
        assert plan.family == "gemm" and f"kind={kind} " in plan.text, (index, plan.text)
        if kind >= 8:
            assert forms[kind] in plan.text, plan.text
            bn = min(128, max(32, shape.out_channels))
            assert f"BM={256 if kind in (9, 11) else 128} BN={bn} " in plan.text, plan.text
        for device in (ph.H100, ph.A100):
            other = ph.forward(ph.sweep_args(shape), shape.batch, BF16, device,
                               channels_last=True, out_channels_last=out_cl)
            assert "tma" not in other.text and "wgmma" not in other.text, other.text
        named = ph.forward(ph.sweep_args(shape), shape.batch, BF16, ph.H100_SM90A,
                           channels_last=True, out_channels_last=out_cl,
                           kernel=ForwardKernel("gemm", gemm_tile=1))
        assert "kind=1 " in named.text and "tma" not in named.text, named.text
    # an (N, C, D, H, W) result from 256 terms a phase with C_out/groups >= 32 (MONAI UNet's
    # 128 -> 32 at 12^3: 432 terms), from 128 with C_out/groups 32 (shape 2: 216 terms);
    # 64 -> 48 (216 terms, 48 channels), 64 -> 16 and 96 -> 32 do not
    for cin, cout, size, taken in ((128, 32, 12, True), (64, 32, 32, True),
                                   (64, 48, 16, False), (64, 16, 24, False),
                                   (96, 32, 12, False)):
        layer = ph.conv_args(cin, cout, 3, size, 2, 1, 1, batch=2)
        for channels_last in (False, True):
            plan = ph.forward(layer, 2, BF16, ph.H100_SM90A, channels_last=channels_last)
            assert ("kind=8 " in plan.text and "tma-box" in plan.text) == taken, plan.text
            assert "tma" not in ph.forward(layer, 2, BF16, ph.H100, channels_last).text
    # shape 2's channels-last result: the box of 128 voxels over phases of 32^3
    two = ph.forward(ph.sweep_args(SWEEP[1]), 2, BF16, ph.H100_SM90A, out_channels_last=True)
    assert "BN=32 " in two.text and two.text.endswith("channels-last output"), two.text
    # float32 never takes it; a forward with C_in/groups an odd multiple of 32 in 32-channel
    # k steps, for a channels-last result from 96 channels a group
    for plan in (ph.forward(ph.sweep_args(SWEEP[4]), 16, F32, ph.H100_SM90A),
                 ph.grad_input(ph.sweep_args(SWEEP[4]), 16, F32, ph.H100_SM90A),
                 ph.forward(ph.conv_args(96, 128, 3, 8, 2, 1, 1), 2, BF16, ph.H100_SM90A,
                            channels_last=True),
                 ph.forward(ph.conv_args(32, 64, 3, 32, 2, 1, 1), 2, BF16, ph.H100_SM90A,
                            channels_last=True, out_channels_last=True)):
        assert "tma" not in plan.text, plan.text
    for cin, groups in ((96, 1), (320, 2)):
        plan = ph.forward(ph.conv_args(cin, 128, 3, 8, 2, 1, 1, groups=groups), 2, BF16,
                          ph.H100_SM90A, channels_last=True, out_channels_last=True)
        assert "kind=8 BM=128 " in plan.text and " BK=32 " in plan.text, plan.text
    # the input gradient (grad_y's boxes at the layer's stride) on 128 rows from 512 terms
    # (shape 5's 8192, shape 4's 2048, shape 3's 512, shape 2's 864 in 32-channel k steps:
    # its grad_y has 32 channels)
    # (shape 3's 512 tiles of 128 columns are two waves and more: ping-ponged)
    for index, kind, bk in ((4, 8, 64), (3, 8, 64), (2, 10, 64), (5, 8, 64), (1, 8, 32)):
        shape = SWEEP[index]
        gi = ph.grad_input(ph.sweep_args(shape), shape.batch, BF16, ph.H100_SM90A)
        assert f"kind={kind} " in gi.text and forms[kind] in gi.text, gi.text
        assert f" BK={bk} " in gi.text, gi.text
        assert "tma" not in ph.grad_input(ph.sweep_args(shape), shape.batch, BF16, ph.H100).text
    # one wave of those tiles (shape 3 at batch 1: 256 tiles, 132 multiprocessors) stays on
    # kind 8, and 32-channel k steps (shape 2) too at any batch
    one_wave = ph.grad_input(ph.sweep_args(SWEEP[2]), 1, BF16, ph.H100_SM90A)
    assert "kind=8 BM=128 BN=128 BK=64 " in one_wave.text, one_wave.text
    assert "kind=8 " in ph.grad_input(ph.sweep_args(SWEEP[1]), 8, BF16, ph.H100_SM90A).text
    # 256-row tiles that would fill less than one wave (132 multiprocessors) take 128 rows:
    # 4 x 192->96 8^3 k3 (64 blocks of 256 rows) and 2 x 256->128 4^3 k4 (16, each box
    # padded); 2 x 128->128 16^3 k3 (256 blocks) keeps 256
    for layer, batch, blocks in ((ph.conv_args(192, 96, 3, 8, 2, 1, 1, batch=4), 4, 64),
                                 (ph.conv_args(256, 128, 4, 4, 2, 1, 0, batch=2), 2, 16),
                                 (ph.conv_args(128, 128, 3, 16, 2, 1, 1, batch=2), 2, 256)):
        rows256 = ph.forward(layer, batch, BF16, ph.H100_SM90A, channels_last=True,
                             kernel=ForwardKernel("gemm", gemm_tile=9))
        assert rows256.ok and f" grid={blocks} " in rows256.text, rows256.text
        for channels_last in (False, True):
            plan = ph.forward(layer, batch, BF16, ph.H100_SM90A, channels_last=channels_last,
                              out_channels_last=channels_last)
            kind = (9 if channels_last else 11) if blocks >= 132 else 8
            assert f"kind={kind} BM={128 if kind == 8 else 256} BN=128 " in plan.text, \
                plan.text
    # where the persistent tiles do not fit shared memory, the rule keeps kinds 8 and 9
    # (kind 9's 4 stages of 256 + 128 rows: 203840 bytes; kind 11's 3 with its staged
    # output: 220208; kind 10's two consumers: 203840 against kind 8's 135232)
    small = ph.H100_SM90A._replace(smem_optin=210000)
    four = ph.forward(ph.sweep_args(SWEEP[3]), 1, BF16, small, channels_last=True)
    assert "kind=9 BM=256 " in four.text, four.text
    three = ph.grad_input(ph.sweep_args(SWEEP[2]), 2, BF16, ph.H100_SM90A._replace(
        smem_optin=200000))
    assert "kind=8 BM=128 BN=128 " in three.text, three.text
    named = ph.grad_input(ph.sweep_args(SWEEP[2]), 2, BF16, ph.H100_SM90A, "implicit-gemm",
                          tile=8)
    assert named.ok and "kind=8 BM=128 BN=128 " in named.text, named.text
    # strides past 8 (grad_y's boxes step at most 8 voxels) refuse it
    wide_stride = ph.conv_args(64, 64, 9, 4, 9, 0, 0)
    for tile in (8, 9):
        refused = ph.grad_input(wide_stride, 1, BF16, ph.H100_SM90A, "implicit-gemm", tile=tile)
        assert not refused.ok, refused.text
    assert ph.grad_input(wide_stride, 1, BF16, ph.H100_SM90A, "implicit-gemm", tile=4).ok


def test_weight_gradient_on_tma_boxes():
    """The warpgroup weight gradient's TMA form (sm_90a builds): its tile and
    splits are the warpgroup kernel's, a chunk of the reduction a box of 64 phase outputs
    that pads the fewest over the largest phase (grad_y's box, the stride times it, at most
    256 a side); refused where the warpgroup form is, and for strides past 8."""
    sm = ph.H100_SM90A
    for index in (2, 3, 4, 5):
        shape = SWEEP[index]
        args = ph.sweep_args(shape)
        plan = ph.grad_weight(args, shape.batch, BF16, sm, "tensor-cores-tma")
        wgmma = ph.grad_weight(args, shape.batch, BF16, sm, "tensor-cores-wgmma")
        box = tuple(int(v) for v in re.search(r"tma-box \((\d+),(\d+),(\d+)\)",
                                               plan.text).groups())
        extents = [-(-o // st) for o, st in zip(args.out_shape, args.stride)]
        padded = math.prod(-(-e // b) * b for e, b in zip(extents, box))
        assert math.prod(box) == 64 and padded == min(
            math.prod(-(-e // b) * b for e, b in zip(extents, (64 // (h * w), h, w)))
            for w in (64, 32, 16, 8, 4, 2, 1) for h in (1, 2, 4, 8, 16, 32, 64) if h * w <= 64)
        assert all(b * st <= 256 for b, st in zip(box, args.stride))
        tile = re.search(r"\d+x\d+ channel tile", wgmma.text).group(0)
        splits = re.search(r"\d+ split\(s\)", wgmma.text).group(0)
        assert tile in plan.text and splits in plan.text, (plan.text, wgmma.text)
    for device, dtype, args in ((ph.H100, BF16, ph.sweep_args(SWEEP[3])),
                                (sm, F32, ph.sweep_args(SWEEP[3])),
                                (sm, BF16, NARROW),
                                (sm, BF16, ph.conv_args(64, 64, 9, 4, 9, 0, 0))):
        refused = ph.grad_weight(args, 2, dtype, device, "tensor-cores-tma")
        assert not refused.ok and refused.text.startswith("refused: the "), refused.text
    # the rule takes it where the warpgroup form runs and the boxes pad the reduction's rows,
    # every (phase, tap) pair counted, by 5% or less; else the warpgroup form (MONAI UNet's
    # 6^3 phases: 64-output boxes pad 216 outputs a phase to 384 or more)
    unet = ph.conv_args(384, 64, 3, 6, 2, 1, 1, batch=2)

    def cdiv(a, b):
        return -(-a // b)

    def rows(args, box):
        """(padded, useful) reduction rows over (phase, tap) pairs, axis by axis."""
        padded = useful = 1
        for o, st, k, p, d, b in zip(args.out_shape, args.stride, args.kernel, args.padding,
                                     args.dilation, box):
            taps = [sum((r + p - t * d) % st == 0 for t in range(k)) for r in range(min(st, o))]
            padded *= sum(n * cdiv(cdiv(o - r, st), b) * b for r, n in enumerate(taps))
            useful *= sum(n * cdiv(o - r, st) for r, n in enumerate(taps))
        return padded, useful

    taken = []
    for args, batch in [(ph.sweep_args(shape), shape.batch) for shape in SWEEP] + [(unet, 2)]:
        auto = ph.grad_weight(args, batch, BF16, sm)
        named = ph.grad_weight(args, batch, BF16, sm, "tensor-cores-tma")
        if not named.ok:
            assert "tma" not in auto.text, auto.text
            continue
        box = [int(v) for v in re.search(r"tma-box \((\d+),(\d+),(\d+)\)",
                                          named.text).groups()]
        padded, useful = rows(args, box)
        by_rule = 20 * padded <= 21 * useful
        assert ("tma-box" in auto.text) == by_rule, (auto.text, padded, useful)
        assert by_rule or "wgmma-sm90a" in auto.text, auto.text
        taken.append(by_rule)
    assert taken[-1] is False and taken.count(True) >= 4, taken


def test_weight_gradient_splits_added_in_a_cluster():
    """The TMA weight gradient with 2 to 8 splits adds them in one cluster of that many blocks
    where its grid is at most a block a multiprocessor, and one split stores its own sums at any
    grid (no workspace, no reduction kernel); more splits than a portable cluster holds, or a
    larger grid, keep the workspace and the reduction."""
    sm = ph.H100_SM90A
    seen = set()
    lone_over_a_wave = False
    layers = [(ph.sweep_args(shape), shape.batch) for shape in SWEEP[1:6]]
    layers += [(ph.conv_args(128, 128, 2, 8, 2, batch=1), 1),
               (ph.conv_args(128, 64, 2, 8, 2, batch=2), 2),
               (ph.conv_args(64, 32, 3, 32, 2, 1, 1, batch=2), 2),
               (ph.conv_args(512, 256, 3, 4, 2, 1, 1, batch=1), 1)]
    for args, batch in layers:
        plan = ph.grad_weight(args, batch, BF16, sm, "tensor-cores-tma")
        assert plan.ok and plan.splits >= 1, plan.text
        packed = args.in_channels * (args.out_channels // args.groups) * math.prod(args.kernel)
        blocks = int(re.search(r"(\d+) blocks", plan.text).group(1))
        clustered = plan.splits == 1 or (plan.splits <= 8 and blocks <= sm.sms)
        if not clustered:
            assert "cluster" not in plan.text and "stored" not in plan.text, plan.text
        elif plan.splits >= 2:
            assert f"{plan.splits} split(s) added in a cluster" in plan.text, plan.text
        else:
            assert "1 split(s) stored by the kernel" in plan.text, plan.text
        assert plan.workspace == (0 if clustered else plan.splits * packed * 4)
        seen.add((clustered, min(plan.splits, 3)))
        lone_over_a_wave |= plan.splits == 1 and blocks > sm.sms
        # the warpgroup kernel's splits are the same, always through the workspace
        wgmma = ph.grad_weight(args, batch, BF16, sm, "tensor-cores-wgmma")
        assert "cluster" not in wgmma.text and wgmma.workspace == wgmma.splits * packed * 4
    # a lone split (also over 512 blocks), 2 and 4 in a cluster; 4 splits over a grid of 384
    # blocks and 19-24 splits through the workspace
    assert seen == {(True, 1), (True, 2), (True, 3), (False, 3)} and lone_over_a_wave, seen


def test_shared_a_tile_of_the_implicit_gemm():
    """k == s layers with no padding (every phase reads the same input voxel at one tap) take
    the implicit GEMM's shared-A tile where the input and the result are channels-last and
    C_in/groups is a multiple of 64, up to 256 by the rule: on wgmma (kind 7) where the
    warpgroup kernels run (an sm_90a build on sm_90) and it keeps mma.sync's blocks a
    multiprocessor, else on mma.sync (kind 6, which stays nameable there: the sm_80 path).
    Named, it is refused wherever the phases do not share A, the channels are not whole
    64-channel k steps and 8-channel stores, A does not fit, or (kind 7) there is no sm_90a
    build."""
    from phaseconv.engines.cuda import ForwardKernel

    shared, shared_wg = ForwardKernel("gemm", gemm_tile=6), ForwardKernel("gemm", gemm_tile=7)
    pure = ph.sweep_args(SWEEP[2])  # 128 -> 64, k2 s2, 2 x 32^3: 65536 rows, 8 phases
    smem = 128 * 128 * 2 + 4 * 64 * 64 * 2 + 128 * 64 * 2 + 128 * 8
    for device in ph.DEVICES + (ph.H100_SM90A,):
        kind = 7 if device.wgmma else 6
        plan = ph.forward(pure, 2, BF16, device, channels_last=True, out_channels_last=True)
        assert plan.ok and plan.family == "gemm" and plan.channels_last, plan.text
        assert (f"kind={kind} BM=128 BN=64 BK=64 threads=256 stages=4 m_tiles=512 "
                f"smem={smem + (1024 if kind == 7 else 0)} grid=512 phases-share-a") \
            in plan.text, plan.text
        assert ("wgmma-sm90a" in plan.text) == (kind == 7), plan.text
        # a contiguous result, float32, a named tile or one phase a block: not this tile
        for other in (ph.forward(pure, 2, BF16, device, channels_last=True),
                      ph.forward(pure, 2, F32, device, channels_last=True,
                                 out_channels_last=True),
                      ph.forward(pure, 2, BF16, device, channels_last=True,
                                 out_channels_last=True, kernel=ForwardKernel("gemm", gemm_tile=1)),
                      ph.forward(pure, 2, BF16, device, channels_last=True,
                                 out_channels_last=True,
                                 kernel=ForwardKernel("gemm", gemm_one_phase=True))):
            assert other.ok and "phases-share-a" not in other.text, other.text
        # a contiguous input with a channels-last result is copied for it
        copied = ph.forward(pure, 2, BF16, device, out_channels_last=True)
        assert f"kind={kind} " in copied.text and copied.text.endswith(
            "(channels-last input, copied), channels-last output"), copied.text
        # the mma.sync tile by name everywhere; the wgmma one only on sm_90a builds
        named = ph.forward(pure, 2, BF16, device, channels_last=True, out_channels_last=True,
                           kernel=shared)
        assert "kind=6 " in named.text and "wgmma" not in named.text, named.text
        named_wg = ph.forward(pure, 2, BF16, device, channels_last=True,
                              out_channels_last=True, kernel=shared_wg)
        assert named_wg.ok == bool(device.wgmma), named_wg.text
    # few rows: the (phase, 64-column) chunks split over blocks to fill the device
    small = ph.conv_args(64, 128, 2, (4, 4, 8), 2)  # 128 rows, 8 phases x 2 column blocks
    plan = ph.forward(small, 1, BF16, ph.H100, channels_last=True, out_channels_last=True)
    assert "kind=6 " in plan.text and "m_tiles=1 " in plan.text and "grid=16 " in plan.text, \
        plan.text
    # 8192 rows: 64 row tiles, 4 splits of 2 chunks each (the GPU tests' and sanitizer's case)
    for device in ph.DEVICES:
        plan = ph.forward(ph.conv_args(128, 64, 2, 16, 2, batch=2), 2, BF16, device,
                          channels_last=True, out_channels_last=True)
        assert "kind=6 " in plan.text and "m_tiles=64 " in plan.text and "grid=256 " in \
            plan.text, plan.text
    assert "kind=6 " in ph.forward(ph.conv_args(128, 64, (1, 2, 3), 5, (1, 2, 3)), 2, BF16,
                                   ph.H100, channels_last=True, out_channels_last=True).text
    # wgmma where it keeps mma.sync's two blocks a multiprocessor: at 256 channels a group its
    # slabs' 1 KB alignment leaves one (2 x (113 KB + 1 KB + 1 KB reserved) > 228 KB)
    for cin, kind in ((64, 7), (192, 7), (256, 6)):
        plan = ph.forward(ph.conv_args(cin, 32, 1, 5), 2, BF16, ph.H100_SM90A,
                          channels_last=True, out_channels_last=True)
        assert f"kind={kind} " in plan.text, plan.text
    forced = ph.forward(ph.conv_args(256, 32, 1, 5), 2, BF16, ph.H100_SM90A, channels_last=True,
                        out_channels_last=True, kernel=shared_wg)
    assert forced.ok and "kind=7 " in forced.text, forced.text
    # 512 channels a group: not by the rule; named, A (128 KB) fits an H100 but not an A100;
    # 1024 fit neither
    wide = ph.sweep_args(SWEEP[3])
    assert "phases-share-a" not in ph.forward(wide, 1, BF16, ph.H100_SM90A, channels_last=True,
                                              out_channels_last=True).text
    named = ph.forward(wide, 1, BF16, ph.H100, channels_last=True, out_channels_last=True,
                       kernel=shared)
    assert named.ok and "kind=6 " in named.text and "m_tiles=32 " in named.text, named.text
    assert f"smem={128 * 512 * 2 + 4 * 64 * 64 * 2 + 128 * 64 * 2 + 128 * 8} " in named.text
    assert not ph.forward(wide, 1, BF16, ph.A100, channels_last=True, out_channels_last=True,
                          kernel=shared).ok
    for args in (ph.conv_args(1024, 64, 2, 4, 2), ph.conv_args(64, 32, 3, 8, 2, 1, 1),
                 ph.conv_args(64, 32, 2, 8, 2, 0, 1),
                 ph.conv_args(64, 32, 4, 8, 4, 1, 2), ph.conv_args(96, 32, 2, 8, 2),
                 ph.conv_args(64, 36, 2, 8, 2), ph.conv_args(64, 32, 2, 8, 2, dilation=2)):
        for device, kernel in ((ph.H100, shared), (ph.H100_SM90A, shared_wg)):
            refused = ph.forward(args, 2, BF16, device, channels_last=True,
                                 out_channels_last=True, kernel=kernel)
            assert not refused.ok and refused.text.startswith("refused: the "), refused.text


def test_all_phase_tiles():
    """The founding example (C_out/groups 8) takes the 8-warp tile (kind 4), whose two W phases
    are stored in pairs where stride_w is 2 and the output width even; the tile can be named,
    and naming one that does not exist is an error."""
    from phaseconv.engines.cuda import ForwardKernel

    for dtype in (F32, BF16):
        plan = ph.forward(FOUNDING, 8, dtype, ph.H100).text
        assert "kind=4 " in plan and "threads=256" in plan and "paired-w-stores" in plan, plan
        four = ph.forward(FOUNDING, 8, dtype, ph.H100,
                          kernel=ForwardKernel("tensor-cores", allph_tile=0)).text
        assert "kind=0 " in four and "threads=128" in four
        assert ("staged-output" if dtype == BF16 else "direct-stores") in four, four
    # stride 1 along W, or an odd output width: no pairs
    for args in (ph.conv_args(16, 8, 3, (4, 6, 8), (2, 2, 1), 1),
                 ph.conv_args(16, 8, 3, (4, 6, 8), 2, 1, (0, 0, 0))):
        assert args.stride[2] == 1 or args.out_shape[2] % 2 == 1
        plan = ph.forward(args, 1, F32, ph.H100,
                          kernel=ForwardKernel("tensor-cores", allph_tile=4))
        assert plan.ok and "kind=4 " in plan.text and "direct-stores" in plan.text, plan.text
    # any C_out/groups: several C_out blocks of 8
    wide = ph.forward(WIDE, 2, BF16, ph.H100, kernel=ForwardKernel("tensor-cores", allph_tile=4))
    assert wide.ok and "kind=4 " in wide.text and "BN=8 " in wide.text
    with pytest.raises(ValueError, match="allph_tile"):
        ph.forward(FOUNDING, 8, F32, ph.H100, kernel=ForwardKernel("tensor-cores", allph_tile=5))
    for tile in (-2, 12):  # never read as the rule, nor passed on
        with pytest.raises(ValueError, match="gemm_tile"):
            ph.forward(WIDE, 2, BF16, ph.H100, kernel=ForwardKernel("gemm", gemm_tile=tile))


def test_the_plan_reads_the_device():
    # the weight gradient's splits fill the multiprocessors: 132 on an H100, 108 on an A100
    h100 = ph.grad_weight(FOUNDING, 8, F32, ph.H100)
    a100 = ph.grad_weight(FOUNDING, 8, F32, ph.A100)
    assert h100.splits > a100.splits >= 1
    small = ph.Device("small", 16, 48 * 1024, 64 * 1024)  # less shared memory, fewer SMs
    assert ph.grad_weight(FOUNDING, 8, F32, small).splits < a100.splits
    # tiles are searched within the device's shared memory
    assert "smem=" in ph.forward(FOUNDING, 8, F32, small).text
    for shape in SWEEP:
        plan = ph.forward(ph.sweep_args(shape), shape.batch, F32, small)
        smem = int(plan.text.split("smem=")[1].split()[0]) if "smem=" in plan.text else 0
        assert plan.ok and smem <= small.smem_optin, plan.text


def test_unknown_kernel_names_are_refused():
    with pytest.raises(ValueError, match="kernel must be one of"):
        ph.forward(FOUNDING, 8, F32, ph.H100, kernel="fast")


def test_channels_last_backward_tiles():
    """The channels-last weight gradient: a 64 x 64 tile from C_out/g = 64, a 64 x 32 one where
    C_out/g <= 32, splits that fill the device; the input gradient's implicit GEMM: its rows
    over grad_x (one stride-1 phase)."""
    layer = ph.sweep_args(SWEEP[3])  # 512 -> 256, 16^3, k2 s2
    for device in ph.DEVICES:
        gw = ph.grad_weight(layer, 1, BF16, device)
        assert gw.family == "tensor-cores-cl", gw.text
        assert "channels-last operands, 64x64 channel tile, 4 stages" in gw.text
        blocks = int(gw.text.split(" blocks")[0].split()[-1])
        assert blocks >= 8 * device.sms and blocks == 8 * (512 // 64) * (256 // 64) * gw.splits
        narrow = ph.grad_weight(WIDE, 2, BF16, device)
        assert narrow.family == "tensor-cores-cl" and "64x32 channel tile" in narrow.text, \
            narrow.text
        gi = ph.grad_input(layer, 1, BF16, device)
        assert gi.family == "gemm" and "m_tiles=32 " in gi.text, gi.text  # 16^3 / 128 rows


def test_warpgroup_weight_gradient_tiles():
    """On sm_90a builds the channels-last weight gradient of layers with C_in/g >= 64 and
    C_out/g >= 32 runs on warpgroup MMA (named here; by the rule its TMA form where the boxes
    fit, test_weight_gradient_on_tma_boxes): a 128 x 128 tile (two warpgroups) where both are
    >= 128, else 64 x 64 or 64 x 32 (one); its splits fill the resident blocks in whole
    waves, each split at least 4 chunks of 64 terms long, their workspace at most 8 MB.
    Elsewhere (and named "tensor-cores-cl") the mma.sync tile; named on a device without it,
    refused."""
    expected = {2: ("64x32", 64, 32), 3: ("64x64", 64, 64), 4: ("128x128", 128, 128),
                5: ("128x128", 128, 128), 6: ("64x64", 64, 64)}
    for i, (tile, bm, bn) in expected.items():
        shape = SWEEP[i - 1]
        layer = ph.sweep_args(shape)
        gw = ph.grad_weight(layer, shape.batch, BF16, ph.H100_SM90A, "tensor-cores-wgmma")
        assert gw.family == "tensor-cores-wgmma" and gw.channels_last, gw.text
        assert f"operands, {tile} channel tile, wgmma-sm90a, 4 stages" in gw.text, gw.text
        auto = ph.grad_weight(layer, shape.batch, BF16, ph.H100_SM90A)
        assert auto.family in ("tensor-cores-wgmma", "tensor-cores-tma"), auto.text
        blocks = int(gw.text.split(" blocks")[0].split()[-1])
        taps = 1
        for t in layer.kernel:
            taps *= t
        phases = 1
        for st in layer.stride:
            phases *= st
        max_taps = 1
        for k, st in zip(layer.kernel, layer.stride):
            max_taps *= -(-k // st)
        tiles = -(-layer.in_channels // bm) * -(-layer.out_channels // bn)
        assert blocks == phases * max_taps * tiles * gw.splits, gw.text
        # the blocks that find a tap: at least one wave of the resident blocks
        resident = (1 if bm == 128 else 3 if bn == 64 else 4) * ph.H100.sms
        assert taps * tiles * gw.splits >= min(resident, taps * tiles), gw.text
        reduction = shape.batch
        for o, st in zip(layer.out_shape, layer.stride):
            reduction *= -(-o // st)
        assert gw.splits == 1 or reduction / gw.splits >= 4 * 64, gw.text
        packed = layer.in_channels * layer.out_channels * taps
        assert gw.splits == 1 or gw.splits * packed <= 1 << 21, gw.text  # 8 MB of workspace
        for device in ph.DEVICES:  # no sm_90a build: the mma.sync tile
            plain = ph.grad_weight(layer, shape.batch, BF16, device)
            assert plain.family == "tensor-cores-cl" and "wgmma" not in plain.text, plain.text
            refused = ph.grad_weight(layer, shape.batch, BF16, device, "tensor-cores-wgmma")
            assert not refused.ok and "on an sm_90a build" in refused.text, refused.text
        named = ph.grad_weight(layer, shape.batch, BF16, ph.H100_SM90A, "tensor-cores-cl")
        assert named.family == "tensor-cores-cl" and "wgmma" not in named.text, named.text
    # not for it: C_in/g 32, C_out/g 16, float32
    for layer, dtype in ((ph.conv_args(32, 64, 3, 8, 2, 1), BF16),
                         (ph.conv_args(64, 16, 3, 8, 2, 1), BF16), (WIDER, F32)):
        assert ph.grad_weight(layer, 2, dtype, ph.H100_SM90A).family != "tensor-cores-wgmma"
        assert not ph.grad_weight(layer, 2, dtype, ph.H100_SM90A, "tensor-cores-wgmma").ok


def test_weight_gradient_tiles_fit_the_channels():
    """The SIMT kernel runs a depthwise layer's weight gradient (forced) on 1 x 1 register
    tiles (a 4 x 4 tile would multiply 15 padding pairs for each real one); wider layers on
    4-channel tiles."""
    for device in ph.DEVICES:
        plan = ph.grad_weight(DEPTHWISE, 4, F32, device, "simt")
        assert plan.family == "simt" and "simt 1x1 channel tile" in plan.text, plan.text
        plan = ph.grad_weight(FOUNDING, 8, F32, device, "simt")
        assert plan.family == "simt" and "simt 8x8 channel tile" in plan.text, plan.text


def test_narrow_input_gradient_tiles():
    """The narrow tensor-core input gradient: grad_x octets per block (one, or two where the
    group has them), every grad_y octet of the group in one window, the (tap, octet) pairs
    rounded up to even (founding: 105 taps, 106 pairs), a tile of 256 grad_x positions with
    whole runs of 8 along W, its window (the stride times the tile plus the dilated kernel;
    W stored by residue), shared memory for two blocks a multiprocessor where a tile fits that
    (H100 and A100), 128 positions in float32, and refusals where it cannot take a layer
    (float64, 24 grad_y channels a group, a window that fits no shared memory)."""
    import re

    def numbers(plan, key):
        return tuple(map(int, re.search(key + r"=\((\d+),(\d+),(\d+)\)", plan.text).groups()))

    for device in ph.DEVICES:
        founding = ph.grad_input(FOUNDING, 8, BF16, device)
        assert "8x8 channel tile, 106 tap pair(s)" in founding.text, founding.text
        shape8 = ph.grad_input(ph.sweep_args(SWEEP[7]), 1, torch.float16, device)
        assert "16x8 channel tile, 28 tap pair(s)" in shape8.text, shape8.text
        both16 = ph.grad_input(ph.conv_args(16, 16, 3, 6, 2, 1, 1), 2, BF16, device)
        assert "16x16 channel tile, 54 tap pair(s)" in both16.text, both16.text
        for plan, k in ((founding, (3, 5, 7)), (shape8, (3, 3, 3)), (both16, (3, 3, 3))):
            d, h, w = numbers(plan, r"tile\(d,h,w\)")
            assert d * h * w == 256 and w in (8, 16, 32), plan.text
            wd, wh, ww = numbers(plan, "window")
            assert (wd, wh) == (2 * (d - 1) + k[0], 2 * (h - 1) + k[1]), plan.text
            assert ww == 2 * -(-(2 * (w - 1) + k[2]) // 2), plan.text  # two W residues
            smem = int(re.search(r"smem=(\d+)", plan.text).group(1))
            two_blocks = min(110 * 1024, device.smem_sm // 2 - 1024)
            # 16 + 16 channels: two windows; on the A100 no tile fits two blocks
            assert smem <= (two_blocks if plan is not both16 or device is ph.H100
                            else device.smem_optin), plan.text
        founding32 = ph.grad_input(FOUNDING, 8, F32, device)
        assert founding32.text.startswith("tensor-core window grad-input 3xTF32"), founding32.text
        d, h, w = numbers(founding32, r"tile\(d,h,w\)")
        assert d * h * w == 128, founding32.text  # float32: one m16 tile a warp
        for refused in (ph.grad_input(FOUNDING, 8, F64, device, "tensor-cores-narrow"),
                        ph.grad_input(ph.conv_args(24, 24, 3, 6, 2, 1, 1), 2, BF16, device,
                                      "tensor-cores-narrow"),
                        ph.grad_input(ph.conv_args(8, 8, 3, 6, 1, 0, 0, dilation=200), 1, BF16,
                                      device, "tensor-cores-narrow")):
            assert not refused.ok and "narrow tensor-core window kernel was forced" in \
                refused.text, refused.text


def test_narrow_weight_gradient_tiles():
    """The narrow tensor-core weight gradient: octets, and every tap of a phase in one block
    where its m16n8 tiles fit the warps (one staged window serves them all); output tiles
    (D x H x W) that cover the phases' outputs without padding where the counts allow
    (founding: 12 x 24 x 48 outputs a phase; shape 8: 64^3), at most 512 outputs (float32:
    256, its 3xTF32 accumulator runs within 256 terms), splits of at least two tiles, and
    shared memory for two blocks a multiprocessor (H100 and A100)."""
    import re

    def tile(plan):
        return tuple(map(int, re.search(r"tile\(d,h,w\)=\((\d+),(\d+),(\d+)\)",
                                        plan.text).groups()))

    for device in ph.DEVICES:
        founding = ph.grad_weight(FOUNDING, 8, BF16, device)
        assert "8x8 channel tile, 24 tap(s) per block" in founding.text, founding.text
        shape8 = ph.grad_weight(ph.sweep_args(SWEEP[7]), 1, BF16, device)
        assert "16x8 channel tile, 8 tap(s) per block" in shape8.text, shape8.text
        founding32 = ph.grad_weight(FOUNDING, 8, F32, device)
        assert founding32.text.startswith("tensor-core window 3xTF32"), founding32.text
        assert "8x8 channel tile, 24 tap(s) per block" in founding32.text, founding32.text
        for plan, counts, most in ((founding, (12, 24, 48), 512), (shape8, (64, 64, 64), 512),
                                   (founding32, (12, 24, 48), 256)):  # float32: 256 terms
            d, h, w = tile(plan)
            assert all(c % t == 0 for c, t in zip(counts, (d, h, w))), plan.text
            assert (d * h * w) % 128 == 0 and d * h * w <= most, plan.text
        wide_out = ph.grad_weight(ph.conv_args(8, 40, 3, 6, 2, 1, 1), 2, BF16, device)
        assert "8x16 channel tile, 8 tap(s) per block" in wide_out.text, wide_out.text
        long_rows = ph.grad_weight(ph.conv_args(16, 8, 3, (2, 3, 700), 2, 1, 1), 1, BF16,
                                   device)
        assert long_rows.family == "tensor-cores-narrow" and tile(long_rows)[2] < 700, \
            long_rows.text
        # 1331 taps: 11 blocks of 121 (61 m16n8 tiles of 64)
        many_taps = ph.grad_weight(ph.conv_args(8, 8, 11, 6, 1, 5), 1, BF16, device)
        assert "8x8 channel tile, 121 tap(s) per block" in many_taps.text, many_taps.text
        for plan in (founding, founding32, shape8, wide_out, long_rows, many_taps):
            assert 1 <= plan.splits <= 64, plan.text
            # two blocks a multiprocessor (the kernel's launch bounds), 1 KB each reserved
            smem = int(re.search(r"smem=(\d+)", plan.text).group(1))
            assert smem <= device.smem_sm // 2 - 1024, plan.text


def test_depthwise_tiles_hold_whole_phases():
    """Shape 7 (4 x 64 planes, 48^3 outputs, k4 s2 p1): 48 columns (24 per W phase), 6 row
    groups of 4 per H phase split into 2 tiles of 3 (24 rows), runs of 8 of a D phase's 24
    positions (3 runs x 2 phases); the slab is 8 + 1 slices (2 D taps) of 3 x 4 + 2 rows (the
    phases' input offsets span 2) by 24 + 2 columns, pitch 15:
    4 * (4 phases * 8 taps + 9 * 26 * 15 + 2) + 4 * 16 bytes (2 words past the slab: the
    register window of up to 2 H taps reads them)."""
    for device in ph.DEVICES:
        plan = ph.forward(DEPTHWISE, 4, BF16, device)
        assert plan.text == ("depthwise (rows of a shared-memory slab) tile(d,h,w)=(8,24,48) "
                             "taps<=2 smem=14240 grid=(256, 2, 6)"), plan.text
    # float64 slabs take twice the bytes
    plan = ph.forward(DEPTHWISE, 4, F64, ph.H100)
    assert "smem=28416" in plan.text, plan.text
    # 600 columns: W tiles of 128 (5), 2 x 4 rows of one H tile; 10 blocks would leave most
    # multiprocessors idle, so runs of one D position (2 per D phase)
    wide_row = ph.conv_args(1, 1, 3, (2, 3, 300), 2, 1, 1, 1)
    plan = ph.forward(wide_row, 1, F32, ph.H100)
    assert "tile(d,h,w)=(1,8,128)" in plan.text and "grid=(1, 5, 4)" in plan.text, plan.text


@pytest.mark.parametrize("kernel, stride, dilation, fixed", [
    (4, 2, 1, 2), (3, 1, 1, 4), (7, 2, 1, 4), (5, 1, 1, 0), (3, 2, 2, 4), (3, 3, 2, 0)])
def test_depthwise_tap_loops_unrolled_up_to_four_taps(kernel, stride, dilation, fixed):
    """Up to 2 or 4 taps per H and W axis, with phase dilation 1 in H, run unrolled loops
    (k3 s2 d2: the three taps meet one phase, at phase dilation 1); otherwise runtime loops."""
    layer = ph.conv_args(8, 8, kernel, 10, stride, 0, 0, 8, dilation=dilation)
    plan = ph.forward(layer, 2, F32, ph.H100)
    assert plan.family == "depthwise" and f"taps<={fixed} " in plan.text, plan.text


def test_depthwise_slabs_that_do_not_fit_go_to_the_tiled_kernel():
    """A dilation of 60 widens each tile's slab past 48 KB: the rule moves on; forced, the
    depthwise kernel is refused."""
    dilated = ph.conv_args(4, 4, 3, 16, 1, 0, 0, 4, dilation=60)
    plan = ph.forward(dilated, 1, F32, ph.H100)
    assert plan.ok and plan.family != "depthwise", plan.text
    forced = ph.forward(dilated, 1, F32, ph.H100, kernel="depthwise")
    assert not forced.ok and "input slab needs more than 48 KB" in forced.text, forced.text


def test_depthwise_slabs_shrink_their_row_groups_to_fit():
    """Where one D position's slab does not fit, fewer row groups: a float64 layer dilated 3
    in D and H (13 output rows) takes 8 rows a tile instead of 16 and stays depthwise."""
    dilated = ph.conv_args(1, 1, (4, 5, 1), (1, 1, 22), dilation=(3, 3, 1))
    f32 = ph.forward(dilated, 1, F32, ph.H100, kernel="depthwise")
    assert "tile(d,h,w)=(1,16,22)" in f32.text, f32.text
    for device in ph.DEVICES:
        plan = ph.forward(dilated, 1, F64, device)
        assert plan.family == "depthwise" and "tile(d,h,w)=(1,8,22)" in plan.text, plan.text
        smem = int(plan.text.split("smem=")[1].split()[0])
        assert smem <= 48 * 1024


def test_depthwise_backward_tiles():
    """Shape 7's backward (4 x 64 planes of 24^3 inputs, k4 s2 p1: 64 taps over the 8
    phases).  The input gradient: a tile of 5 x 8 x 24 positions reads a grad_y box of
    (2 * 4 + 4) x (2 * 7 + 4) x (2 * 23 + 4), 5 D slices x 2 row groups x 24 columns = 240
    items for 256 threads; its shared memory: 64 (weight, offset) taps of 8 bytes and the box
    with rows padded to 19 words, 512 + 4 * 12 * 50 * 19.  The weight gradient: (offset,
    packed element) taps, the box and the tile's inputs, its splits one wave of 3 blocks per
    multiprocessor (3 * 132 / 64 channels -> 6; 3 * 108 / 64 -> 5)."""
    gi = ph.grad_input(DEPTHWISE, 4, F32, ph.H100)
    assert gi.text == ("depthwise grad-input (a grad_y box in shared memory) "
                       "tile(d,h,w)=(5,8,24) box=(12,18,50) taps=64 smem=46112"), gi.text
    gw = ph.grad_weight(DEPTHWISE, 4, BF16, ph.H100)
    assert gw.text == ("depthwise weight-gradient (a grad_y box in shared memory) "
                       "tile(d,h,w)=(3,12,24) box=(8,26,50) taps=64 smem=47456 6 split(s)"), \
        gw.text
    assert gw.splits == 6 and ph.grad_weight(DEPTHWISE, 4, BF16, ph.A100).splits == 5
    for device in ph.DEVICES:
        for dtype in (F32, BF16, F64):
            for plan in (ph.grad_input(DEPTHWISE, 4, dtype, device),
                         ph.grad_weight(DEPTHWISE, 4, dtype, device)):
                smem = int(plan.text.split("smem=")[1].split()[0])
                assert plan.family == "depthwise" and smem <= 48 * 1024, plan.text
    # more taps than the tap list holds (9^3 > 512): the other kernels, and forcing is refused
    many = ph.conv_args(2, 2, 9, 6, groups=2)
    assert ph.grad_input(many, 1, F32, ph.H100).family == "naive"
    assert ph.grad_weight(many, 1, F32, ph.H100).family == "simt"
    for plan in (ph.grad_input(many, 1, F32, ph.H100, "depthwise"),
                 ph.grad_weight(many, 1, F32, ph.H100, "depthwise"),
                 ph.grad_input(WIDE, 1, F32, ph.H100, "depthwise"),
                 ph.grad_weight(WIDE, 1, F32, ph.H100, "depthwise")):
        assert not plan.ok and plan.text.startswith("refused: the depthwise kernel was forced")


@pytest.mark.parametrize("device", ph.DEVICES, ids=lambda d: d.name.split()[0])
def test_all_phase_writes_a_channels_last_result_in_place(device):
    """A channels-last result of the all-phase kernel is stored by it, a position's channels
    together (no copy after it), where a block's stores cover whole positions: one group of 16
    or more output channels (MONAI UNet's 64 -> 16), every tile and dtype, either input
    layout; it then neither pairs W stores nor stages its output slab (both write
    (N, C, D, H, W) rows).  With groups (the founding example) or fewer channels (UNet's
    32 -> 2) its contiguous result is copied once, and it keeps both."""
    up2 = ph.conv_args(64, 16, 3, 24, 2, 1, 1, batch=2)
    for dtype in (F32, BF16, torch.float16):
        for tile in range(5):
            kernel = cuda.ForwardKernel("allphase", allph_tile=tile)
            for offered in (False, True):
                plan = ph.forward(up2, 2, dtype, device, channels_last=offered, kernel=kernel,
                                  out_channels_last=True)
                if not plan.ok:
                    continue
                assert plan.family == "allphase", plan.text
                assert plan.text.endswith(", channels-last output"), plan.text
                assert "direct-stores" in plan.text, plan.text
    kept = set()
    for args, batch in ((FOUNDING, 8), (TWO_OUT, 2)):
        for dtype in (F32, BF16):
            for tile in range(5):
                kernel = cuda.ForwardKernel("allphase", allph_tile=tile)
                plain = ph.forward(args, batch, dtype, device, kernel=kernel)
                if not plain.ok:
                    continue
                kept.update(t for t in ("paired-w-stores", "staged-output") if t in plain.text)
                copied = ph.forward(args, batch, dtype, device, channels_last=True,
                                    kernel=kernel, out_channels_last=True)
                assert copied.ok and not copied.text.endswith(", channels-last output")
                assert copied.text == ph.forward(args, batch, dtype, device, channels_last=True,
                                                 kernel=kernel).text
    assert kept == {"paired-w-stores", "staged-output"}, kept
    # by the rule too
    plan = ph.forward(up2, 2, BF16, device, channels_last=True, out_channels_last=True)
    assert plan.family == "allphase" and plan.text.endswith(
        "(channels-last input), channels-last output"), plan.text


@pytest.mark.parametrize("device", ph.DEVICES, ids=lambda d: d.name.split()[0])
def test_all_phase_reads_a_channels_last_input_in_one_halo_buffer_where_two_do_not_fit(device):
    """A 16-bit channels-last input is read in place by the all-phase kernel: two halo
    buffers (the next tile's copies in flight) where they fit, else one buffer filled at each
    tile, rather than a copy of the input to (N, C, D, H, W).  MONAI UNet's 64 -> 16 up-
    convolution (2 x 64 x 24^3, k3 s2): eight channel groups a position."""
    up2 = ph.conv_args(64, 16, 3, 24, 2, 1, 1, batch=2)
    for dtype in (BF16, torch.float16):
        plan = ph.forward(up2, 2, dtype, device, channels_last=True)
        assert plan.family == "allphase" and plan.channels_last, plan.text
        assert "one-halo-buffer" in plan.text and "(channels-last input)" in plan.text
        contiguous = ph.forward(up2, 2, dtype, device)
        assert contiguous.family == "allphase" and not contiguous.channels_last
        assert "one-halo-buffer" not in contiguous.text
    # where two buffers fit, two (the founding example), and float32 stages its halo
    # synchronously (no buffers to double)
    founding = ph.forward(FOUNDING, 8, BF16, device, channels_last=True)
    assert founding.channels_last and "one-halo-buffer" not in founding.text, founding.text
    assert "one-halo-buffer" not in ph.forward(FOUNDING, 8, F32, device, channels_last=True).text


@pytest.mark.parametrize("device", ph.DEVICES, ids=lambda d: d.name.split()[0])
def test_float32_all_phase_halo_split_at_load_where_two_copies_do_not_fit(device):
    """float32 stages the all-phase halo twice, split into its tf32 big and small parts, where
    that fits; else once, unsplit, each A fragment split as it is loaded.  MONAI UNet's
    32 -> 2 up-convolution (2 x 32 x 48^3, k3 s2: eight float32 channel groups a position)
    takes it by the rule, either input layout, with less shared memory than two copies need;
    16 -> 2 and the founding example keep two copies, 16-bit dtypes never split."""
    for offered in (False, True):
        plan = ph.forward(TWO_OUT, 2, F32, device, channels_last=offered)
        assert plan.family == "allphase" and "halo-split-at-load" in plan.text, plan.text
        assert "one-halo-buffer" not in plan.text, plan.text
        halo = re.search(r"halo=\((\d+),(\d+),(\d+)\) G=(\d+) smem=(\d+)", plan.text)
        hd, hh, hw, groups, smem = (int(v) for v in halo.groups())
        copy = hd * hh * hw * (groups * 16 + (0 if groups % 2 else 16))
        # one copy in its shared memory; a second would pass the plan's 120 KB cap
        assert copy < smem <= 120 * 1024 < smem + copy, plan.text
    two_copies = (ph.forward(ph.conv_args(16, 2, 3, 48, 2, 1, 1, batch=2), 2, F32, device),
                  ph.forward(FOUNDING, 8, F32, device))
    for plan in two_copies:
        assert plan.family == "allphase" and "halo-split-at-load" not in plan.text, plan.text
    for dtype in (BF16, torch.float16):
        assert "halo-split-at-load" not in ph.forward(TWO_OUT, 2, dtype, device).text


def test_tma_tiles_read_a_channels_last_weight_in_place():
    """The forward's TMA tiles read a 16-bit weight in place (no pack) where its output
    channels are adjacent and its other strides are whole 16 bytes, its data 16-byte aligned;
    every other tile, layout or address is packed."""
    args = ph.sweep_args(SWEEP[3])  # 512 -> 256, 16^3, k2 s2: the TMA tiles
    cout_g, k = args.out_channels, tuple(args.kernel)
    taps = k[0] * k[1] * k[2]
    cl = (taps * cout_g, 1, k[1] * k[2] * cout_g, k[2] * cout_g, cout_g)
    contiguous = (cout_g * taps, taps, k[1] * k[2], k[2], 1)
    dev = ph.H100_SM90A
    for dtype in (BF16, torch.float16):
        tma = ph.forward(args, 1, dtype, dev, channels_last=True, out_channels_last=True)
        assert "tma-box" in tma.text, tma.text
        assert ph.weight_in_place(args, 1, dtype, dev, cl, channels_last=True,
                                  out_channels_last=True)
        assert not ph.weight_in_place(args, 1, dtype, dev, contiguous, channels_last=True,
                                      out_channels_last=True)
        # a misaligned address (a view into a larger buffer)
        assert not ph.weight_in_place(args, 1, dtype, dev, cl, base=8, channels_last=True,
                                      out_channels_last=True)
        # an expanded (stride 0) input channel
        assert not ph.weight_in_place(args, 1, dtype, dev, (0,) + cl[1:], channels_last=True,
                                      out_channels_last=True)
    # no TMA tile: the sm_80 build's tiles, float32, the shared-A tile named
    assert not ph.weight_in_place(args, 1, BF16, ph.H100, cl, channels_last=True,
                                  out_channels_last=True)
    assert not ph.weight_in_place(args, 1, F32, dev, cl, channels_last=True,
                                  out_channels_last=True)
    assert not ph.weight_in_place(args, 1, BF16, dev, cl, channels_last=True,
                                  out_channels_last=True,
                                  kernel=cuda.ForwardKernel("gemm", gemm_tile=7))
    # 36 output channels: a kernel step of 72 bytes is no whole 16
    odd = ph.conv_args(128, 36, 2, 8, stride=2)
    assert "tma-box" in ph.forward(odd, 2, BF16, dev, channels_last=True,
                                   kernel=cuda.ForwardKernel("gemm", gemm_tile=8)).text
    odd_cl = (8 * 36, 1, 4 * 36, 2 * 36, 36)
    assert not ph.weight_in_place(odd, 2, BF16, dev, odd_cl, channels_last=True,
                                  kernel=cuda.ForwardKernel("gemm", gemm_tile=8))
    # a 1 x 1 x 1 kernel: the strides of its one-element dimensions are never stepped
    pointwise = ph.conv_args(128, 64, 1, 8)
    assert ph.weight_in_place(pointwise, 2, BF16, dev, (64, 1, 3, 5, 7), channels_last=True,
                              kernel=cuda.ForwardKernel("gemm", gemm_tile=8))
