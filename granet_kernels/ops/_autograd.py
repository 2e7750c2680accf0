"""Autograd registration helpers shared by the differentiable ops."""

from __future__ import annotations

from typing import Callable

import torch

from granet_kernels.ops._registry import OpDef


BACKWARD_HINT = "_granet_backward_hint"


def refuse_double_backward(qualname: str) -> None:
    """The backward formulas call kernels that have no derivative of their own: with create_graph
    the gradient would be a silently wrong constant, so say so instead."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{qualname}: double backward (create_graph=True) is not supported; the gradients "
                           "of granet ops are first order only")


def register_linear_autograd(opdef: OpDef, backward: Callable):
    """Register `backward(saved_inputs, grad, needs_input_grad, hint) -> grads` for an op; all
    inputs are saved (the products need them); grads not needed may be None. `hint` is what the
    forward kernel left on its output under BACKWARD_HINT (None if nothing), e.g. a fact it
    checked that the backward can then rely on without checking again."""

    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs
        ctx.hint = getattr(output, BACKWARD_HINT, None)
        if ctx.hint is not None:  # the backward holds it now, not the output (a hint may be a buffer)
            delattr(output, BACKWARD_HINT)

    def bwd(ctx, grad):
        refuse_double_backward(opdef.qualname)
        grads = backward(ctx.inputs, grad, ctx.needs_input_grad, ctx.hint)
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))

    torch.library.register_autograd(opdef.qualname, bwd, setup_context=setup_context)


def register_not_differentiable(opdef: OpDef, hint: str):
    """Backward-only building blocks: a clear error instead of a silently missing gradient."""

    def bwd(ctx, *grads):
        raise RuntimeError(f"{opdef.qualname} is not differentiable; {hint}")

    torch.library.register_autograd(opdef.qualname, bwd, setup_context=lambda ctx, inputs, output: None)
