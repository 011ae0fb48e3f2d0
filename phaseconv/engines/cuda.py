"""The CUDA engine: all phases of a transposed convolution in one kernel launch.

Every call sees the weight as it is.  A layer's geometry (kernel, stride, padding, dilation,
groups, channels) fixes, once, a few small device tables (:func:`layer_tables`):

* ``table``: int64 (num_phases, 12): per phase its residues (3), taps per axis (3), the input
  offset of each axis' first tap (3), the element offset of its block in the packed weight,
  the offset of its block in the tensor-core weight, 1 spare (``csrc/phase_conv_fwd.cuh``).
* ``index``: int32, one entry per weight element: the packed layout, phases in row-major
  order over their residues, phase p holding ``[groups][C_in/groups][taps_d][taps_h][taps_w]
  [C_out/groups]``, each axis' taps in ascending input-offset order (the flipped, strided
  kernel slice).  Entry i names the weight element (C order) that lands at i: every tap
  belongs to exactly one phase, so this is a permutation, and the weight gradient is the
  scatter through the same map.
* ``mma_taps`` (float32/float16/bfloat16): int64 (kernel taps, 2), where the tensor-core
  layout puts each kernel tap.  That layout holds phase p as ``[groups][taps][G][C_out/groups]
  [CG]`` with ``CG`` channels of 16 bytes (4 for float32, 8 for 16-bit types), ``G =
  ceil((C_in/groups) / CG)``, zero-padded past C_in/groups; it is made a 16-byte chunk a
  thread, placed by this table (``pack_mma_kernel``).  Its index map
  (:func:`forward_mma_index`, -1 for padding) defines the layout; the tests check the table
  and the pack against it, and no call builds it.
* ``gi_table``/``gi_index``: the input gradient's sub-kernels (each phase's stride-1 adjoint,
  its blocks concatenated) and one table row per phase with taps.

Each forward packs the weight into the layout its kernel reads (one launch,
``csrc/phase_conv_pack.cu``) and runs the kernel; the backward packs the input gradient's
blocks, or its tensor-core layout (one launch), runs the one-launch input gradient and the
weight gradient, which writes straight into a tensor with the weight's own strides.  The TMA
tiles (forward and input gradient) read a 16-bit ``channels_last_3d`` weight in place instead
(:func:`weight_in_place`, :func:`grad_input_weight_in_place`: no pack; a memset zeroes the
call's non-finite flag).  The launches are planned once per (input shape, layout, dtype,
device): :class:`ForwardPlan` / :class:`BackwardPlan` in ``csrc/phase_conv.cpp`` keep the
kernel plan, so a call does no tile search, and no call waits for the GPU (the tables reach
the device by asynchronous copies from pinned memory).

:func:`load` builds the extension on first use (one line on stderr while nvcc runs) for the
present GPU's architecture only, and caches it across processes in torch's extension
directory, one build directory per architecture and toolchain: ninja compiles the translation
units in parallel and, after an edit, only those whose sources changed.
"""
import hashlib
import itertools
import math
import os
import re
import sys
import threading
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import torch

from ..checks import ConvArgs, triple
from ..geometry import AxisPhase, axis_plan
from ..packing import pack_conv3d_phases, select_taps
from . import input_layout, output_channels_last

# phaseconv/csrc: a link to the repository's csrc/ in a checkout, a copy in an installed wheel.
CSRC = Path(__file__).resolve().parent.parent / "csrc"
_HEADERS = ("phase_conv_plan.h", "phase_conv_dtype.cuh", "phase_conv_exact.cuh",
            "phase_conv_mma.cuh", "phase_conv_wgmma.cuh", "phase_conv_pack.cuh",
            "phase_conv_launch.cuh", "phase_conv_tma.cuh", "phase_conv_fastdiv.cuh",
            "phase_conv_fwd.cuh",
            "phase_conv_fwd_common.cuh", "phase_conv_fwd_gemm.cuh", "phase_conv_fwd_gemm_tiles.cuh",
            "phase_conv_fwd_gemm_tma.cuh",
            "phase_conv_bwd.cuh", "phase_conv_bwd_depthwise.cuh",
            "phase_conv_bwd_narrow.cuh", "phase_conv_bwd_input_narrow.cuh")
# one translation unit each, compiled in parallel (kernel families: phase_conv_fwd_common.cuh)
_CUDA_SOURCES = ("phase_conv_pack.cu", "phase_conv_layout.cu", "phase_conv_fwd_tiled.cu",
                 "phase_conv_fwd_naive.cu", "phase_conv_fwd_mma.cu",
                 "phase_conv_fwd_allphase.cu", "phase_conv_fwd_gemm_float.cu",
                 "phase_conv_fwd_gemm_half.cu", "phase_conv_fwd_gemm_bfloat16.cu",
                 "phase_conv_fwd_gemm_tma_packed.cu", "phase_conv_fwd_gemm_tma_weight_mn.cu",
                 "phase_conv_fwd_gemm_tma_weight_k.cu",
                 "phase_conv_fwd_depthwise.cu", "phase_conv_fwd.cu",
                 "phase_conv_bwd.cu", "phase_conv_bwd_depthwise.cu",
                 "phase_conv_bwd_narrow.cu", "phase_conv_bwd_input_narrow.cu",
                 "phase_conv_tma.cu")
# the torch binding and the kernel plan (plain C++: tests/plan/test_plan.py builds it alone)
_CPP_SOURCES = ("phase_conv.cpp", "phase_conv_plan.cpp")
_SOURCES = _HEADERS + _CUDA_SOURCES + _CPP_SOURCES
TABLE_STRIDE = 12
# kernels by name (csrc/phase_conv_plan.h: PhaseConvFamily); "auto": the plan's rule
# tensor-cores: all-phase where a tile fits, else mma
FORWARD_KERNELS = {"auto": 0, "gemm": 1, "allphase": 2, "mma": 3, "tiled": 4, "naive": 5,
                   "tensor-cores": 9, "depthwise": 10}
GRAD_INPUT_KERNELS = {"auto": 0, "implicit-gemm": 1, "tensor-cores": 3, "naive": 5,
                      "depthwise": 10, "tensor-cores-narrow": 14}
GRAD_WEIGHT_KERNELS = {"auto": 0, "tensor-cores": 6, "simt": 7, "naive": 8, "depthwise": 11,
                       "tensor-cores-cl": 12, "tensor-cores-narrow": 13,
                       "tensor-cores-wgmma": 15, "tensor-cores-tma": 16}


GEMM_TILE_KINDS = 12  # the implicit GEMM's tile kinds, 0-11 (csrc/phase_conv_plan.h: GemmCfg)


class ForwardKernel(NamedTuple):
    """A forward kernel named instead of chosen by the plan's rule (tests, benchmarks).  The
    plan refuses a layer the named kernel cannot take; nothing is rerouted."""
    family: str = "auto"            # a key of FORWARD_KERNELS
    contiguous_input: bool = False  # never the channels-last kernels
    gemm_tile: int = -1             # implicit GEMM tile kind 0-11 (4, 5: sm_90a wgmma; 6, 7:
                                    # the phases share A, k == s layers, 7 on wgmma; 8, 9: wgmma
                                    # fed by the TMA unit, 128 and 256 rows; 10: 8 ping-ponged
                                    # between two consumer warpgroups; 11: 9 in persistent
                                    # blocks; -1: the rule)
    gemm_one_phase: bool = False    # implicit GEMM: one phase per block
    gemm_k32: bool = False          # implicit GEMM: 4 channel groups a k step (32 16-bit
                                    # channels, 16 float32 ones)
    direct_stores: bool = False     # all-phase kernel: no staged output
    allph_tile: int = -1            # all-phase tile kind 0-4 (-1: the rule)

    def codes(self):
        """The C++ PhaseConvForce fields, in order."""
        if self.family not in FORWARD_KERNELS:
            raise ValueError(f"kernel must be one of {sorted(FORWARD_KERNELS)}, got "
                             f"{self.family!r}")
        if not -1 <= self.allph_tile <= 4:
            raise ValueError(f"allph_tile must be -1 (the rule) or 0-4, got {self.allph_tile!r}")
        if not -1 <= self.gemm_tile < GEMM_TILE_KINDS:
            raise ValueError(f"gemm_tile must be -1 (the rule) or 0-{GEMM_TILE_KINDS - 1}, got "
                             f"{self.gemm_tile!r}")
        return [FORWARD_KERNELS[self.family], int(self.contiguous_input), int(self.gemm_tile),
                int(self.gemm_one_phase), int(self.gemm_k32), int(self.direct_stores),
                int(self.allph_tile)]


_AUTO = ForwardKernel()


def forward_kernel(kernel) -> ForwardKernel:
    """A :class:`ForwardKernel` from itself or a family name."""
    if isinstance(kernel, ForwardKernel):
        return kernel
    return _AUTO if kernel == "auto" else ForwardKernel(kernel)


_MMA_CHANNELS = {torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}  # CG: 16 bytes

_lock = threading.Lock()
_modules = {}  # arch -> module


def _arch() -> Tuple[int, int]:
    return torch.cuda.get_device_capability(torch.cuda.current_device())


def warpgroup_kernels() -> bool:
    """Whether the plans on the current GPU offer the warpgroup (wgmma) kernels: an sm_90 GPU
    and an engine built for sm_90a (the engine's DevInfo::wgmma)."""
    return _arch() == (9, 0) and bool(load().sm90a)


def load():
    """The compiled extension for the current GPU (built on first use, then cached)."""
    if not torch.cuda.is_available():
        raise RuntimeError("phaseconv cuda engine: CUDA is not available")
    major, minor = _arch()
    key = (major, minor)
    mod = _modules.get(key)
    if mod is not None:
        return mod
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = prebuilt(major, minor) or _build(major, minor)
            _modules[key] = mod
        return mod


def source_hash() -> str:
    """A hash of the CUDA sources as shipped: an engine built from other sources is not used."""
    digest = hashlib.sha1()
    for name in _SOURCES:
        digest.update(name.encode())
        try:
            digest.update((CSRC / name).read_bytes())
        except OSError as exc:
            raise RuntimeError(f"phaseconv cuda engine: cannot read the CUDA sources in {CSRC}: "
                               f"{exc}") from exc
    return digest.hexdigest()[:16]


def installed_engine():
    """The ahead-of-time engine module (``phaseconv._engine``, built by
    ``PHASECONV_BUILD_CUDA=1 pip install ...`` for ``$TORCH_CUDA_ARCH_LIST``), or None."""
    try:
        import importlib

        return importlib.import_module("phaseconv._engine")
    except (ImportError, OSError):
        return None


def from_these_sources(mod) -> bool:
    """Whether an ahead-of-time engine was built from the shipped sources."""
    return getattr(mod, "source_hash", None) == "h" + source_hash()


def prebuilt(major: int, minor: int):
    """The ahead-of-time engine when it holds this architecture and was built from these
    sources; else None, and the engine is compiled on first use."""
    mod = installed_engine()
    if mod is None or not from_these_sources(mod):
        return None
    return mod if f"{major}{minor}" in re.findall(r"sm(\d+)", getattr(mod, "archs", "")) else None


def _extension(major: int, minor: int):
    """(name, nvcc flags) of the extension for one architecture.  The name carries a hash of
    the flags and the torch build but not of the sources: one build directory per
    architecture and toolchain, where ninja recompiles only the units whose sources (or the
    headers they include) changed."""
    arch = f"{major}{minor}"
    target = build_target(major, minor)
    cuda_flags = ["-O3", f"-gencode=arch=compute_{target},code=sm_{target}",
                  *cxx_standard_flags()]
    if target == "90a":
        # the sm_90a build holds the warpgroup (wgmma) kernels; the plan runs them on sm_90
        # only when the engine says it was built so (PHASECONV_SM90A, DevInfo::wgmma)
        cuda_flags.append("-DPHASECONV_SM90A")
    digest = hashlib.sha1(" ".join(cuda_flags).encode())
    digest.update(torch.__version__.encode())
    digest.update(str(torch.version.cuda).encode())
    return f"phaseconv_cuda_sm{arch}_{digest.hexdigest()[:12]}", cuda_flags


def cxx_standard_flags() -> List[str]:
    """The engine is C++17.  torch 2.x's extension builder says so itself; torch 1.13's passes
    ``-std=c++14``, which a later ``-std=c++17`` overrides (nvcc notes the redefinition)."""
    return ["-std=c++17"] if int(torch.__version__.split(".")[0]) < 2 else []


def gencode_flags(arch_list: str) -> Tuple[List[str], List[str]]:
    """nvcc's ``-gencode`` flags for a ``TORCH_CUDA_ARCH_LIST`` value ("8.0;9.0", "9.0a",
    "8.6+PTX"), and the architectures' names ("80", "90a").  Given to nvcc as ours, so that
    torch's extension builder adds none of its own: torch 1.13's refuses "9.0"."""
    flags, names = [], []
    for token in arch_list.replace(";", " ").split():
        arch, ptx = (token[:-4], True) if token.endswith("+PTX") else (token, False)
        match = re.fullmatch(r"(\d+)\.(\d)(a?)", arch)
        if match is None:
            raise ValueError(f"TORCH_CUDA_ARCH_LIST: {token!r} is not an architecture such as "
                             f"8.0, 9.0, 9.0a or 8.6+PTX")
        name = "".join(match.groups())
        flags.append(f"-gencode=arch=compute_{name},code=sm_{name}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{name},code=compute_{name}")
        names.append(name)
    if not names:
        raise ValueError("TORCH_CUDA_ARCH_LIST names no architecture (e.g. \"8.0;9.0\")")
    return flags, names


def build_target(major: int, minor: int) -> str:
    """The architecture the first-use build compiles for: the GPU's own, except sm_90a on
    sm_90 when the CUDA toolkit torch builds with knows it (CUDA 12.0 and later)."""
    if (major, minor) == (9, 0) and int((torch.version.cuda or "0").split(".")[0]) >= 12:
        return "90a"
    return f"{major}{minor}"


def build_root() -> Path:
    """Where torch keeps built extensions (``$TORCH_EXTENSIONS_DIR`` or its default)."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(root) if root else Path(cpp_extension.get_default_build_root())


_STAMP = "phaseconv-sources.sha1"  # beside the module: the source hash it was last built from


def built(major: int, minor: int) -> Optional[Path]:
    """The built extension for this architecture if the cache holds one built from these
    sources (else None: the next :func:`load` compiles what changed)."""
    name = _extension(major, minor)[0]
    for directory in (build_root() / name, *build_root().glob(f"*/{name}")):
        stamp = directory / _STAMP
        if stamp.is_file() and stamp.read_text().strip() == source_hash():
            for path in sorted(directory.glob(f"{name}*.so")):
                return path
    return None


def _build(major: int, minor: int):
    from torch.utils import cpp_extension

    name, cuda_flags = _extension(major, minor)
    arch = f"{major}{minor}"
    directory = build_root() / name
    directory.mkdir(parents=True, exist_ok=True)
    # Each source its own translation unit, compiled as it is (the kernel files include only
    # CUDA's headers), in parallel by ninja, and only what changed is rebuilt.
    kwargs = dict(
        name=name,
        sources=[str(CSRC / n) for n in _CPP_SOURCES + _CUDA_SOURCES],
        extra_cflags=["-O3"] + [f for f in cuda_flags if f.startswith(("-D", "-std"))],
        extra_cuda_cflags=cuda_flags,
        extra_include_paths=[str(CSRC)],
        build_directory=str(directory),
        verbose=False,
    )
    if built(major, minor) is None:
        what = ("compiling the CUDA engine" if not any(directory.glob(f"{name}*.so")) else
                "recompiling the changed parts of the CUDA engine")
        print(f"phaseconv: {what} for sm_{arch} (once; cached in {directory})",
              file=sys.stderr, flush=True)
    try:
        mod = cpp_extension.load(**kwargs)
    except Exception as exc:  # nvcc / ninja errors carry the compiler's output
        msg = str(exc)
        out = getattr(exc, "output", None)
        if isinstance(out, bytes):
            msg += "\n" + out.decode(errors="replace")
        elif isinstance(out, str):
            msg += "\n" + out
        if cxx_standard_flags() and os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # torch 1.13's builder adds $TORCH_CUDA_ARCH_LIST's architectures to ours and
            # refuses any past 8.6
            msg += ("\n(torch < 2 compiles the extension for $TORCH_CUDA_ARCH_LIST too, and "
                    "knows no architecture past 8.6: unset it; the engine is built for this "
                    "GPU's architecture)")
        raise RuntimeError("phaseconv cuda engine: building the extension failed:\n" + msg) \
            from exc
    (directory / _STAMP).write_text(source_hash() + "\n")
    return mod


# ---------------------------------------------------------------------------- layer tables

class HostTables(NamedTuple):
    """A layer geometry's tables on the host (see the module docstring); pure function of
    the weight's shape, groups, stride, padding, dilation and the tensor-core channel group
    (0: no tensor-core layout)."""
    table: torch.Tensor               # int64 (num_phases, 12)
    index: torch.Tensor               # int32 (weight elements,)
    gi_table: torch.Tensor            # int64 (phases with taps, 12)
    gi_index: torch.Tensor            # int32 (weight elements,)
    stride: Tuple[int, int, int]
    phase_dilation: Tuple[int, int, int]
    max_taps: Tuple[int, int, int]
    total_taps: int
    union_box: Tuple[int, ...]        # first input offset over all phases' taps, then span
    gi_max_taps: Tuple[int, int, int]
    gi_total_taps: int
    # int64 (kernel taps, 2): per kernel tap (C order over kD, kH, kW), the tensor-core layout's
    # position of (group 0, channel group 0, column 0) and the step per group (forward_mma_index);
    # None without the layout
    mma_taps: Optional[torch.Tensor] = None


def _packed_layouts(w: torch.Tensor, groups: int, stride, padding, dilation, cg: int,
                    with_mma: bool = False):
    """The packed layout of ``w`` in torch ops (and, ``with_mma``, the tensor-core layout of
    ``cg`` channel groups), with the phase table rows and, with ``cg``, the tensor-core tap
    table: how the index maps are made (``w`` holds element numbers)."""
    c_in, cout_g = int(w.shape[0]), int(w.shape[1])
    kernel = tuple(int(k) for k in w.shape[2:])
    plans = [_residue_phases(k, s, p, d) for k, s, p, d in zip(kernel, stride, padding, dilation)]
    cin_g = c_in // groups
    wg = w.reshape(groups, cin_g, cout_g, *kernel)
    rows, parts, mparts = [], [], []
    offset = moffset = 0
    ngrp = -(-cin_g // cg) if cg else 0
    ksize = math.prod(kernel)
    # per kernel tap: where (group 0, channel group 0, column 0) of its tensor-core block
    # lies, and the step to the next group
    mma_taps = [[0, 0] for _ in range(ksize)] if cg else None
    for pd in plans[0]:
        for ph in plans[1]:
            for pw in plans[2]:
                taps = (pd.taps, ph.taps, pw.taps)
                ntaps = len(pd.taps) * len(ph.taps) * len(pw.taps)
                offs = tuple(a.offsets[0] if a.taps else 0 for a in (pd, ph, pw))
                rows.append([pd.residue, ph.residue, pw.residue,
                             len(pd.taps), len(ph.taps), len(pw.taps),
                             offs[0], offs[1], offs[2], offset, moffset, 0])
                if not ntaps:
                    continue
                sub = select_taps(wg, 3, taps)
                # (g, ci, co, td, th, tw) -> (g, ci, td, th, tw, co)
                parts.append(sub.permute(0, 1, 3, 4, 5, 2).reshape(-1))
                offset += groups * cin_g * cout_g * ntaps
                if cg:
                    run = ngrp * cg * cout_g  # one tap's block of one group
                    for t, (kd, kh, kw) in enumerate(itertools.product(*taps)):
                        mma_taps[(kd * kernel[1] + kh) * kernel[2] + kw] = [
                            moffset + t * run, ntaps * run]
                    moffset += groups * ntaps * run
                if with_mma:
                    # (g, ci, co, td, th, tw) -> (g, tap, ci, co) -> (g, tap, G, co, CG)
                    m = sub.permute(0, 3, 4, 5, 1, 2).reshape(groups, ntaps, cin_g, cout_g)
                    m = torch.nn.functional.pad(m, (0, 0, 0, ngrp * cg - cin_g))
                    m = m.reshape(groups, ntaps, ngrp, cg, cout_g).permute(0, 1, 2, 4, 3)
                    mparts.append(m.reshape(-1))
    packed = torch.cat(parts)
    packed_mma = torch.cat(mparts) if with_mma else None
    max_taps = tuple(max(len(ph.taps) for ph in a) for a in plans)
    lo, ext = [], []
    for a in plans:
        spans = [(ph.offsets[0], ph.offsets[-1]) for ph in a if ph.taps]
        lo.append(min(sp[0] for sp in spans))
        ext.append(max(sp[1] for sp in spans) - lo[-1])
    return rows, packed, packed_mma, max_taps, tuple(lo) + tuple(ext), mma_taps


def _residue_phases(kernel: int, stride: int, padding: int, dilation: int):
    """Every residue of one axis, those without taps included: the kernels' phase table has
    a row per residue (``engines.choose`` bounds their number)."""
    phases = axis_plan(1, kernel, stride, padding, dilation=dilation).phases
    with_taps = {ph.residue: ph for ph in phases}
    return [with_taps.get(r, AxisPhase(r, r, 0, (), (), phases[0].phase_dilation))
            for r in range(stride)]


def _grad_input_layout(w: torch.Tensor, groups: int, stride, padding, dilation):
    """The input gradient's blocks and table rows.  Phase p's input gradient is a stride-1
    transposed convolution of grad_out's phase-p slice from C_out to C_in channels at the
    phase dilation (``reference.grad_input``), so each phase sub-kernel
    (``packing.pack_conv3d_phases``) is packed as such a layer; the one-launch kernel reads
    the blocks concatenated, with a row per phase with taps: the phase's residues (where its
    slice starts in grad_out), its taps, and the offset of its first tap measured from
    grad_input's voxel (the adjoint's first offset less the start of the phase's input
    window)."""
    kernel = tuple(int(k) for k in w.shape[2:])
    pdil = tuple(d // math.gcd(s, d) for s, d in zip(stride, dilation))
    phase_weights = pack_conv3d_phases(w, groups, stride, padding, dilation)
    axes = [axis_plan(1, k, s, p, dilation=d).phases
            for k, s, p, d in zip(kernel, stride, padding, dilation)]
    rows, blocks, offset, index = [], [], 0, 0
    for pd in axes[0]:
        for ph in axes[1]:
            for pw in axes[2]:
                sub = phase_weights[index]
                index += 1
                taps = tuple(len(a.taps) for a in (pd, ph, pw))
                # the adjoint's first tap offset (stride 1, no padding: taps ascend from
                # -(T-1)*pdil), less the phase's window start
                firsts = [axis_plan(1, t, 1, 0, dilation=q).phases[0].offsets[0] - a.offsets[0]
                          for t, q, a in zip(taps, pdil, (pd, ph, pw))]
                rows.append([pd.residue, ph.residue, pw.residue, *taps, *firsts, offset, 0, 0])
                block = _packed_layouts(sub, groups, (1, 1, 1), (0, 0, 0), pdil, 0)[1]
                blocks.append(block)
                offset += block.numel()
    max_taps = tuple(max(r[3 + i] for r in rows) for i in range(3))
    total = sum(r[3] * r[4] * r[5] for r in rows)
    return rows, torch.cat(blocks), max_taps, total


def _element_ids(weight_shape, stride, padding, dilation):
    """The weight's element numbers plus one (so that zero padding reads -1 after the shift
    back), and the geometry as triples."""
    stride, padding, dilation = (triple(v, name) for v, name in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    shape = tuple(int(n) for n in weight_shape)
    numel = math.prod(shape)
    if numel >= 2**31 - 1:
        raise ValueError(f"weight: the cuda engine takes weights below 2^31 elements, got shape "
                         f"{shape}")
    return torch.arange(1, numel + 1, dtype=torch.int64).reshape(shape), stride, padding, dilation


def host_tables(weight_shape, groups: int, stride, padding, dilation, cg: int) -> HostTables:
    """The tables of a layer geometry, made on the host from element numbers run through the
    packing code (so an index map is the packing itself, by construction)."""
    ids, stride, padding, dilation = _element_ids(weight_shape, stride, padding, dilation)
    rows, packed, _, max_taps, union, mma_taps = _packed_layouts(
        ids, groups, stride, padding, dilation, cg)
    gi_rows, gi_packed, gi_max, gi_total = _grad_input_layout(ids, groups, stride, padding,
                                                              dilation)
    pdil = tuple(d // math.gcd(s, d) for s, d in zip(stride, dilation))
    return HostTables(
        torch.tensor(rows, dtype=torch.int64), (packed - 1).to(torch.int32),
        torch.tensor(gi_rows, dtype=torch.int64), (gi_packed - 1).to(torch.int32),
        stride, pdil, max_taps, sum(r[3] * r[4] * r[5] for r in rows), union, gi_max, gi_total,
        None if mma_taps is None else torch.tensor(mma_taps, dtype=torch.int64))


def forward_mma_index(weight_shape, groups: int, stride, padding, dilation,
                      cg: int) -> torch.Tensor:
    """The index map (int32, host; -1 for zero padding) of the forward's tensor-core layout of
    ``cg`` channel groups (module docstring: ``mma_taps``).  The engine packs it from the
    layer's ``mma_taps`` (``pack_weight_mma``); this map defines it, for the tests."""
    ids, stride, padding, dilation = _element_ids(weight_shape, stride, padding, dilation)
    packed_mma = _packed_layouts(ids, groups, stride, padding, dilation, cg, with_mma=True)[2]
    return (packed_mma - 1).to(torch.int32)


def grad_input_mma_index(weight_shape, groups: int, cg: int = 8) -> torch.Tensor:
    """The index map (int32, host) of the input gradient's tensor-core layout,
    ``[groups][kD][kH][kW][C_out/g / cg][C_in/g][cg]``: groups of ``cg`` output channels (8
    for the narrow kernel, 4 for float32's implicit GEMM).  The engine packs it without
    the map (``pack_weight_mma(..., over_outputs=True)``); this map defines it, for the tests."""
    c_in, cout_g = int(weight_shape[0]), int(weight_shape[1])
    kernel = tuple(int(k) for k in weight_shape[2:])
    ids = torch.arange(c_in * cout_g * math.prod(kernel), dtype=torch.int32)
    return (ids.view(groups, c_in // groups, cout_g // cg, cg, *kernel)
            .permute(0, 4, 5, 6, 2, 1, 3).reshape(-1))


class LayerTables(NamedTuple):
    """:class:`HostTables` on a device, plus the event that marks their copies done."""
    host: HostTables
    table: torch.Tensor
    index: torch.Tensor
    mma_taps: Optional[torch.Tensor]
    gi_table: torch.Tensor
    gi_index: torch.Tensor
    ready: list  # [the copies' CUDA event, device], emptied once the event has completed


_tables = {}  # (weight shape, groups, stride, padding, dilation, cg, device) -> LayerTables


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # pinned and asynchronous: a pageable copy would wait for the stream
    return t.pin_memory().to(device, non_blocking=True)


def layer_tables(weight_shape, groups: int, stride, padding, dilation, dtype: torch.dtype,
                 device: torch.device) -> LayerTables:
    """The device tables of a layer geometry, made once per (geometry, dtype class, device).
    Nothing writes to them."""
    cg = _MMA_CHANNELS.get(dtype, 0)
    key = (tuple(weight_shape), groups, tuple(stride), tuple(padding), tuple(dilation), cg,
           device)
    found = _tables.get(key)
    if found is not None:
        return found
    host = host_tables(weight_shape, groups, stride, padding, dilation, cg)
    with torch.cuda.device(device):
        moved = [None if t is None else _to_device(t, device)
                 for t in (host.table, host.index, host.mma_taps, host.gi_table, host.gi_index)]
        event = torch.cuda.Event()
        event.record()
    tables = LayerTables(host, *moved, [event, device])
    with _lock:
        if len(_tables) >= 256:  # many distinct geometries: start over
            _tables.clear()
        return _tables.setdefault(key, tables)


def wait_for_tables(tables: LayerTables) -> None:
    """Orders the current stream after the tables' copies (they were queued on the stream of
    the call that made them; another stream may come first)."""
    try:
        event, device = tables.ready  # emptied by another thread: nothing left to wait for
    except ValueError:
        return
    if event.query():
        tables.ready.clear()
    else:
        torch.cuda.current_stream(device).wait_event(event)


# ---------------------------------------------------------------------------- planned calls

def _meta(shape, dtype, device) -> torch.Tensor:
    """A tensor of ``shape`` that a plan reads the metadata of (no storage of that size)."""
    return torch.empty((1,), dtype=dtype, device=device).expand(tuple(shape))


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


_forward_plans = {}
_backward_plans = {}


def _planned(cache: dict, key, args: ConvArgs, batch: int, dtype: torch.dtype, device,
             make):
    """``(tables, plan)`` for ``key``, made once: ``make(tables, x, weight, device)`` builds
    the C++ plan from the layer's device tables and metadata-only stand-ins for the input and
    the weight."""
    found = cache.get(key)
    if found is not None:
        return found
    device = _device(device)
    weight_shape = (args.in_channels, args.out_channels // args.groups) + tuple(args.kernel)
    tables = layer_tables(weight_shape, args.groups, args.stride, args.padding, args.dilation,
                          dtype, device)
    plan = make(tables, _meta((batch, args.in_channels) + tuple(args.in_shape), dtype, device),
                _meta(weight_shape, dtype, device), device)
    if len(cache) >= 2048:  # many distinct calls: start over
        cache.clear()
    cache[key] = (tables, plan)
    return tables, plan


def forward_plan(args: ConvArgs, batch: int, dtype: torch.dtype, device: torch.device,
                 channels_last: bool = False, has_bias: bool = False, kernel="auto",
                 out_channels_last: bool = False):
    """The forward of ``args`` for a batch, dtype, device and input layout, planned once:
    ``(tables, plan)`` with ``plan(x, weight, bias)`` the launch (C++ ``ForwardPlan``).
    ``out_channels_last``: the result comes ``channels_last_3d`` (the implicit GEMM writes it
    so, and the all-phase kernel where one group has 16 or more output channels; the other
    kernels' result is copied once, which the description says).

    ``kernel`` (tests, benchmarks): "auto" lets the plan choose; a family name of
    :data:`FORWARD_KERNELS` or a :class:`ForwardKernel` forces one."""
    kernel = forward_kernel(kernel)

    def make(tables, x, weight, device):
        host = tables.host
        return load().ForwardPlan(
            x, weight, has_bias, channels_last, tables.table, tables.index, tables.mma_taps,
            list(args.out_shape), list(host.stride), list(host.phase_dilation),
            list(host.max_taps), host.total_taps, args.groups, list(host.union_box),
            list(args.padding), list(args.dilation), kernel.codes(), out_channels_last)

    key = (args, batch, dtype, device, channels_last, has_bias, kernel, out_channels_last)
    return _planned(_forward_plans, key, args, batch, dtype, device, make)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], args: ConvArgs,
            kernel="auto", out_channels_last: bool = False) -> torch.Tensor:
    """Transposed convolution of a batched input ``x`` (N, C_in, D, H, W); ``args`` from
    ``checks.check_conv_transpose3d``.  Returns a new (N, C_out, D, H, W) tensor, contiguous
    or (``out_channels_last``) ``channels_last_3d``; no autograd.  The planned kernel reads a
    ``torch.channels_last_3d`` input in place where it reads that layout; any other layout it
    does not read costs one copy."""
    tables, plan = forward_plan(args, x.shape[0], x.dtype, x.device, input_layout(x) == 1,
                                bias is not None, kernel, out_channels_last)
    if tables.ready:
        wait_for_tables(tables)
    return plan(x, weight, bias)


# what a description adds where the kernel reads the weight itself (no pack)
WEIGHT_IN_PLACE_NOTE = ", weight read in place (channels_last_3d)"


def describe(args: ConvArgs, batch: int, dtype: torch.dtype, device: torch.device,
             channels_last: bool = False, kernel="auto", out_channels_last: bool = False,
             weight_strides: Optional[Tuple[int, ...]] = None) -> str:
    """The kernel and tile :func:`forward` launches for these arguments; with
    ``weight_strides`` (a weight's layout), whether it reads that weight in place."""
    plan = forward_plan(args, batch, dtype, device, channels_last, False,
                        kernel, out_channels_last)[1]
    if weight_strides is not None and plan.weight_strides_in_place(list(weight_strides)):
        return plan.description + WEIGHT_IN_PLACE_NOTE
    return plan.description


def weight_in_place(args: ConvArgs, batch: int, dtype: torch.dtype, device: torch.device,
                    weight: torch.Tensor, channels_last: bool = False, kernel="auto",
                    out_channels_last: bool = False) -> bool:
    """Whether :func:`forward` reads ``weight`` in place, with no pack (the TMA tiles: a 16-bit
    weight whose output channels are adjacent, as in ``channels_last_3d``, its other strides
    multiples of 16 bytes, its data 16-byte aligned)."""
    plan = forward_plan(args, batch, dtype, device, channels_last, False, kernel,
                        out_channels_last)[1]
    return bool(plan.weight_in_place(weight))


GI_TILE_SHIFT = 8  # csrc/phase_conv_plan.h: PHASECONV_GI_TILE_SHIFT


def grad_input_code(kernel: str = "auto", tile: Optional[int] = None) -> int:
    """The plan's code of a named input-gradient kernel (``GRAD_INPUT_KERNELS``), with the
    implicit GEMM's tile (its kind, as ``ForwardKernel.gemm_tile``) where one is named."""
    if kernel not in GRAD_INPUT_KERNELS:
        raise ValueError(f"grad_input_kernel must be one of {sorted(GRAD_INPUT_KERNELS)}, got "
                         f"{kernel!r}")
    if tile is None:
        return GRAD_INPUT_KERNELS[kernel]
    if kernel != "implicit-gemm" or not 0 <= tile < GEMM_TILE_KINDS:
        raise ValueError(f"grad_input_tile names an implicit-gemm tile (0-{GEMM_TILE_KINDS - 1}), "
                         f"got {tile!r} for {kernel!r}")
    return GRAD_INPUT_KERNELS[kernel] | (tile + 1) << GI_TILE_SHIFT


def backward_plan(args: ConvArgs, batch: int, dtype: torch.dtype, device: torch.device,
                  grad_input_kernel: str = "auto", grad_weight_kernel: str = "auto",
                  grad_input_tile: Optional[int] = None):
    """The backward of ``args`` planned once: ``(tables, plan)`` with
    ``plan(grad_y, x, weight, need_input, need_weight, grad_input_channels_last)`` the
    launches (C++ ``BackwardPlan``).

    The rules (``csrc/phase_conv_plan.h``; visible in :func:`describe_backward` and
    ``explain()``):
    depthwise layers run the depthwise kernels; the input gradient of wide 16-bit layers (and
    float32 ones with C_out/g >= 16 and C_in/g >= 64) the
    implicit GEMM, of float32/float16/bfloat16 layers with 16 (16-bit only), 8 or fewer output
    channels per group (and whole octets of input channels) the narrow tensor-core kernel, of
    other layers with 4 channels per group or more on both sides the per-phase tensor-core
    kernel, else the naive one; the weight gradient of float32/float16/bfloat16 layers with 8
    channels per group on one side (whole octets on the other), or fewer than 8 output channels
    and whole octets of input channels, the narrow tensor-core kernel, of 16-bit layers with
    channel counts per group multiples of 8 (and >= 16) the channels-last tensor-core GEMM (on
    an sm_90a build, with C_in/g >= 64 and C_out/g >= 32, its warpgroup form
    ``tensor-cores-wgmma``, and its TMA form ``tensor-cores-tma`` for strides up to 8 where
    the TMA boxes pad the reduction's rows, each phase's outputs times its taps, by 5% or
    less), of other float32/float16/bfloat16 layers with both >= 16 the contiguous one, else
    the SIMT kernel. ``grad_input_kernel`` and ``grad_weight_kernel`` force
    one by name (``GRAD_INPUT_KERNELS``, ``GRAD_WEIGHT_KERNELS``: tests, benchmarks), and
    ``grad_input_tile`` the implicit GEMM's tile; forcing a kernel on a layer it cannot take
    raises.
    """
    gi_code = grad_input_code(grad_input_kernel, grad_input_tile)
    if grad_weight_kernel not in GRAD_WEIGHT_KERNELS:
        raise ValueError(f"grad_weight_kernel must be one of {sorted(GRAD_WEIGHT_KERNELS)}, "
                         f"got {grad_weight_kernel!r}")
    def make(tables, x, weight, device):
        host = tables.host
        return load().BackwardPlan(
            x, weight,
            _meta((batch, args.out_channels) + tuple(args.out_shape), dtype, device),
            args.groups, list(host.stride), list(host.phase_dilation), tables.table,
            tables.index, list(host.max_taps), tables.gi_table, tables.gi_index,
            list(host.gi_max_taps), host.gi_total_taps, list(args.padding),
            list(args.dilation), gi_code, GRAD_WEIGHT_KERNELS[grad_weight_kernel])

    key = (args, batch, dtype, device, gi_code, grad_weight_kernel)
    return _planned(_backward_plans, key, args, batch, dtype, device, make)


def backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, args: ConvArgs,
             need_input: bool = True, need_weight: bool = True,
             grad_input_kernel: str = "auto", grad_weight_kernel: str = "auto",
             grad_input_tile: Optional[int] = None,
             grad_input_channels_last: Optional[bool] = None):
    """(grad_input, grad_weight) of a batched call, None where not asked for.  Deterministic:
    fixed summation orders, no atomics.  grad_weight has the weight's strides where the
    weight is contiguous or ``channels_last_3d``, else it is contiguous.  grad_input is
    ``channels_last_3d`` where ``grad_input_channels_last`` says so, by default where torch
    returns it so (:func:`phaseconv.engines.output_channels_last`: x or the weight suggesting
    it, float64 aside); the implicit GEMM writes it in that layout, other kernels' results
    are copied."""
    tables, plan = backward_plan(args, x.shape[0], x.dtype, x.device, grad_input_kernel,
                                 grad_weight_kernel, grad_input_tile)
    if tables.ready:
        wait_for_tables(tables)
    if grad_input_channels_last is None:
        grad_input_channels_last = output_channels_last(x, weight)
    return plan(grad_y, x, weight, need_input, need_weight, bool(grad_input_channels_last))


def describe_backward(args: ConvArgs, batch: int, dtype: torch.dtype, device: torch.device,
                      weight_strides: Optional[Tuple[int, ...]] = None) -> Tuple[str, str]:
    """(input-gradient, weight-gradient) kernels :func:`backward` launches; with
    ``weight_strides`` (a weight's layout), whether the input gradient reads it in place."""
    plan = backward_plan(args, batch, dtype, device)[1]
    grad_input = plan.grad_input_description
    if weight_strides is not None and plan.weight_strides_in_place(list(weight_strides)):
        grad_input += WEIGHT_IN_PLACE_NOTE
    return grad_input, plan.grad_weight_description


def grad_input_weight_in_place(args: ConvArgs, batch: int, dtype: torch.dtype,
                               device: torch.device, weight: torch.Tensor,
                               grad_input_kernel: str = "auto",
                               grad_input_tile: Optional[int] = None) -> bool:
    """Whether :func:`backward`'s input gradient reads ``weight`` in place, with no pack (its
    TMA tiles, under :func:`weight_in_place`'s conditions)."""
    plan = backward_plan(args, batch, dtype, device, grad_input_kernel,
                         grad_input_tile=grad_input_tile)[1]
    return bool(plan.weight_in_place(weight))


def gather(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``weight`` in the layout of an index map (tests read the kernels' layouts so)."""
    return load().gather_weight(weight, index)
