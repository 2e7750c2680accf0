"""Autograd registration helpers shared by the differentiable ops, and their eager fast path."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

from granet_kernels import backends
from granet_kernels.ops._registry import OpDef, Kernel, _data_dtype, _supports


BACKWARD_HINT = "_granet_backward_hint"


def refuse_double_backward(qualname: str) -> None:
    """The backward formulas call kernels that have no derivative of their own: with create_graph
    the gradient would be a silently wrong constant, so say so instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{qualname}: double backward (create_graph=True) is not supported; the gradients "
                           "of granet ops are first order only")


def _save_inputs(ctx, inputs, needed_for: dict[int, tuple[int, ...]], needs) -> None:
    """Keep the inputs for the backward. The tensors the gradients asked for need go through
    save_for_backward, so that autograd raises, as for torch's own ops, when one of them is modified
    in place before the backward runs (the gradients would be computed from the new values).
    `needed_for[i]` lists the inputs whose gradients need input i (absent: always needed, as the
    indices are); the others are kept as they are (a bias, whose gradient needs only dy)."""
    def saved(i):
        wanted = needed_for.get(i)
        return wanted is None or any(needs[j] for j in wanted)

    ctx.tensor_slots = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor) and saved(i)]
    ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_slots))
    slots = set(ctx.tensor_slots)
    ctx.other_inputs = [None if i in slots else a for i, a in enumerate(inputs)]


def _saved_inputs(ctx) -> list:
    inputs = list(ctx.other_inputs)
    for i, t in zip(ctx.tensor_slots, ctx.saved_tensors):
        inputs[i] = t
    return inputs


def register_linear_autograd(opdef: OpDef, backward: Callable, needed_for: dict[int, tuple[int, ...]] | None = None):
    """Register `backward(saved_inputs, grad, needs_input_grad, hint) -> grads` for an op; grads not
    needed may be None. `needed_for` says which inputs each saved input serves (see _save_inputs):
    for y = x @ W^T, {x: (W,), W: (x,), bias: ()}. `hint` is what the
    forward kernel left on its output under BACKWARD_HINT (None if nothing), e.g. a fact it
    checked that the backward can then rely on without checking again."""

    needed_for = dict(needed_for or {})
    _NEEDED_FOR[opdef.name] = needed_for

    def setup_context(ctx, inputs, output):
        _save_inputs(ctx, inputs, needed_for, ctx.needs_input_grad)
        ctx.hint = getattr(output, BACKWARD_HINT, None)
        if ctx.hint is not None:  # the backward holds it now, not the output (a hint may be a buffer)
            delattr(output, BACKWARD_HINT)

    def bwd(ctx, grad):
        refuse_double_backward(opdef.qualname)
        grads = backward(_saved_inputs(ctx), grad, ctx.needs_input_grad, ctx.hint)
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))

    torch.library.register_autograd(opdef.qualname, bwd, setup_context=setup_context)
    _EAGER_BACKWARD[opdef.name] = backward


# --- eager fast path ------------------------------------------------------------------------------
# A custom op's Python autograd wrapper, default filling and backend choice cost ~0.1 ms per call
# and again per backward (a SparseLinear(16, 16) training step at batch 8: 344 us through the op,
# 224 us without it; nn.Linear 166 us). A plain eager call on CPU tensors can skip them: the same
# checks, the same CPU kernel and the same backward formula, in an autograd.Function. Whatever must
# see the op itself takes the op: torch.compile, dispatch or function modes (FlopCounterMode,
# fake tensors, export), tensor subclasses, functorch transforms, a forced backend other than cpu.

_EAGER_BACKWARD: dict[str, Callable] = {}
_NEEDED_FOR: dict[str, dict[int, tuple[int, ...]]] = {}
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer)


class _EagerCall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, opdef: OpDef, kernel: Kernel, *args):
        opdef.check(*args)
        if opdef.check_values is not None:
            opdef.check_values(*args)
        output = kernel.fn(*args)
        ctx.opdef = opdef
        _save_inputs(ctx, args, _NEEDED_FOR[opdef.name], ctx.needs_input_grad[2:])
        ctx.hint = getattr(output, BACKWARD_HINT, None)
        if ctx.hint is not None:
            delattr(output, BACKWARD_HINT)
        return output

    @staticmethod
    def backward(ctx, grad):
        refuse_double_backward(ctx.opdef.qualname)
        needs = ctx.needs_input_grad[2:]
        grads = _EAGER_BACKWARD[ctx.opdef.name](_saved_inputs(ctx), grad, needs, ctx.hint)
        return (None, None, *(g if needed else None for g, needed in zip(grads, needs)))


def _eager_cpu_kernel(opdef: OpDef, args: tuple) -> Kernel | None:
    """The CPU kernel when this call may skip the op (see above), else None."""
    if opdef.name not in _EAGER_BACKWARD or torch.compiler.is_compiling():
        return None
    kernel = opdef.kernels.get("cpu")
    if kernel is None or backends.current_backend() not in ("auto", "cpu"):
        return None
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN_TENSOR_TYPES or a.device.type != "cpu"):
            return None
    if (_get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None):
        return None
    return kernel if _supports(kernel, _data_dtype(opdef, args)) else None


def call(opdef: OpDef, *args: Any):
    """torch.ops.granet.<op>(*args) for an op with register_linear_autograd, taking the eager fast
    path when it can."""
    kernel = _eager_cpu_kernel(opdef, args)
    if kernel is None:
        return opdef.op(*args)
    if (torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)) or (
            forward_ad._current_level >= 0):  # dual tensors: the Function says it has no jvp (not a dropped tangent)
        return _EagerCall.apply(opdef, kernel, *args)
    # Nothing to differentiate (inference, no_grad): no autograd node either (~20 us less per call).
    opdef.check(*args)
    if opdef.check_values is not None:
        opdef.check_values(*args)
    output = kernel.fn(*args)
    if hasattr(output, BACKWARD_HINT):
        delattr(output, BACKWARD_HINT)
    return output


def register_not_differentiable(opdef: OpDef, hint: str):
    """Backward-only building blocks: a clear error instead of a silently missing gradient."""

    def bwd(ctx, *grads):
        raise RuntimeError(f"{opdef.qualname} is not differentiable; {hint}")

    torch.library.register_autograd(opdef.qualname, bwd, setup_context=lambda ctx, inputs, output: None)
