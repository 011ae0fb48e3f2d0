"""The CUDA engine's kernel plan on the host: ``csrc/phase_conv_plan.cpp`` (plain C++) and
``tests/plan_shim.cpp`` (a C entry point) built with the host compiler and called through
ctypes, with recorded device properties.  The geometry comes from the same tables the engine
hands the plan (``phaseconv.engines.cuda.host_tables``), so the plan computed here is the one a
GPU with these properties launches."""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from phaseconv.checks import ConvArgs
from phaseconv.engines import cuda


class Device(NamedTuple):
    """What the plan reads of a GPU (``cudaDeviceGetAttribute``)."""
    name: str
    sms: int
    smem_optin: int   # shared memory per block, opted in
    smem_sm: int      # shared memory per multiprocessor
    wgmma: int = 0    # sm_90 with the engine built for sm_90a (DevInfo::wgmma)


# recorded from the devices (CUDA device attributes)
H100 = Device("H100 SXM5", 132, 232448, 233472)
A100 = Device("A100 SXM4", 108, 166912, 167936)
DEVICES = (H100, A100)
# the H100 as the JIT engine builds for it (CUDA 12+: sm_90a, the warpgroup kernels)
H100_SM90A = H100._replace(name="H100 SXM5, sm_90a build", wgmma=1)

DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
FAMILIES = {0: "none", 1: "gemm", 2: "allphase", 3: "mma", 4: "tiled", 5: "naive",
            6: "tensor-cores", 7: "simt", 8: "naive", 10: "depthwise", 11: "depthwise",
            12: "tensor-cores-cl", 13: "tensor-cores-narrow", 14: "tensor-cores-narrow",
            15: "tensor-cores-wgmma", 16: "tensor-cores-tma"}
_SOURCES = (cuda.CSRC / "phase_conv_plan.cpp", Path(__file__).with_name("plan_shim.cpp"))


class Plan(NamedTuple):
    ok: bool           # False: refused (text says why)
    family: str        # FAMILIES' name ("none" for an empty launch)
    text: str          # what describe() prints
    channels_last: bool = False  # the kernel reads x channels-last (weight gradient: and grad_y;
                                 # input gradient: grad_y)
    splits: int = 0    # weight gradient: splits of the reduction
    workspace: int = 0  # weight gradient: bytes of the splits' workspace


def compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


_lib = None


def library():
    """The plan built as a shared library (once per source text, in the temp directory)."""
    global _lib
    if _lib is None:
        digest = hashlib.sha1()
        for path in _SOURCES + (cuda.CSRC / "phase_conv_plan.h",):
            digest.update(path.read_bytes())
        out = Path(tempfile.gettempdir()) / f"phaseconv-plan-{digest.hexdigest()[:12]}.so"
        if not out.exists():
            tmp = out.with_suffix(f".{os.getpid()}.so")
            subprocess.run([compiler(), "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall",
                            "-Werror", f"-I{cuda.CSRC}", *map(str, _SOURCES), "-o", str(tmp)],
                           check=True, capture_output=True, text=True)
            os.replace(tmp, out)
        _lib = ctypes.CDLL(str(out))
    return _lib


def _call(fn, geometry, dtype, force, device: Device, nout: int):
    i64 = ctypes.c_int64
    g = (i64 * len(geometry))(*geometry)
    dev = (i64 * 4)(device.sms, device.smem_optin, device.smem_sm, device.wgmma)
    out = (i64 * nout)()
    text = ctypes.create_string_buffer(512)
    if isinstance(force, list):
        force = (i64 * len(force))(*force)
    ok = fn(g, DTYPES[dtype], force, dev, out, text, len(text))
    return bool(ok), list(out), text.value.decode()


def _tables(args: ConvArgs, dtype: torch.dtype) -> cuda.HostTables:
    shape = (args.in_channels, args.out_channels // args.groups) + tuple(args.kernel)
    return cuda.host_tables(shape, args.groups, args.stride, args.padding, args.dilation,
                            cuda._MMA_CHANNELS.get(dtype, 0))


def _forward_geometry(args: ConvArgs, batch: int, dtype: torch.dtype, channels_last: bool,
                      out_channels_last: bool) -> list:
    host = _tables(args, dtype)
    return [batch, args.in_channels, args.out_channels, args.groups, *args.in_shape,
            *args.out_shape, *host.stride, *host.phase_dilation, *host.max_taps,
            host.total_taps, *host.union_box, int(dtype in cuda._MMA_CHANNELS),
            int(channels_last and dtype != torch.float64), int(out_channels_last)]


def forward(args: ConvArgs, batch: int, dtype: torch.dtype, device: Device,
            channels_last: bool = False, kernel="auto", out_channels_last: bool = False) -> Plan:
    """The forward's plan (what ``engines.cuda.forward_plan`` launches on ``device``);
    ``out_channels_last``: the result is wanted ``channels_last_3d``."""
    geometry = _forward_geometry(args, batch, dtype, channels_last, out_channels_last)
    fn = library().phaseconv_plan_forward
    ok, out, text = _call(fn, geometry, dtype, cuda.forward_kernel(kernel).codes(), device, 3)
    return Plan(ok, FAMILIES[out[0]] if ok else "refused", text, bool(out[1]))


def weight_in_place(args: ConvArgs, batch: int, dtype: torch.dtype, device: Device,
                    strides, base: int = 0, channels_last: bool = False, kernel="auto",
                    out_channels_last: bool = False) -> bool:
    """Whether the forward's plan reads a weight of these element strides at address ``base``
    in place (``engines.cuda.weight_in_place``)."""
    geometry = _forward_geometry(args, batch, dtype, channels_last, out_channels_last)
    sizes = (args.in_channels, args.out_channels // args.groups) + tuple(args.kernel)
    i64 = ctypes.c_int64
    g = (i64 * len(geometry))(*geometry)
    dev = (i64 * 4)(device.sms, device.smem_optin, device.smem_sm, device.wgmma)
    force = (i64 * 7)(*cuda.forward_kernel(kernel).codes())
    w = (i64 * 10)(*sizes, *strides)
    fn = library().phaseconv_plan_forward_weight_in_place
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_int, i64]
    ok = fn(g, DTYPES[dtype], force, dev, w, torch.empty((), dtype=dtype).element_size(),
            base)
    assert ok >= 0, "no plan"
    return bool(ok)


def grad_input(args: ConvArgs, batch: int, dtype: torch.dtype, device: Device,
               kernel: str = "auto", tile: Optional[int] = None) -> Plan:
    """The input gradient's plan (``engines.cuda.backward_plan``; ``tile``: the implicit
    GEMM's, named)."""
    host = _tables(args, dtype)
    geometry = [batch, args.out_channels, args.in_channels, args.groups, *args.out_shape,
                *args.in_shape, *host.phase_dilation, *host.gi_max_taps, host.gi_total_taps,
                host.gi_table.shape[0], *host.stride, *args.kernel, *args.padding,
                *args.dilation]
    fn = library().phaseconv_plan_grad_input
    ok, out, text = _call(fn, geometry, dtype, cuda.grad_input_code(kernel, tile), device, 2)
    return Plan(ok, FAMILIES[out[0]] if ok else "refused", text, bool(out[1]))


def grad_weight(args: ConvArgs, batch: int, dtype: torch.dtype, device: Device,
                kernel: str = "auto") -> Plan:
    """The weight gradient's plan (``engines.cuda.backward_plan``)."""
    host = _tables(args, dtype)
    numel = args.in_channels * (args.out_channels // args.groups)
    for k in args.kernel:
        numel *= k
    geometry = [batch, args.in_channels, args.out_channels, args.groups, *args.in_shape,
                *args.out_shape, *host.stride, *host.phase_dilation, *host.max_taps, numel,
                *args.kernel, *args.padding, *args.dilation]
    fn = library().phaseconv_plan_grad_weight
    ok, out, text = _call(fn, geometry, dtype, cuda.GRAD_WEIGHT_KERNELS[kernel], device, 5)
    return Plan(ok, FAMILIES[out[0]] if ok else "refused", text, bool(out[4]), splits=out[3],
                workspace=out[2])


def conv_args(in_channels, out_channels, kernel, size, stride=1, padding=0, output_padding=0,
              groups=1, dilation=1, batch=1) -> ConvArgs:
    """The checked arguments of a layer, from shapes alone (meta tensors)."""
    from phaseconv.checks import check_conv_transpose3d, triple

    x = torch.empty((batch, in_channels) + triple(size, "size"), device="meta")
    w = torch.empty((in_channels, out_channels // groups) + triple(kernel, "kernel"),
                    device="meta")
    return check_conv_transpose3d(x, w, None, stride, padding, output_padding, groups, dilation)


def sweep_args(shape) -> ConvArgs:
    """ConvArgs of a ``phaseconv.bench.SWEEP`` shape."""
    return conv_args(shape.in_channels, shape.out_channels, shape.kernel, shape.size,
                     shape.stride, shape.padding, shape.output_padding, shape.groups,
                     batch=shape.batch)
