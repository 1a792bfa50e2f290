"""Scale-free features of a training run, for controllers that read the state of a model.

Every feature is bounded or normalised so that one controller network serves models and datasets
of any size: a classifier's loss and output entropy are divided by ``log C`` (their value for a
uniform prediction over ``C`` classes), accuracy and the probability margin lie in ``[0, 1]`` and
``[-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_automl.core.validation import check_number

__all__ = [
    "CLASSIFICATION_SUMMARY",
    "ExponentialMovingAverage",
    "classification_summaries",
    "classification_summary",
]

CLASSIFICATION_SUMMARY = ("loss", "accuracy", "margin", "entropy")
"""What `classification_summary` returns, in order."""


def classification_summary(logits: Tensor, target: Tensor) -> Tensor:
    """Batch means of a classifier's outputs, ``(4,)`` float32, in `CLASSIFICATION_SUMMARY`'s order.

    - loss: cross-entropy / ``log C``;
    - accuracy: fraction of arg-max predictions equal to the target;
    - margin: ``p_y - max_{i != y} p_i``, in ``[-1, 1]``;
    - entropy: entropy of the predicted distribution / ``log C``.

    Args:
        logits: ``(B, C)`` with ``C >= 2``.
        target: ``(B,)`` class indices.
    """
    return classification_summaries([logits], [target])[0]


@torch.no_grad()
def classification_summaries(logits: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """`classification_summary` of each of ``n`` batches (of any sizes), ``(n, 4)``.

    One pass over all their samples: cheaper than ``n`` calls when the batches are small.
    """
    per_sample = _per_sample_summary(torch.cat(list(logits)), torch.cat(list(targets)))
    sizes = torch.tensor([len(target) for target in targets], device=per_sample.device)
    batch_of_sample = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)
    sums = per_sample.new_zeros(len(sizes), per_sample.shape[1]).index_add_(
        0, batch_of_sample, per_sample
    )
    return sums / sizes[:, None]


def _per_sample_summary(logits: Tensor, target: Tensor) -> Tensor:
    """`classification_summary`'s four quantities for each sample, ``(B, 4)``."""
    # Reductions over the classes run along the first dimension of the transposed (C, B) view:
    # with few classes that is up to three times faster on CPU than along the last one.
    scores = logits.detach().float().T
    log_c = math.log(scores.shape[0])
    log_probs = F.log_softmax(scores, dim=0)
    probs = log_probs.exp()
    target_log_prob = log_probs.gather(0, target[None]).squeeze(0)
    others = probs.scatter(0, target[None], -1.0)
    correct = (scores.argmax(0) == target).float()
    margin = target_log_prob.exp() - others.amax(0)
    entropy = -(probs * log_probs).sum(0)
    return torch.stack([-target_log_prob / log_c, correct, margin, entropy / log_c], dim=-1)


class ExponentialMovingAverage:
    """A bias-corrected exponential moving average of tensors of a fixed shape.

    ``m_t = decay * m_{t-1} + (1 - decay) * x_t`` and `value` is ``m_t / (1 - decay^t)``, the
    mean of the observations so far weighted towards the recent ones (Adam's correction).

    Args:
        decay: In ``[0, 1)``; 0 keeps only the last observation.
    """

    def __init__(self, decay: float) -> None:
        check_number("decay", decay, "a number in [0, 1)", lambda value: 0 <= value < 1)
        self.decay = float(decay)
        self.total: Tensor | None = None
        self.weight = 0.0

    def update(self, value: Tensor) -> None:
        """Add one observation."""
        self.extend(value[None])

    def extend(self, values: Tensor) -> None:
        """Add the observations ``values[0], values[1], ...`` in this order, in one pass:
        ``m_{t+n} = decay^n m_t + (1 - decay) sum_i decay^(n-1-i) values[i]``."""
        values = values.detach()
        count = len(values)
        exponents = torch.arange(count - 1, -1, -1, dtype=values.dtype, device=values.device)
        added = (1 - self.decay) * torch.tensordot(self.decay**exponents, values, 1)
        kept = self.decay**count
        self.total = added if self.total is None else kept * self.total + added
        self.weight = kept * self.weight + (1 - kept)

    @property
    def value(self) -> Tensor | None:
        """The bias-corrected average, or ``None`` before the first observation."""
        return None if self.total is None else self.total / self.weight

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "weight": self.weight}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.weight = state["total"], float(state["weight"])
