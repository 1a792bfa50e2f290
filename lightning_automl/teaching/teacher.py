"""`LossTeacher`: the network ``mu_theta(s_t) -> phi_t`` that sets the loss coefficients."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from lightning_automl.core.features import CLASSIFICATION_SUMMARY
from lightning_automl.core.pretrained import PretrainedMixin, build_component
from lightning_automl.core.validation import check_positive_int
from lightning_automl.teaching.parametric_loss import ParametricLoss, Reduction

__all__ = ["TEACHER_FEATURES", "Coefficients", "LossTeacher", "teacher_features"]

Coefficients = Literal["full", "tied"]
COEFFICIENTS = get_args(Coefficients)

TEACHER_FEATURES = (
    "progress",
    *(f"train_{name}" for name in CLASSIFICATION_SUMMARY),
    *(f"dev_{name}" for name in CLASSIFICATION_SUMMARY),
)
"""The student state ``s_t`` the teacher reads, in order (`teacher_features`)."""


def teacher_features(
    progress: float | Tensor, train_summary: Tensor, dev_summary: Tensor
) -> Tensor:
    """``s_t``: training progress in ``[0, 1]``, then the `classification_summary` of recent
    training batches and of the dev set, float32 ``(len(TEACHER_FEATURES),)``; a tensor of
    ``n`` progresses gives ``n`` such rows, ``(n, len(TEACHER_FEATURES))``."""
    device = train_summary.device
    progress_column = torch.as_tensor(progress, dtype=torch.float32, device=device)[..., None]
    summaries = torch.cat([train_summary.float(), dev_summary.float()])
    return torch.cat([progress_column, summaries.expand(*progress_column.shape[:-1], -1)], -1)


class LossTeacher(PretrainedMixin, nn.Module):
    """``phi_t = (W_t, b_t) = mu_theta(s_t)`` for `ParametricLoss` (Wu et al., NeurIPS 2018).

    ``W_t = W_0 + head(tanh(body(s_t)))``, ``b_t = b_0 + ...`` with learned ``W_0 = I``,
    ``b_0 = 0`` and the output layer zero at initialisation: an untrained teacher gives the
    identity coefficients whatever the state, so `taught_loss` starts as the monotone surrogate
    of cross-entropy, and learning moves it from there.

    ``coefficients="full"`` sets every entry of ``W_t``. ``"tied"`` sets one value ``d_t`` for
    the diagonal and one ``o_t`` for every off-diagonal entry, ``W_t = d_t I + o_t (1 1^T - I)``
    (the classes' roles exchangeable), and ``b_t`` per class: the hypergradient of a single
    off-diagonal entry is mostly noise from the few batches it was measured on, while their
    mean is a steady signal (docs: "Tied coefficients").

    Args:
        num_classes: ``C``, the student's number of classes.
        hidden_size: Width of the hidden layer.
        ce_weight: Cross-entropy's weight in the loss (`ParametricLoss`).
        coefficients: ``"full"`` or ``"tied"`` (above).
    """

    pretrained_method = "l2t"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden_size": 32,
        "ce_weight": 0.5,
        "coefficients": "tied",
    }
    """A fresh teacher's config where `build` is not given one."""

    def __init__(
        self,
        num_classes: int,
        hidden_size: int = 32,
        ce_weight: float = 0.5,
        coefficients: Coefficients = "tied",
    ) -> None:
        loss = ParametricLoss(num_classes, ce_weight)
        check_positive_int("hidden_size", hidden_size)
        if coefficients not in COEFFICIENTS:
            raise ValueError(f"coefficients must be 'full' or 'tied', got {coefficients!r}")
        super().__init__()
        self.loss = loss
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.coefficients = coefficients
        # W_0 holds W's free values: all C x C entries, or (diagonal, off-diagonal).
        base_weight = torch.eye(num_classes) if coefficients == "full" else torch.tensor([1.0, 0])
        self.base_weight = nn.Parameter(base_weight)
        self.base_bias = nn.Parameter(torch.zeros(num_classes))
        self.body = nn.Sequential(nn.Linear(len(TEACHER_FEATURES), hidden_size), nn.Tanh())
        self.head = nn.Linear(hidden_size, base_weight.numel() + num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def build(
        cls,
        pretrained: str | None,
        num_classes: int | None,
        hidden_size: int | None,
        ce_weight: float | None,
        coefficients: Coefficients | None,
        seed: int,
    ) -> LossTeacher:
        """The shipped or saved teacher ``pretrained`` names, or a fresh one seeded by ``seed``.

        A config argument left ``None`` takes the card's value, or `defaults`; one given with
        ``pretrained`` must equal the card's (`core.pretrained.build_component`).

        Raises:
            ValueError: A fresh teacher without ``num_classes``, or a config out of range.
            PretrainedError: ``pretrained`` is unknown, or its card disagrees with a value.
        """
        if pretrained is None and num_classes is None:
            raise ValueError("num_classes is required for a fresh teacher (pretrained=None)")
        config = {
            "num_classes": num_classes,
            "hidden_size": hidden_size,
            "ce_weight": ce_weight,
            "coefficients": coefficients,
        }
        return build_component(cls, pretrained, config, cls.defaults, seed)

    def pretrained_config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "hidden_size": self.hidden_size,
            "ce_weight": self.loss.ce_weight,
            "coefficients": self.coefficients,
        }

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(W_t, b_t)`` for the state ``features`` ``(len(TEACHER_FEATURES),)``; for states
        ``(n, len(TEACHER_FEATURES))``, ``n`` of each: ``(n, C, C)`` and ``(n, C)``."""
        classes = self.num_classes
        offsets = self.head(self.body(features))
        weight = self.base_weight.flatten() + offsets[..., :-classes]
        bias = self.base_bias + offsets[..., -classes:]
        if self.coefficients == "full":
            return weight.unflatten(-1, (classes, classes)), bias
        diagonal, off_diagonal = weight[..., :1, None], weight[..., 1:, None]
        eye = torch.eye(classes, dtype=weight.dtype, device=weight.device)
        return off_diagonal + (diagonal - off_diagonal) * eye, bias

    def taught_loss(
        self, logits: Tensor, target: Tensor, features: Tensor, reduction: Reduction = "mean"
    ) -> Tensor:
        """`ParametricLoss` with the coefficients this teacher sets for the state ``features``."""
        weight, bias = self(features)
        return self.loss(logits, target, weight, bias, reduction)
