"""The CUDA engine: all phases of a transposed convolution in one kernel launch.

The forward kernels (``csrc/phase_conv_fwd.cu``) read the input directly (no padded or
zero-inserted copy, no im2col buffer) and a packed weight made once per weight by :func:`pack`.
The backward: :func:`grad_input` sums every phase's adjoint (a stride-1 transposed
convolution of grad_output's phase slice) in one launch of the per-phase tensor-core kernel
(or runs them phase by phase on the forward kernels, by the rule in its docstring);
:func:`grad_weight` runs the deterministic kernels of ``csrc/phase_conv_bwd.cu``.  The packed
layouts:

* ``weight``: 1-D, the phases in row-major order over their residues (rd, rh, rw); phase p
  holds ``[groups][C_in/groups][taps_d][taps_h][taps_w][C_out/groups]`` (C order), each axis'
  taps in ascending input-offset order (the flipped, strided kernel slice).  Bias-only phases
  (a kernel axis shorter than the stride) hold nothing.
* ``table``: int64 (num_phases, 12) on the weight's device: residues (3), taps per axis (3),
  input offset of each axis' first tap (3), element offset of the phase in ``weight`` (1),
  element offset of the phase in ``weight_mma`` (1), 1 spare.
* ``weight_mma`` (float32/float16/bfloat16 only, else None): the tensor-core layout, phase p
  holding ``[groups][taps][G][C_out/groups][CG]`` with ``CG`` channels of 16 bytes
  (4 for float32, 8 for 16-bit types), ``G = ceil((C_in/groups) / CG)``, zero-padded channels.
* ``union_lo``/``union_ext``: per axis, the first input offset read by any phase's taps and the
  span to the last one: the window that one tile of all phases reads, less the tile.

Both depend on kernel, stride, padding and dilation, not on the input size.  The output
sizes come from the ``PhasePlan`` at each call; the kernel derives each phase's output count.

:func:`load` builds the extension on first use (one line on stderr while nvcc runs) for the
present GPU's architecture only, and caches it across processes in torch's extension
directory under a name carrying a hash of the sources, so edits rebuild.
"""
import hashlib
import inspect
import math
import os
import sys
import threading
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

import torch

from ..checks import triple
from ..geometry import PhasePlan, axis_plan
from ..packing import select_taps

# phaseconv/csrc: a link to the repository's csrc/ in a checkout, a copy in an installed wheel.
CSRC = Path(__file__).resolve().parent.parent / "csrc"
_SOURCES = ("phase_conv_dtype.cuh", "phase_conv_mma.cuh", "phase_conv_fwd.cuh",
            "phase_conv_fwd.cu", "phase_conv_bwd.cuh", "phase_conv_bwd.cu", "phase_conv.cpp")
FORCE_NCDHW = 16  # force_path flag: never the channels-last kernels (phase_conv_fwd.cuh)
TABLE_STRIDE = 12

_lock = threading.Lock()
_modules = {}  # arch -> module


class CudaPacked(NamedTuple):
    """A weight packed for the CUDA kernel (see the module docstring)."""
    weight: torch.Tensor          # 1-D, weight's dtype and device
    table: torch.Tensor           # int64 (num_phases, 12), weight's device
    kernel: Tuple[int, int, int]
    stride: Tuple[int, int, int]
    padding: Tuple[int, int, int]
    dilation: Tuple[int, int, int]
    phase_dilation: Tuple[int, int, int]
    max_taps: Tuple[int, int, int]
    total_taps: int               # sum over phases of taps_d * taps_h * taps_w
    groups: int
    in_channels: int
    out_channels: int
    weight_mma: Optional[torch.Tensor] = None  # tensor-core layout (see the module docstring)
    union_lo: Tuple[int, int, int] = (0, 0, 0)
    union_ext: Tuple[int, int, int] = (0, 0, 0)


def _arch() -> Tuple[int, int]:
    return torch.cuda.get_device_capability(torch.cuda.current_device())


def load():
    """The compiled extension for the current GPU (built on first use, then cached)."""
    if not torch.cuda.is_available():
        raise RuntimeError("phaseconv cuda engine: CUDA is not available")
    major, minor = _arch()
    key = (major, minor)
    with _lock:
        mod = _modules.get(key)
        if mod is not None:
            return mod
        mod = _build(major, minor)
        _modules[key] = mod
        return mod


def _build(major: int, minor: int):
    from torch.utils import cpp_extension

    try:
        texts = {name: (CSRC / name).read_text() for name in _SOURCES}
    except OSError as exc:
        raise RuntimeError(f"phaseconv cuda engine: cannot read the CUDA sources in {CSRC}: "
                           f"{exc}") from exc
    arch = f"{major}{minor}"
    cuda_flags = ["-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}"]
    digest = hashlib.sha1()
    for name in _SOURCES:
        digest.update(name.encode())
        digest.update(texts[name].encode())
    digest.update(" ".join(cuda_flags).encode())
    digest.update(torch.__version__.encode())
    digest.update(str(torch.version.cuda).encode())
    name = f"phaseconv_cuda_sm{arch}_{digest.hexdigest()[:12]}"

    kwargs = dict(
        name=name,
        cpp_sources=[texts["phase_conv.cpp"]],
        cuda_sources=[texts["phase_conv_fwd.cu"], texts["phase_conv_bwd.cu"]],
        extra_cflags=["-O3"],
        extra_cuda_cflags=cuda_flags,
        extra_include_paths=[str(CSRC)],
        verbose=False,
    )
    # Newer torch prepends <torch/types.h> to the CUDA source unless told not to; the kernel
    # file needs only CUDA's headers, and skipping torch's cuts nvcc's time about 4x.
    if "no_implicit_headers" in inspect.signature(cpp_extension.load_inline).parameters:
        kwargs["no_implicit_headers"] = True
    try:
        build_root = cpp_extension._get_build_directory(name, verbose=False)
        built = os.path.isdir(build_root) and any(Path(build_root).glob(name + "*.so"))
    except Exception:  # private helper: only used to decide whether to announce the build
        build_root, built = "torch's extension directory", False
    if not built:
        print(f"phaseconv: compiling the CUDA engine for sm_{arch} (once; cached in {build_root})"
              , file=sys.stderr, flush=True)
    try:
        return cpp_extension.load_inline(**kwargs)
    except Exception as exc:  # nvcc / ninja errors carry the compiler's output
        msg = str(exc)
        out = getattr(exc, "output", None)
        if isinstance(out, bytes):
            msg += "\n" + out.decode(errors="replace")
        elif isinstance(out, str):
            msg += "\n" + out
        raise RuntimeError("phaseconv cuda engine: building the extension failed:\n" + msg) \
            from exc


_tables = {}  # (rows, device) -> int64 tensor on that device


def _device_table(rows, device) -> torch.Tensor:
    """The phase table ``rows`` as an int64 tensor on ``device``, made once per geometry and
    device: a table depends on no weight value, and a fresh one at every weight update would
    be a host-to-device copy (which waits for the stream) per layer and training step.
    Nothing writes to a table."""
    key = (tuple(tuple(int(v) for v in r) for r in rows), str(torch.device(device)))
    with _lock:
        table = _tables.get(key)
        if table is None:
            if len(_tables) >= 1024:  # many distinct geometries: start over
                _tables.clear()
            table = torch.tensor(rows, dtype=torch.int64).to(device)
            _tables[key] = table
        return table


def pack(weight: torch.Tensor, groups: int, stride, padding, dilation) -> CudaPacked:
    """Packs ``weight`` (C_in, C_out/groups, kD, kH, kW) for the CUDA kernel (detached)."""
    stride, padding, dilation = (triple(v, name) for v, name in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    w = weight.detach()
    if w.dim() != 5:
        raise ValueError(f"pack: weight must be 5-D (C_in, C_out/groups, kD, kH, kW), got shape "
                         f"{tuple(w.shape)}")
    c_in, cout_g = int(w.shape[0]), int(w.shape[1])
    kernel = tuple(int(k) for k in w.shape[2:])
    if groups < 1 or c_in % groups:
        raise ValueError(f"pack: C_in={c_in} is not divisible by groups={groups}")
    plans = [axis_plan(1, k, s, p, dilation=d)
             for k, s, p, d in zip(kernel, stride, padding, dilation)]
    cin_g = c_in // groups
    wg = w.reshape(groups, cin_g, cout_g, *kernel)
    rows = []
    parts = []
    mparts = []
    offset = 0
    moffset = 0
    dev = w.device
    cg = {torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}.get(w.dtype, 0)
    ngrp = -(-cin_g // cg) if cg else 0
    for pd in plans[0].phases:
        for ph in plans[1].phases:
            for pw in plans[2].phases:
                taps = (pd.taps, ph.taps, pw.taps)
                ntaps = len(pd.taps) * len(ph.taps) * len(pw.taps)
                offs = tuple(a.offsets[0] if a.taps else 0 for a in (pd, ph, pw))
                rows.append([pd.residue, ph.residue, pw.residue,
                             len(pd.taps), len(ph.taps), len(pw.taps),
                             offs[0], offs[1], offs[2], offset, moffset, 0])
                if ntaps:
                    sub = select_taps(wg, 3, taps)
                    # (g, ci, co, td, th, tw) -> (g, ci, td, th, tw, co)
                    parts.append(sub.permute(0, 1, 3, 4, 5, 2).reshape(-1))
                    offset += groups * cin_g * cout_g * ntaps
                    if cg:
                        # (g, ci, co, td, th, tw) -> (g, tap, ci, co) -> (g, tap, G, co, CG)
                        m = sub.permute(0, 3, 4, 5, 1, 2).reshape(groups, ntaps, cin_g, cout_g)
                        m = torch.nn.functional.pad(m, (0, 0, 0, ngrp * cg - cin_g))
                        m = m.reshape(groups, ntaps, ngrp, cg, cout_g).permute(0, 1, 2, 4, 3)
                        mparts.append(m.reshape(-1))
                        moffset += groups * ntaps * ngrp * cg * cout_g
    packed_w = torch.cat(parts) if parts else w.new_zeros((0,))
    table = _device_table(rows, dev)
    max_taps = tuple(max(len(ph.taps) for ph in a.phases) for a in plans)
    total_taps = sum(r[3] * r[4] * r[5] for r in rows)
    pdil = tuple(d // math.gcd(s, d) for s, d in zip(stride, dilation))
    packed_m = None
    if cg:
        packed_m = (torch.cat(mparts) if mparts else w.new_zeros((0,))).contiguous()
    lo, ext = [], []
    for a in plans:
        spans = [(ph.offsets[0], ph.offsets[-1]) for ph in a.phases if ph.taps]
        first = min(sp[0] for sp in spans) if spans else 0
        last = max(sp[1] for sp in spans) if spans else 0
        lo.append(first)
        ext.append(last - first)
    return CudaPacked(packed_w.contiguous(), table, kernel, stride, padding, dilation,  # type: ignore
                      pdil, max_taps, total_taps, groups, c_in, cout_g * groups, packed_m,
                      tuple(lo), tuple(ext))


def _args(x: torch.Tensor, packed: CudaPacked, bias: Optional[torch.Tensor], plan: PhasePlan,
          groups: int, out_channels: int):
    if tuple(plan.stride) != packed.stride or tuple(plan.kernel) != packed.kernel:
        raise ValueError(f"cuda engine: the plan (kernel {plan.kernel}, stride {plan.stride}) "
                         f"does not match the packed weight (kernel {packed.kernel}, stride "
                         f"{packed.stride})")
    if groups != packed.groups or out_channels != packed.out_channels:
        raise ValueError(f"cuda engine: groups/out_channels ({groups}, {out_channels}) differ "
                         f"from the packed weight's ({packed.groups}, {packed.out_channels})")
    if x.dim() != 5:
        raise ValueError(f"cuda engine: expected a batched 5-D input, got shape {tuple(x.shape)}")
    if x.shape[1] != packed.in_channels:
        raise ValueError(f"cuda engine: the input has {x.shape[1]} channels, the weight expects "
                         f"{packed.in_channels}")
    if tuple(x.shape[2:]) != tuple(plan.in_shape):
        raise ValueError(f"cuda engine: the input's spatial shape {tuple(x.shape[2:])} differs "
                         f"from the plan's {plan.in_shape}")
    if x.dtype != packed.weight.dtype or x.device != packed.weight.device:
        raise ValueError(f"cuda engine: the input ({x.dtype}, {x.device}) and the packed weight "
                         f"({packed.weight.dtype}, {packed.weight.device}) differ "
                         "in dtype or device")
    if bias is not None and (bias.dtype != x.dtype or bias.device != x.device
                             or bias.dim() != 1 or bias.numel() != out_channels):
        raise ValueError(f"cuda engine: the bias must be a 1-D tensor of {out_channels} elements "
                         f"with the input's dtype and device, got shape {tuple(bias.shape)} "
                         f"({bias.dtype}, {bias.device})")
    # Layout: the binding lays x out as the chosen kernel reads it (see forward's docstring).
    if bias is not None:
        bias = bias.detach().contiguous()
    return (x, packed.weight, packed.table, bias, list(plan.out_shape), list(packed.stride),
            list(packed.phase_dilation), list(packed.max_taps), packed.total_taps, groups,
            out_channels)


def _extra(packed: CudaPacked):
    return dict(wmma=packed.weight_mma, union_box=list(packed.union_lo) + list(packed.union_ext))


def forward(x: torch.Tensor, packed: CudaPacked, bias: Optional[torch.Tensor], plan: PhasePlan,
            groups: int, out_channels: int, force_path: int = 0) -> torch.Tensor:
    """Transposed convolution of a batched input ``x`` (N, C_in, D, H, W) on the GPU.

    Same meaning as ``reference.forward`` but takes :func:`pack`'s output.  Returns a new
    tensor (contiguous, N, C_out, D, H, W); no autograd.

    Input layout: the tensor-core kernels for 16-byte channel groups (C_in/groups a multiple
    of 8 for float16/bfloat16, of 4 for float32) read a channels-last input (N, D, H, W, C):
    a ``torch.channels_last_3d`` input is read in place, any other costs one layout copy.
    The other kernels read a contiguous input: any other layout costs one copy.

    ``force_path`` (tests, benchmarks): 0 lets the launcher choose, 1 forces the SIMT tiled
    kernel, 2 the naive kernel, 3 the tensor-core kernels (all-phase when it fits, else
    per-phase), 4 the per-phase tensor-core kernel, 5 the implicit-GEMM kernel (16-bit,
    C_in/groups a multiple of 8); adding 16 (``FORCE_NCDHW``) keeps the input contiguous
    (no channels-last kernels).
    """
    mod = load()
    args = _args(x, packed, bias, plan, groups, out_channels)
    return mod.phase_conv_fwd(*args, force_path=force_path, **_extra(packed))


def describe(x: torch.Tensor, packed: CudaPacked, bias: Optional[torch.Tensor],
             plan: PhasePlan, groups: int, out_channels: int, force_path: int = 0) -> str:
    """The kernel configuration :func:`forward` would launch for these arguments."""
    mod = load()
    return mod.describe(*_args(x, packed, bias, plan, groups, out_channels),
                        force_path=force_path, **_extra(packed))


GRAD_WEIGHT_KERNELS = {"auto": 0, "simt": 1, "tensor-cores": 2}


def _grad_weight_args(x, grad_out, packed: CudaPacked, kernel: str):
    if kernel not in GRAD_WEIGHT_KERNELS:
        raise ValueError(f"grad_weight: kernel must be one of {sorted(GRAD_WEIGHT_KERNELS)}, "
                         f"got {kernel!r}")
    return (x, grad_out, packed.table, packed.weight.numel(), list(packed.stride),
            list(packed.phase_dilation), list(packed.max_taps), packed.groups,
            GRAD_WEIGHT_KERNELS[kernel])


def grad_weight(x: torch.Tensor, grad_out: torch.Tensor, packed: CudaPacked,
                weight_shape, kernel: str = "auto") -> torch.Tensor:
    """Gradient of the weight (C_in, C_out/groups, kD, kH, kW) for a batched input ``x`` and
    ``grad_out`` (N, C_out, OD, OH, OW), from the CUDA kernels (``csrc/phase_conv_bwd.cu``):
    per phase and tap, the correlation of the input with the phase's slice of ``grad_out``,
    reduced over batch and space in a fixed order (bitwise reproducible, no atomics), then
    moved from the packed layout back to the original one.

    ``kernel``: "auto" applies the rule (tensor cores for float32/float16/bfloat16 when
    C_in/groups and C_out/groups are both >= 16, else the SIMT kernel); "simt" and
    "tensor-cores" force one (tests, benchmarks; forcing tensor cores on a layer they cannot
    take raises)."""
    mod = load()
    gpacked = mod.phase_conv_bwd_weight(*_grad_weight_args(x, grad_out, packed, kernel))
    return unpack_weight_grad(gpacked, packed, weight_shape)


def describe_grad_weight(x: torch.Tensor, grad_out: torch.Tensor, packed: CudaPacked,
                         kernel: str = "auto") -> str:
    """The kernel configuration :func:`grad_weight` would launch (reads only the shapes)."""
    return load().describe_bwd_weight(*_grad_weight_args(x, grad_out, packed, kernel))


def unpack_weight_grad(gpacked: torch.Tensor, packed: CudaPacked, weight_shape) -> torch.Tensor:
    """The inverse of :func:`pack`'s ``weight`` layout for a gradient: each phase block
    [g][ci][taps][co] is viewed in the reference engine's per-phase layout and
    ``packing.unpack_conv3d_phases`` puts it back into the weight's layout."""
    from ..packing import kernel_phase_taps, unpack_conv3d_phases

    c_in, cout_g = int(weight_shape[0]), int(weight_shape[1])
    groups = packed.groups
    cin_g = c_in // groups
    phases = []
    offset = 0
    for taps in kernel_phase_taps(packed.kernel, packed.stride, packed.padding,
                                  packed.dilation):
        shape = tuple(len(t) for t in taps)
        n = shape[0] * shape[1] * shape[2]
        if n == 0:
            phases.append(None)
            continue
        size = groups * cin_g * n * cout_g
        block = gpacked[offset:offset + size].view((groups, cin_g) + shape + (cout_g,))
        # (g, ci, td, th, tw, co) -> (g * co, ci, td, th, tw)
        phases.append(block.permute(0, 5, 1, 2, 3, 4).reshape((groups * cout_g, cin_g) + shape))
        offset += size
    return unpack_conv3d_phases(phases, tuple(weight_shape), groups, packed.stride,
                                packed.padding, packed.dilation)


class GradInputPacked(NamedTuple):
    """The input gradient's packed weights (:func:`pack_grad_input`)."""
    phases: Tuple[Optional[CudaPacked], ...]  # per phase: its stride-1 adjoint, packed
    weight: torch.Tensor             # the phases' blocks concatenated (one-launch kernel)
    sub_table: Optional[torch.Tensor]  # int64 (phases with taps, 12) on the device, or None
    stride: Tuple[int, int, int]
    phase_dilation: Tuple[int, int, int]
    max_taps: Tuple[int, int, int]
    total_taps: int


def pack_grad_input(phase_weights, groups: int, kernel, stride, padding,
                    dilation) -> GradInputPacked:
    """The input gradient's weights, from the phase sub-kernels
    (``packing.pack_conv3d_phases``'s output, None for a phase without taps).

    Phase p's input gradient is a stride-1 transposed convolution of grad_out's phase-p slice
    from C_out to C_in channels at the phase dilation (see ``reference.grad_input``), so each
    sub-kernel is packed as such a layer (``phases``: the per-phase path runs the forward
    kernels on it).  The one-launch kernel reads the same blocks concatenated, with a table
    row per phase with taps: the phase's residues (where its slice starts in grad_out), its
    taps, and the offset of its first tap measured from grad_input's voxel (the adjoint's
    first offset less the start of the phase's input window) - see ``phase_conv_fwd.cuh``."""
    kernel, stride, padding, dilation = (triple(v, name) for v, name in (
        (kernel, "kernel"), (stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    pdil = tuple(d // math.gcd(s, d) for s, d in zip(stride, dilation))
    packs = tuple(None if w is None else pack(w.detach(), groups, (1, 1, 1), (0, 0, 0), pdil)
                  for w in phase_weights)
    axes = [axis_plan(1, k, s, p, dilation=d).phases
            for k, s, p, d in zip(kernel, stride, padding, dilation)]
    rows, blocks, offset = [], [], 0
    index = 0
    for pd in axes[0]:
        for ph in axes[1]:
            for pw in axes[2]:
                packed = packs[index]
                index += 1
                if packed is None:
                    continue
                taps = tuple(len(a.taps) for a in (pd, ph, pw))
                # the adjoint's first tap offset (stride 1, no padding: taps ascend from
                # -(T-1)*pdil), less the phase's window start
                firsts = [axis_plan(1, t, 1, 0, dilation=q).phases[0].offsets[0] - a.offsets[0]
                          for t, q, a in zip(taps, pdil, (pd, ph, pw))]
                rows.append([pd.residue, ph.residue, pw.residue, *taps, *firsts, offset, 0, 0])
                blocks.append(packed.weight)
                offset += packed.weight.numel()
    if len(packs) != index:
        raise ValueError(f"pack_grad_input: {len(packs)} phase weights for {index} phases")
    ref = next((w for w in phase_weights if w is not None), None)
    if ref is None or not rows:
        return GradInputPacked(packs, torch.zeros(0), None, stride, pdil, (0, 0, 0), 0)
    weight = torch.cat(blocks).contiguous()
    # the per-phase packs read the same blocks: views into the concatenation, not a 2nd copy
    starts = iter(r[9] for r in rows)
    packs = tuple(None if p is None else
                  p._replace(weight=weight.narrow(0, next(starts), p.weight.numel()))
                  for p in packs)
    table = _device_table(rows, ref.device)
    max_taps = tuple(max(r[3 + i] for r in rows) for i in range(3))
    total = sum(r[3] * r[4] * r[5] for r in rows)
    return GradInputPacked(packs, weight, table, stride, pdil, max_taps, total)


def _grad_input_args(grad_out, gi: GradInputPacked, plan: PhasePlan, groups, in_channels):
    return (grad_out, gi.weight, gi.sub_table, list(plan.in_shape), list(gi.stride),
            list(gi.phase_dilation), list(gi.max_taps), gi.total_taps, groups, in_channels)


def describe_grad_input(grad_out: torch.Tensor, gi: GradInputPacked, plan: PhasePlan,
                        groups: int, in_channels: int) -> str:
    """How :func:`grad_input` computes this layer: the one-launch kernel's configuration, or
    the per-phase path and why."""
    if gi.sub_table is None:
        return "none (no phase has taps)"
    desc = load().describe_bwd_input(*_grad_input_args(grad_out, gi, plan, groups,
                                                       in_channels))
    if desc:
        return desc
    return ("per-phase: each phase's adjoint on the forward kernels, added in order (the "
            "one-launch kernel takes float32/float16/bfloat16 with C_in/groups and "
            "C_out/groups >= 4)")


def grad_input(grad_out: torch.Tensor, phase_weights, gi: GradInputPacked, plan: PhasePlan,
               groups: int, in_channels: int, force_path: int = 0,
               one_launch: Optional[bool] = None) -> torch.Tensor:
    """Gradient of the input (N, C_in, D, H, W) for a batched ``grad_out``.

    The rule: where the one-launch kernel takes the layer (:func:`describe_grad_input`; the
    tensor-core kernel in grad-input mode, every phase's adjoint summed in each tile, in table
    order) it runs; elsewhere (float64, narrow layers) the per-phase path: the reference
    engine's phase split (``reference.grad_input``), each phase's stride-1 transposed
    convolution on this engine's forward kernels (``force_path`` as in :func:`forward`), added
    in table order.  Both are deterministic.  ``one_launch`` True/False forces a path (tests,
    benchmarks; True raises where the kernel does not apply)."""
    from ..geometry import phase_plan
    from . import reference

    if one_launch is not False and gi.sub_table is not None:
        gx = load().phase_conv_bwd_input(*_grad_input_args(grad_out, gi, plan, groups,
                                                           in_channels))
        if gx is not None:
            return gx
        if one_launch:
            raise RuntimeError("phaseconv cuda engine: the one-launch input gradient does not "
                               "take this layer (see describe_grad_input).")

    def window(g, p, phase):
        pplan = phase_plan(phase.out_shape, phase.tap_shape, (1, 1, 1), (0, 0, 0),
                           dilation=phase.phase_dilation, output_padding=(0, 0, 0))
        return forward(g, gi.phases[p], None, pplan, groups, in_channels,
                       force_path=force_path)

    return reference.grad_input(grad_out, phase_weights, plan, groups, in_channels,
                                phase_window=window)
