"""`ParametricLoss`: the loss family whose coefficients the L2T-DLF teacher sets."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_automl.core.validation import check_number, check_positive_int

__all__ = ["ParametricLoss", "Reduction"]

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

        Raises:
            ValueError: ``logits`` is not ``(B, C)``, ``target`` not ``(B,)`` integers, or a
                target is outside ``[0, C)``.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self._check(logits, target)
        if weight is None or bias is None:
            weight, bias = self.identity_coefficients(logits.dtype, logits.device)
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
