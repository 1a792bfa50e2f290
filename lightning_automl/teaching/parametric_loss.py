"""`ParametricLoss`: the loss family whose coefficients the L2T-DLF teacher sets."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from lightning_automl.core.validation import check_number, check_positive_int

__all__ = ["ConstantCoefficientLoss", "ParametricLoss", "Reduction"]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = get_args(Reduction)


class ParametricLoss(nn.Module):
    """``ce_weight * CE(p, y) + (1 - ce_weight) * l_phi(p, y)``, per sample or reduced.

    ``l_phi(p, y) = -sigmoid((log p)^T W e_y + b_y)`` (Wu et al., NeurIPS 2018, the loss of the
    authors' demo) with coefficients ``phi = (W, b)``: ``W`` is ``C x C``, ``b`` has ``C``
    entries. At ``W = I, b = 0`` it is ``-sigmoid(log p_y) = -p_y / (1 + p_y)``, a monotone
    surrogate of cross-entropy; the convex mix with cross-entropy keeps its gradient from
    vanishing where ``p_y`` is small.

    Args:
        num_classes: ``C >= 2``.
        ce_weight: Weight of cross-entropy in the mix, in ``[0, 1]`` (0: ``l_phi`` alone).
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5) -> None:
        check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        check_number("ce_weight", ce_weight, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        super().__init__()
        self.num_classes = num_classes
        self.ce_weight = float(ce_weight)

    def identity_coefficients(
        self, dtype: torch.dtype | None = None, device: torch.device | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(W, b) = (I, 0)``: the loss at initialisation."""
        weight = torch.eye(self.num_classes, dtype=dtype, device=device)
        return weight, torch.zeros(self.num_classes, dtype=dtype, device=device)

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
        reduction: Reduction = "mean",
    ) -> Tensor:
        """The loss of ``logits`` ``(B, C)`` for class indices ``target`` ``(B,)``.

        ``weight`` ``(C, C)`` and ``bias`` ``(C,)`` default to the identity coefficients.
        Coefficients that need no gradient (a teacher's, during the student's training) take
        `ConstantCoefficientLoss`, which computes the gradient with respect to ``logits`` in
        closed form; that gradient cannot be differentiated again (``create_graph=True``
        raises): give coefficients that require a gradient for the second order.

        Raises:
            ValueError: ``logits`` is not ``(B, C)``, ``target`` not ``(B,)`` integers, or a
                target is outside ``[0, C)``.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self._check(logits, target)
        if weight is None or bias is None:
            weight, bias = self.identity_coefficients(logits.dtype, logits.device)
        constant = not (weight.requires_grad or bias.requires_grad)
        if constant and logits.requires_grad and torch.is_grad_enabled():
            loss = ConstantCoefficientLoss.apply(
                logits, target, weight, bias, self.ce_weight, reduction
            )
            return loss  # type: ignore[no-any-return]  # apply is untyped
        log_probs = F.log_softmax(logits, dim=-1)
        # (log p)^T W e_y + b_y for each sample, from column y of W alone: O(B C), where the
        # full product (log p)^T W would take O(B C^2) (and a matmul launch that dwarfs it).
        weight, bias = weight.to(log_probs.dtype), bias.to(log_probs.dtype)
        scores = (log_probs * weight.t()[target]).sum(1) + bias[target]
        surrogate = torch.sigmoid(scores)
        loss = -(surrogate if reduction == "none" else getattr(surrogate, reduction)())
        if not self.ce_weight:
            return loss
        # The mix is linear: reducing each term first gives the same value with fewer operations.
        ce = F.nll_loss(log_probs, target, reduction=reduction)
        return torch.lerp(loss.to(ce.dtype), ce, self.ce_weight)  # autocast: ce may be float32

    def _check(self, logits: Tensor, target: Tensor) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have shape (batch, {self.num_classes}), got {tuple(logits.shape)}"
            )
        if target.shape != logits.shape[:1] or target.dtype.is_floating_point:
            raise ValueError(
                f"target must hold {logits.shape[0]} class indices (integer tensor of shape "
                f"({logits.shape[0]},)), got {target.dtype} of shape {tuple(target.shape)}"
            )
        if not len(target):
            return
        low, high = (int(value) for value in torch.aminmax(target))
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"targets must be class indices in [0, {self.num_classes}), got values from "
                f"{low} to {high}"
            )


class ConstantCoefficientLoss(torch.autograd.Function):
    """`ParametricLoss` for coefficients that are constants, with its gradient with respect to
    the logits in closed form: for ``a = ce_weight``, ``w = W e_y`` and ``s = (log p)^T w + b_y``,

        d loss / d logits = a (p - e_y) - (1 - a) sigmoid'(s) (w - p 1^T w).

    The forward pass computes it alongside the loss, so the backward pass is one product and
    autograd records one node instead of a dozen: in a fit of the MNIST MLP on the CPU, the
    loss adds 0.22 ms to a step of cross-entropy (2.8 ms) where the recorded operators add 0.32
    (`docs/methods/teaching.md`). Computed in at least float32. First order only: the
    hypergradient, whose coefficients need a gradient, goes through the operators of
    `ParametricLoss.forward` instead.
    """

    @staticmethod
    def forward(  # type: ignore[override]  # Function.forward is untyped
        ctx: FunctionCtx,
        logits: Tensor,
        target: Tensor,
        weight: Tensor,
        bias: Tensor,
        ce_weight: float,
        reduction: Reduction,
    ) -> Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        z = logits.to(dtype)
        shifted = z - z.amax(1, keepdim=True)  # log-softmax by hand: its exp also gives p
        exp = shifted.exp()
        total = exp.sum(1, keepdim=True)
        log_probs = shifted - total.log()
        column = weight.to(dtype).t()[target]  # W e_y, one row per sample
        surrogate = torch.sigmoid((log_probs * column).sum(1) + bias.to(dtype)[target])
        index = target[:, None]
        losses = log_probs.gather(1, index).squeeze(1).lerp(surrogate, 1 - ce_weight).neg()
        slope = ((1 - ce_weight) * surrogate * (1 - surrogate))[:, None]
        grad = (exp / total) * (ce_weight + slope * column.sum(1, keepdim=True)) - slope * column
        grad.scatter_add_(1, index, grad.new_full(index.shape, -ce_weight))
        if reduction == "mean":
            grad /= len(grad)
        ctx.save_for_backward(grad)
        ctx.reduction, ctx.logits_dtype = reduction, logits.dtype  # type: ignore[attr-defined]
        return losses if reduction == "none" else getattr(losses, reduction)()

    @staticmethod
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient is wanted
            raise RuntimeError(
                "ParametricLoss with constant coefficients computes its gradient in closed form, "
                "which cannot be differentiated again (create_graph=True); pass weight and bias "
                "that require grad to differentiate through the loss's operators"
            )
        (grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
        scale = grad_output[:, None] if ctx.reduction == "none" else grad_output  # type: ignore[attr-defined]
        return (grad * scale).to(ctx.logits_dtype), None, None, None, None, None  # type: ignore[attr-defined]
