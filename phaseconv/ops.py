"""The phaseconv operator: one forward and one backward, for every engine.

A call is described by its arguments' metadata (shapes, dtypes, devices, input layout,
stride, padding, ...).  Everything that metadata fixes - the argument checks, the phase plan,
the engine, the CUDA engine's tables and kernel plans - is computed once per description and
kept in a :class:`CallPlan`; a call then does only the launches.  Nothing is kept that depends
on the weight's values: every call reads the weight as it is, so no write to it (an optimizer
step, fused or not, ``.data``, numpy, DLPack, a freed and reused address) can leave a stale
result behind.

* forward: the chosen engine (the CUDA kernel, or the reference engine);
* backward: the phase-form gradients, on the same engine as the forward, in a fixed order
  (deterministic; no atomics).  On the CUDA engine the input gradient runs in one launch and
  the weight gradient is written straight into the weight's layout
  (``engines/cuda.py: backward``); the reference engine uses torch ops
  (``engines/reference.py``).  grad_bias is a sum over batch and space.

Under ``torch.autocast`` a call casts its inputs as torch's own ``conv_transpose3d`` does
there: on CUDA it is on torch's lower-precision list (every CUDA tensor that is floating point
and not float64 goes to the autocast dtype); on the CPU its policy depends on the torch
release (lower precision on torch 2.x, float32 on 1.13), so it is read off torch once, at
import, by two tiny CPU calls of torch's op (:func:`autocast_dtype`).  The casts are ordinary
differentiable ops, so a float32 weight gets a float32 gradient, as with torch.

On torch >= 2.4 the forward and backward are ``torch.library`` custom ops
(``phaseconv::conv_transpose3d``, ``phaseconv::conv_transpose3d_backward``) whose fake
implementations give exactly the real results' sizes and strides, so ``torch.compile`` keeps
phaseconv's layers in its graph, for inference and training.  Eager calls, and every call on
older torch (1.13), run the same two functions through ``torch.autograd.Function`` classes.

Export: where a graph must hold standard ops, a call records torch's own ``conv_transpose3d``
(:func:`torch_conv_transpose3d`, the same function) instead of phaseconv's operator: under
``torch.jit.trace`` (``torch.jit.is_tracing()``, which the TorchScript-based ONNX exporter also
sets) and under the torch.export-based ONNX exporter (``torch.onnx.is_in_onnx_export()``).
ONNX graphs so hold standard ``ConvTranspose`` nodes, and traced graphs load without
phaseconv.  ``torch.export`` and ``torch.compile`` record ``phaseconv::conv_transpose3d``;
:func:`decompositions` turns an ExportedProgram's calls into torch's.  ``torch.jit.script``
compiles the module's scriptable branch (``modules.py``).  Eager calls are unaffected.

Every derivative is again the forward or the backward of the same layer (see "autograd"
below), so both paths differentiate to any order: double backward (gradient penalties),
forward mode (``torch.autograd.forward_ad``, ``torch.func.jvp``) and, on torch >= 2.0,
``torch.func``'s ``vmap``, ``grad``, ``jacrev`` and ``jacfwd`` (a vmapped call is one call of
the operator, the vmapped copies folded into the batch or the groups).  On torch 1.13 double
backward and forward mode work; ``functorch``'s transforms do not take custom functions there.
"""
import contextlib
import inspect
import os
from typing import List, NamedTuple, Optional, Tuple

import torch

from . import engines
from .checks import ConvArgs, check_conv_transpose3d, triple
from .engines import phase_gemm, reference
from .geometry import phase_plan
from .packing import phase_sub_kernels, unpack_conv3d_phases

HAS_CUSTOM_OPS = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")
_NEW_AUTOCAST_API = hasattr(torch, "get_autocast_dtype")  # torch >= 2.4: per device type


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


_is_tracing = torch.jit.is_tracing  # bound once: every eager call asks it


def _is_onnx_export() -> bool:
    import torch.onnx  # loaded lazily by torch 2.x

    return torch.onnx.is_in_onnx_export()


def torch_conv_transpose3d(x: torch.Tensor, weight: torch.Tensor,
                           bias: Optional[torch.Tensor], stride, padding, output_padding,
                           groups: int, dilation) -> torch.Tensor:
    """torch's own ``conv_transpose3d``: what a call records where the graph must hold
    standard ops (``torch.jit.trace``, ``torch.onnx.export``; module docstring, "Export")."""
    return torch.nn.functional.conv_transpose3d(x, weight, bias, stride, padding,
                                                output_padding, groups, dilation)


def weight_grad_format(weight: torch.Tensor) -> torch.memory_format:
    """The weight gradient's memory format: the weight's own where it is ``channels_last_3d``
    (so autograd accumulates it without a copy), else contiguous."""
    if not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def input_grad_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The input gradient's memory format: ``channels_last_3d`` where torch (cuDNN) returns
    it so, a batched CUDA input or the weight suggesting it (float64 aside: the forward's
    result follows the same rule, :func:`phaseconv.engines.output_channels_last`), else
    contiguous.  One rule for every engine and for the fake kernel that torch.compile
    traces."""
    return (torch.channels_last_3d if engines.output_channels_last(x, weight)
            else torch.contiguous_format)


def _autocast_enabled(device_type: str) -> bool:
    if _NEW_AUTOCAST_API:
        return torch.is_autocast_enabled(device_type)
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled()
    return torch.is_autocast_enabled()


def _autocast_off(device_type: str):
    """The reference engine computes in the dtype it is given: torch's own convolutions
    inside it must not be autocast again (their policy may differ from conv_transpose3d's).
    Outside autocast nothing needs turning off (entering the context costs microseconds)."""
    if device_type in ("cuda", "cpu") and _autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class CallPlan:
    """What one call description fixes: validated arguments, the engine and its plans."""

    __slots__ = ("args", "engine", "plan", "cuda_forward", "cuda_backward", "_batch", "_dtype",
                 "_device", "_channels_last", "_has_bias", "_gemm", "out_channels_last")

    def __init__(self, args: ConvArgs, engine: engines.EngineChoice, x: torch.Tensor,
                 has_bias: bool, layout: int, out_channels_last: bool = False) -> None:
        self.args = args
        self.engine = engine
        self.plan = phase_plan(args.in_shape, args.kernel, args.stride, args.padding,
                               dilation=args.dilation, output_padding=args.output_padding)
        self._batch = int(x.shape[0]) if args.batched else 1
        self._dtype, self._device = x.dtype, x.device
        self._channels_last, self._has_bias = layout == 1, has_bias
        # the result's layout: torch's on the device (engines.output_channels_last)
        self.out_channels_last = out_channels_last
        # the CUDA plans are made on first use: a description only ever used by the
        # backward (the compiled path's backward op) never plans a forward
        self.cuda_forward = self.cuda_backward = None
        # a small layer on the CPU runs all its phases in one GEMM (engines.phase_gemm)
        small = engine.name == "reference" and phase_gemm.applies(
            x.device, x.dtype, self.plan, args.in_channels, args.out_channels, args.groups)
        self._gemm = phase_gemm.gemm_plan(
            self.plan, self._batch, args.in_channels, args.out_channels, args.groups
        ) if small else None

    def forward(self, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        args = self.args
        xb = x if args.batched else x.unsqueeze(0)
        if self.engine.name == "cuda":
            if self.cuda_forward is None:
                from .engines import cuda

                self.cuda_forward = cuda.forward_plan(
                    args, self._batch, self._dtype, self._device, self._channels_last,
                    self._has_bias, out_channels_last=self.out_channels_last)
            tables, launch = self.cuda_forward
            if tables.ready:
                from .engines.cuda import wait_for_tables
                wait_for_tables(tables)
            out = launch(xb, weight, bias)
        else:
            with _autocast_off(x.device.type):
                out = self._reference_forward(xb, weight, bias)
            if self.out_channels_last:
                out = out.contiguous(memory_format=torch.channels_last_3d)
        return out if args.batched else out.squeeze(0)

    def _reference_forward(self, x: torch.Tensor, weight: torch.Tensor,
                           bias: Optional[torch.Tensor]) -> torch.Tensor:
        args = self.args
        gemm = self._gemm
        if gemm is not None:  # exact for any weight: it reads no padding
            return phase_gemm.forward(x, weight, bias, gemm)
        phases = phase_sub_kernels(weight, args.groups, args.stride, args.padding,
                                   args.dilation)
        return reference.forward(x, phases, bias, self.plan, args.groups, args.out_channels,
                                 lambda: reference.is_finite(weight))

    def _reference_backward(self, grad_out: torch.Tensor, x: torch.Tensor,
                            weight: torch.Tensor, need_input: bool, need_weight: bool):
        args = self.args
        gemm = self._gemm
        known: List[bool] = []  # the weight's finiteness, tested at most once a call

        def weight_finite() -> bool:
            if not known:
                known.append(reference.is_finite(weight))
            return known[0]

        # a cropped pair meets a zero gradient: exact where the weight (input gradient) and
        # the input (weight gradient) are finite
        if gemm is not None and (not gemm.cropped or (
                (not need_input or weight_finite())
                and (not need_weight or reference.is_finite(x)))):
            gx, gw = phase_gemm.backward(x, grad_out, weight, gemm, need_input, need_weight)
        else:
            phases = phase_sub_kernels(weight, args.groups, args.stride, args.padding,
                                       args.dilation) if need_input else None
            gx, phase_grads = reference.backward(
                x, grad_out, phases, self.plan, args.groups, args.in_channels, need_input,
                need_weight, weight_finite)
            gw = None if phase_grads is None else unpack_conv3d_phases(
                phase_grads, tuple(weight.shape), args.groups, args.stride, args.padding,
                args.dilation)
        fmt = weight_grad_format(weight)
        if gw is not None and fmt != torch.contiguous_format:
            gw = gw.contiguous(memory_format=fmt)
        return gx, gw

    def backward(self, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 mask) -> Tuple[Optional[torch.Tensor], ...]:
        """Gradients for (input, weight, bias) where ``mask`` asks, None elsewhere."""
        args = self.args
        expected = (tuple(x.shape[:1]) if args.batched else ()) + (args.out_channels,) \
            + tuple(args.out_shape)
        if (tuple(grad_out.shape) != expected or grad_out.dtype != x.dtype
                or grad_out.device != x.device):
            raise RuntimeError(
                f"conv_transpose3d backward: grad_output must match the forward's output "
                f"({list(expected)}, {x.dtype}, {x.device}), got {list(grad_out.shape)}, "
                f"{grad_out.dtype}, {grad_out.device}")
        xb = x if args.batched else x.unsqueeze(0)
        gb = grad_out if args.batched else grad_out.unsqueeze(0)
        gx = gw = gbias = None
        if self.engine.name == "cuda":
            if mask[0] or mask[1]:
                if self.cuda_backward is None:
                    from .engines import cuda

                    self.cuda_backward = cuda.backward_plan(args, self._batch, self._dtype,
                                                            self._device)
                tables, launch = self.cuda_backward
                if tables.ready:
                    from .engines.cuda import wait_for_tables
                    wait_for_tables(tables)
                # (input_grad_format(x, weight) is the result's format: the call's key fixes it)
                gx, gw = launch(gb, xb, weight, bool(mask[0]), bool(mask[1]),
                                self.out_channels_last)
        else:
            if mask[0] or mask[1]:
                with _autocast_off(x.device.type):
                    gx, gw = self._reference_backward(gb, xb, weight, bool(mask[0]),
                                                      bool(mask[1]))
        if gx is not None and not args.batched:
            gx = gx.squeeze(0)
        elif gx is not None and self.engine.name != "cuda":  # (the CUDA engine writes it so)
            gx = gx.contiguous(memory_format=torch.channels_last_3d if self.out_channels_last
                               else torch.contiguous_format)
        if mask[2]:
            gbias = reference.grad_bias(gb)
        return gx, gw, gbias


_CALLS = {}  # call description -> CallPlan


def call_plan(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride,
              padding, output_padding, groups: int, dilation, engine: str) -> CallPlan:
    """The :class:`CallPlan` of a call (made on its first occurrence; invalid calls raise
    torch's error, or a clearer one naming the argument, every time)."""
    try:
        # the strides fix the input's layout and the result's (engines.input_layout,
        # engines.output_channels_last): both are read on a miss only
        key = (x.shape, x.dtype, x.device, x.stride(), weight.shape, weight.dtype,
               weight.device, weight.stride(),
               None if bias is None else (bias.shape, bias.dtype, bias.device), stride, padding,
               output_padding, groups, dilation, engine, os.environ.get(engines.ENGINE_ENV))
        found = _CALLS.get(key)
    except (AttributeError, TypeError):  # not tensors, unhashable sizes: the checks say what
        key = found = None
    if found is not None:
        return found
    args = check_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                  dilation)
    plan = CallPlan(args, engines.choose(x.device, engine or None, args.stride), x,
                    bias is not None, engines.input_layout(x),
                    engines.output_channels_last(x, weight))
    if key is not None:
        if len(_CALLS) >= 4096:  # many distinct calls (shapes that never repeat): start over
            _CALLS.clear()
        _CALLS[key] = plan
    return plan


def forward_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                 dilation: List[int], engine: str) -> torch.Tensor:
    """The forward on the engine ``engines.choose`` picks (``engine=""``: not forced)."""
    plan = call_plan(x, weight, bias, tuple(stride), tuple(padding), tuple(output_padding),
                     groups, tuple(dilation), engine)
    with torch.no_grad():
        return plan.forward(x, weight, bias)


def backward_impl(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                  stride: List[int], padding: List[int], output_padding: List[int], groups: int,
                  dilation: List[int], mask: List[bool], engine: str = ""
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (input, weight, bias) where ``mask`` asks, empty tensors elsewhere, on
    the engine the forward used."""
    plan = call_plan(x, weight, None, tuple(stride), tuple(padding), tuple(output_padding),
                     groups, tuple(dilation), engine)
    with torch.no_grad():
        grads = plan.backward(grad_out, x, weight, mask)
    return tuple(grad_out.new_empty((0,)) if g is None else g  # type: ignore[return-value]
                 for g in grads)


def _fake_forward(x, weight, bias, stride, padding, output_padding, groups, dilation, engine):
    args = check_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                  dilation)
    batch = (x.shape[0],) if args.batched else ()
    fmt = torch.channels_last_3d if engines.output_channels_last(x, weight) else \
        torch.contiguous_format
    return torch.empty(batch + (args.out_channels,) + args.out_shape, dtype=x.dtype,
                       device=x.device, memory_format=fmt)


def _fake_backward(grad_out, x, weight, stride, padding, output_padding, groups, dilation,
                   mask, engine):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device,
                        memory_format=input_grad_format(x, weight))
            if mask[0] else grad_out.new_empty((0,)),
            torch.empty(weight.shape, dtype=weight.dtype, device=weight.device,
                        memory_format=weight_grad_format(weight))
            if mask[1] else grad_out.new_empty((0,)),
            grad_out.new_empty((grad_out.shape[-4],)) if mask[2] else grad_out.new_empty((0,)))


# --- autograd ----------------------------------------------------------------------------------
#
# The operator is bilinear: y = F(x, w) + b.  Its backward is two more bilinear maps of the
# same layer, G(gy, w) = grad_input (F's adjoint in x) and H(x, gy) = grad_weight (F's adjoint
# in w), plus grad_bias = sum(gy).  Each is the adjoint of the others:
#
#     <F(x, w), gy> = <x, G(gy, w)> = <w, H(x, gy)>
#
# so every derivative of F, G or H, of any order and in either mode, is again F, G or H of
# other arguments.  Two autograd.Functions carry that: one for F (the forward) and one for
# (G, H, sum) (the backward), each with a backward, a jvp and a vmap rule made of the two.
# ``conf`` is (stride, padding, output_padding, groups, dilation, engine).

_SETUP_CONTEXT = hasattr(torch.autograd.Function, "setup_context")  # torch >= 2.0: torch.func

try:
    from torch._C._functorch import peek_interpreter_stack as _transform_stack
except ImportError:  # torch 1.13: no torch.func transforms in core
    def _transform_stack():
        return None

import torch.autograd.forward_ad as _forward_ad  # noqa: E402


class _Autograd(NamedTuple):
    """One autograd.Function in its two forms (:func:`_autograd_function`)."""
    eager: type                  # the classic form (ctx first)
    transforms: Optional[type]   # torch.func's form (setup_context, vmap); torch >= 2.0


def _form(function: _Autograd, *tensors) -> Optional[type]:
    """The form of ``function`` a call takes: torch.func's under a torch.func transform, the
    classic one where a graph is to be recorded or a forward-mode tangent is possible, none
    otherwise (the plain call is the same result without the Function's cost)."""
    if _transform_stack() is not None:
        return function.transforms
    if _forward_ad._current_level >= 0 or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors)):
        return function.eager
    return None


def _forward(x, weight, bias, conf):
    """F(x, w) + b, differentiable in every mode."""
    form = _form(_FORWARD, x, weight, bias)
    if form is not None:
        return form.apply(x, weight, bias, *conf)
    return _function_value(x, weight, bias, *conf)


def _backward(grad_out, x, weight, conf, mask):
    """(G(grad_out, w), H(x, grad_out), sum(grad_out)) where ``mask`` asks, None elsewhere;
    differentiable in every mode."""
    form = _form(_BACKWARD, grad_out, x, weight)
    if form is not None:
        return form.apply(grad_out, x, weight, conf, tuple(mask))
    return _backward_value(grad_out, x, weight, conf, mask)


def _bias_view(bias: torch.Tensor, shape) -> torch.Tensor:
    """``bias`` (C,) broadcast over an output of the layer of ``shape`` (batched or not)."""
    return bias.view((-1,) + (1,) * 3).expand(tuple(shape)).contiguous()


_GX, _GW, _GB = (True, False, False), (False, True, False), (False, False, True)


def _double_backward(forward, backward, grad_out, x, weight, ggx, ggw, ggb, needs):
    """The backward's own backward (double backward), the adjoints of G, H and sum, through
    ``forward(x, w, b)`` and ``backward(gy, x, w, mask)``; ``ggx``, ``ggw``, ``ggb`` are None
    where no gradient flows.  gx = G(gy, w), gw = H(x, gy) and gb = sum(gy) are all linear in
    gy; gx is linear in w and gw in x."""
    d_grad_out = d_x = d_weight = None
    if needs[0]:
        bias = ggb
        if ggx is not None:
            d_grad_out, bias = forward(ggx, weight, bias), None
        if ggw is not None:
            term, bias = forward(x, ggw, bias), None
            d_grad_out = term if d_grad_out is None else d_grad_out + term
        if bias is not None:
            d_grad_out = _bias_view(bias, grad_out.shape)
    if needs[1] and ggw is not None:
        d_x = backward(grad_out, x, ggw, _GX)[0]
    if needs[2] and ggx is not None:
        d_weight = backward(grad_out, ggx, weight, _GW)[1]
    return d_grad_out, d_x, d_weight


def _with_groups(conf, factor: int):
    stride, padding, output_padding, groups, dilation, engine = conf
    return (stride, padding, output_padding, groups * factor, dilation, engine)


def _batch_first(t, dim, size: int):
    """``t`` with its vmapped dimension first (expanded to ``size`` where it has none)."""
    return t.movedim(dim, 0) if dim is not None else t.expand((size,) + tuple(t.shape))


def _shape_without(t, dim) -> Tuple[int, ...]:
    """``t``'s shape less its vmapped dimension."""
    shape = list(t.shape)
    if dim is not None:
        del shape[dim]
    return tuple(shape)


# F


def _function_value(x, weight, bias, *conf):
    return call_plan(x, weight, bias, *conf).forward(x, weight, bias)


def _function_setup(ctx, inputs, output):
    x, weight, bias = inputs[:3]
    ctx.conf = tuple(inputs[3:])
    ctx.has_bias = bias is not None
    ctx.out_shape = tuple(output.shape)
    ctx.save_for_backward(x, weight)
    ctx.save_for_forward(x, weight)
    ctx.set_materialize_grads(False)


def _function_backward(ctx, grad_out):
    if grad_out is None:
        return (None,) * 9
    x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = (needs[0], needs[1], ctx.has_bias and needs[2])
    return _backward(grad_out, x, weight, ctx.conf, mask) + (None,) * 6


def _function_jvp(ctx, dx, dweight, dbias, *_):
    x, weight = ctx.saved_tensors
    out = None
    if dx is not None:
        out, dbias = _forward(dx, weight, dbias, ctx.conf), None
    if dweight is not None:
        term, dbias = _forward(x, dweight, dbias, ctx.conf), None
        out = term if out is None else out + term
    if dbias is not None:  # only the bias moves
        out = _bias_view(dbias, ctx.out_shape)
    return out


def _function_vmap(info, in_dims, x, weight, bias, *conf):
    """A vmapped F is one call of F: a vmapped input folds into the batch; a vmapped weight
    or bias folds into the groups (each vmapped copy becomes its own set of groups)."""
    x_dim, w_dim, b_dim = in_dims[:3]
    size = info.batch_size
    batched = x.dim() - (x_dim is not None) == 5
    if size == 0:  # nothing to compute (jacrev of an empty output): the shape only
        x_shape = _shape_without(x, x_dim)
        args = check_conv_transpose3d(x.new_empty(x_shape),
                                      weight.new_empty(_shape_without(weight, w_dim)), None,
                                      *conf[:5])
        return x.new_zeros((0,) + x_shape[:batched] + (args.out_channels,) + args.out_shape), 0
    if w_dim is None and b_dim is None:
        x = x.movedim(x_dim, 0)
        if not batched:  # a vmapped unbatched input is a batch
            return _forward(x, weight, bias, conf), 0
        out = _forward(x.flatten(0, 1), weight, bias, conf)
        return out.unflatten(0, (size, x.shape[1])), 0
    x = _batch_first(x, x_dim, size)
    if not batched:
        x = x.unsqueeze(1)
    xg = x.transpose(0, 1).flatten(1, 2)
    wg = _batch_first(weight, w_dim, size).flatten(0, 1)
    bg = None if bias is None else _batch_first(bias, b_dim, size).flatten(0, 1)
    out = _forward(xg, wg, bg, _with_groups(conf, size))
    out = out.unflatten(1, (size, -1)).transpose(0, 1)
    return (out if batched else out.squeeze(1)), 0


# (G, H, sum)


def _backward_value(grad_out, x, weight, conf, mask):
    return call_plan(x, weight, None, *conf).backward(grad_out, x, weight, mask)


def _backward_setup(ctx, inputs, output):
    grad_out, x, weight, conf, mask = inputs
    ctx.conf, ctx.mask = conf, mask
    ctx.save_for_backward(grad_out, x, weight)
    ctx.save_for_forward(grad_out, x, weight)
    ctx.set_materialize_grads(False)


def _backward_backward(ctx, ggx, ggw, ggb):
    grad_out, x, weight = ctx.saved_tensors
    conf = ctx.conf
    return _double_backward(lambda a, w, b: _forward(a, w, b, conf),
                            lambda g, a, w, mask: _backward(g, a, w, conf, mask),
                            grad_out, x, weight, ggx, ggw, ggb,
                            ctx.needs_input_grad) + (None, None)


def _sum_present(terms):
    """The sum of the terms (None when there are none)."""
    total = None
    for term in terms:
        total = term if total is None else total + term
    return total


def _backward_jvp(ctx, d_grad_out, dx, dweight, *_):
    """Each output is bilinear in two inputs: its tangent is one term per moving input."""
    grad_out, x, weight = ctx.saved_tensors
    conf, mask = ctx.conf, ctx.mask
    tx = tw = tb = None
    if mask[0]:  # gx = G(gy, w)
        tx = _sum_present(_backward(g, x, w, conf, _GX)[0] for g, w, moving in
                          ((d_grad_out, weight, d_grad_out), (grad_out, dweight, dweight))
                          if moving is not None)
    if mask[1]:  # gw = H(x, gy)
        tw = _sum_present(_backward(g, xx, weight, conf, _GW)[1] for g, xx, moving in
                          ((grad_out, dx, dx), (d_grad_out, x, d_grad_out))
                          if moving is not None)
    if mask[2] and d_grad_out is not None:  # gb = sum(gy)
        tb = _backward(d_grad_out, x, weight, conf, _GB)[2]
    return tx, tw, tb


def _backward_vmap(info, in_dims, grad_out, x, weight, conf, mask):
    """A vmapped backward is one backward: folded into the batch when only the input's
    gradient is asked of an unvmapped weight, into the groups otherwise (each vmapped copy
    gets its own weight gradient)."""
    g_dim, x_dim, w_dim = in_dims[:3]
    size = info.batch_size
    batched = x.dim() - (x_dim is not None) == 5
    if size == 0:  # nothing to compute: the shapes only
        shapes = (_shape_without(x, x_dim), _shape_without(weight, w_dim),
                  _shape_without(grad_out, g_dim)[batched:batched + 1])
        return (tuple(x.new_zeros((0,) + tuple(s)) if m else None for m, s in zip(mask, shapes)),
                tuple(0 if m else None for m in mask))
    grad_out = _batch_first(grad_out, g_dim, size)
    gb = None
    if mask[2]:
        gb = grad_out.sum(dim=(1, 3, 4, 5) if batched else (2, 3, 4))
    inner = (mask[0], mask[1], False)
    out_dims = (0 if mask[0] else None, 0 if mask[1] else None, 0 if mask[2] else None)
    if not (mask[0] or mask[1]):
        return (None, None, gb), out_dims
    x = _batch_first(x, x_dim, size)
    if w_dim is None and not mask[1]:
        if not batched:
            gx = _backward(grad_out, x, weight, conf, inner)[0]
        else:
            gx = _backward(grad_out.flatten(0, 1), x.flatten(0, 1), weight, conf, inner)[0]
            gx = gx.unflatten(0, (size, x.shape[1]))
        return (gx, None, gb), out_dims
    if not batched:
        x, grad_out = x.unsqueeze(1), grad_out.unsqueeze(1)
    xg = x.transpose(0, 1).flatten(1, 2)
    gg = grad_out.transpose(0, 1).flatten(1, 2)
    wg = _batch_first(weight, w_dim, size).flatten(0, 1)
    gx, gw, _ = _backward(gg, xg, wg, _with_groups(conf, size), inner)
    if gx is not None:
        gx = gx.unflatten(1, (size, -1)).transpose(0, 1)
        gx = gx if batched else gx.squeeze(1)
    if gw is not None:
        gw = gw.unflatten(0, (size, -1))
    return (gx, gw, gb), out_dims


def _autograd_function(name: str, doc: str, value, setup, backward, jvp, vmap) -> _Autograd:
    """An autograd.Function from its parts, in two forms: the classic one (ctx first), which
    every call outside torch.func's transforms takes, and, on torch >= 2.0, torch.func's
    (forward without ctx, setup_context, vmap), which the transforms need.  torch binds each
    call of the latter to forward's signature: ~20 µs of host time a call more than the
    classic form."""
    body = {"__doc__": doc, "backward": staticmethod(backward), "jvp": staticmethod(jvp)}

    def forward(ctx, *inputs):
        output = value(*inputs)
        setup(ctx, inputs, output)
        return output

    eager = type(name, (torch.autograd.Function,), dict(body, forward=staticmethod(forward)))
    if not _SETUP_CONTEXT:
        return _Autograd(eager, None)
    value.__signature__ = inspect.signature(value)  # computed once, not at every call
    return _Autograd(eager, type(name + "ForTransforms", (torch.autograd.Function,), dict(
        body, forward=staticmethod(value), setup_context=staticmethod(setup),
        vmap=staticmethod(vmap))))


_FORWARD = _autograd_function(
    "_ConvTranspose3dFunction", "F(x, w) + b: the forward, differentiable in every mode.",
    _function_value, _function_setup, _function_backward, _function_jvp, _function_vmap)
_BACKWARD = _autograd_function(
    "_ConvTranspose3dBackward", "(G(gy, w), H(x, gy), sum(gy)): the backward, differentiable "
    "in every mode.", _backward_value, _backward_setup, _backward_backward, _backward_jvp,
    _backward_vmap)


if HAS_CUSTOM_OPS:
    @torch.library.custom_op("phaseconv::conv_transpose3d", mutates_args=())
    def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    stride: List[int], padding: List[int], output_padding: List[int],
                    groups: int, dilation: List[int], engine: str) -> torch.Tensor:
        return forward_impl(x, weight, bias, stride, padding, output_padding, groups, dilation,
                            engine)

    @torch.library.custom_op("phaseconv::conv_transpose3d_backward", mutates_args=())
    def _backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     stride: List[int], padding: List[int], output_padding: List[int],
                     groups: int, dilation: List[int], mask: List[bool],
                     engine: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return backward_impl(grad_out, x, weight, stride, padding, output_padding, groups,
                             dilation, mask, engine)

    _forward_op.register_fake(_fake_forward)
    _backward_op.register_fake(_fake_backward)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, output_padding, groups, dilation, engine = inputs
        ctx.save_for_backward(x, weight)
        ctx.conf = (bias is not None, stride, padding, output_padding, groups, dilation, engine)

    def _op_backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        has_bias, stride, padding, output_padding, groups, dilation, engine = ctx.conf
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.phaseconv.conv_transpose3d_backward(
            grad_out, x, weight, stride, padding, output_padding, groups, dilation, mask,
            engine)
        return ((gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None)
                + (None,) * 6)

    def _setup_backward_context(ctx, inputs, output):
        grad_out, x, weight = inputs[:3]
        ctx.save_for_backward(grad_out, x, weight)
        ctx.conf = inputs[3:]

    def _op_double_backward(ctx, ggx, ggw, ggb):
        """``_double_backward`` through the two ops (an output that ``mask`` left out is an
        empty tensor: its gradient is ignored)."""
        grad_out, x, weight = ctx.saved_tensors
        stride, padding, output_padding, groups, dilation, mask, engine = ctx.conf
        conf = (stride, padding, output_padding, groups, dilation)
        ops = torch.ops.phaseconv
        grads = _double_backward(
            lambda a, w, b: ops.conv_transpose3d(a, w, b, *conf, engine),
            lambda g, a, w, m: ops.conv_transpose3d_backward(g, a, w, *conf, list(m), engine),
            grad_out, x, weight, *(g if m else None for g, m in zip((ggx, ggw, ggb), mask)),
            ctx.needs_input_grad)
        return grads + (None,) * 7

    _forward_op.register_autograd(_op_backward, setup_context=_setup_context)
    _backward_op.register_autograd(_op_double_backward, setup_context=_setup_backward_context)


def _forward_as_torch(x, weight, bias, stride, padding, output_padding, groups, dilation, engine):
    return torch_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                  dilation)


def decompositions() -> dict:
    """``{phaseconv::conv_transpose3d: torch's conv_transpose3d}`` for
    ``ExportedProgram.run_decompositions``: turns a ``torch.export`` graph of phaseconv's layers
    into one of torch's (what ``torch.onnx.export`` of an ExportedProgram and other consumers
    of standard ATen graphs take).  Empty where torch has no custom ops (< 2.4)."""
    if not HAS_CUSTOM_OPS:
        return {}
    return {torch.ops.phaseconv.conv_transpose3d.default: _forward_as_torch}


def _cpu_autocast_policy() -> Optional[str]:
    """How torch's ``conv_transpose3d`` behaves under CPU autocast in this torch release:
    "lower" (inputs cast to the autocast dtype), "float32" (inputs cast to float32) or None
    (left as they are)."""
    import torch.nn.functional as F

    one = torch.ones((1, 1, 1, 1, 1))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if F.conv_transpose3d(one, one).dtype == torch.bfloat16:
                return "lower"
            if F.conv_transpose3d(one.bfloat16(), one.bfloat16()).dtype == torch.float32:
                return "float32"
    except (RuntimeError, TypeError, AttributeError):  # a torch without CPU autocast
        pass
    return None


_CPU_AUTOCAST_POLICY = _cpu_autocast_policy()


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype torch's ``conv_transpose3d`` casts its inputs to under the autocast state in
    force for ``device_type`` now, or None when it casts nothing."""
    if device_type == "cuda":
        if not _autocast_enabled("cuda"):
            return None
        return torch.get_autocast_dtype("cuda") if _NEW_AUTOCAST_API else \
            torch.get_autocast_gpu_dtype()
    if device_type == "cpu" and _CPU_AUTOCAST_POLICY is not None:
        if not _autocast_enabled("cpu"):
            return None
        lower = torch.get_autocast_dtype("cpu") if _NEW_AUTOCAST_API else \
            torch.get_autocast_cpu_dtype()
        return lower if _CPU_AUTOCAST_POLICY == "lower" else torch.float32
    return None


def _autocast(t: Optional[torch.Tensor], device_type: str, dtype: torch.dtype):
    """torch's autocast rule for one argument of a lower-precision op."""
    if (t is None or t.device.type != device_type or not t.is_floating_point()
            or t.dtype in (torch.float64, dtype)):
        return t
    return t.to(dtype)


def conv_transpose3d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     stride, padding, output_padding, groups: int, dilation,
                     engine: Optional[str] = None) -> torch.Tensor:
    """Dispatch to the custom op (torch >= 2.4, inside a graph being compiled) or the
    autograd.Function, after autocast's casts.  ``stride``, ``padding``, ``output_padding`` and
    ``dilation`` are tuples of 3 ints; the checks run inside the op, so a compiled graph
    validates at trace time (fake) and at run time alike."""
    if _is_tracing():  # torch.jit.trace and the TorchScript-based ONNX exporter
        return torch_conv_transpose3d(x, weight, bias, stride, padding, output_padding, groups,
                                      dilation)
    device_type = "cuda" if x.is_cuda else x.device.type
    cast_to = autocast_dtype(device_type)
    if cast_to is not None:
        x, weight, bias = (_autocast(t, device_type, cast_to) for t in (x, weight, bias))
    # Eager calls take the autograd.Function: the same two functions without the dispatcher's
    # round trip (tens of µs of Python per call); graphs being compiled need the custom op.
    if HAS_CUSTOM_OPS and _is_compiling():
        if _is_onnx_export():  # the torch.export-based ONNX exporter
            return torch_conv_transpose3d(x, weight, bias, stride, padding, output_padding,
                                          groups, dilation)
        sizes = [list(triple(v, name)) for v, name in
                 ((stride, "stride"), (padding, "padding"), (output_padding, "output_padding"),
                  (dilation, "dilation"))]
        return torch.ops.phaseconv.conv_transpose3d(x, weight, bias, sizes[0], sizes[1],
                                                    sizes[2], groups, sizes[3], engine or "")
    return _forward(x, weight, bias, (stride, padding, output_padding, groups, dilation,
                                      engine or ""))
