"""The two functions of a teacher's hypergradient: the student's taught training loss along an
unroll and the dev objective after it (torch-only; `LossTeacherCallback` and
`LossTeacherTrainModule` both build on them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lightning_automl.core.data_convolution import DataConvolutions
from lightning_automl.core.features import classification_summary
from lightning_automl.core.modes import evaluation_mode
from lightning_automl.core.unroll import LossFn, Params
from lightning_automl.core.validation import check_number
from lightning_automl.teaching.teacher import LossTeacher

__all__ = [
    "DEV_JOIN_SAMPLES",
    "DevObjective",
    "check_dev_objective",
    "dev_objective",
    "dev_objective_fn",
    "dev_summary",
    "joined_dev_batches",
    "student_forward",
    "taught_loss_fn",
]

DevObjective = Literal["cross_entropy", "smooth_error"]
Pair = tuple[Any, Tensor]  # (inputs, class targets)

DEV_JOIN_SAMPLES = 512
"""The teachers' default for the most samples in one batch of `joined_dev_batches`, for the dev
objective (the features keep the batches as loaded): a small student's forward and backward
passes cost per call (four dev batches of 128 took a teacher update of the MLP about 6 % longer
than one of 512), while `core.unroll.hypergradient` holds one such batch's graph, its
activations included, at a time."""


def check_dev_objective(kind: object, sharpness: object) -> None:
    """Raise ``ValueError`` unless ``kind`` is a `DevObjective` and ``sharpness`` > 0."""
    if kind not in ("cross_entropy", "smooth_error"):
        raise ValueError(f"dev_objective must be 'cross_entropy' or 'smooth_error', got {kind!r}")
    check_number("smooth_error_sharpness", sharpness, "a number > 0", lambda value: value > 0)


def dev_objective(logits: Tensor, target: Tensor, kind: DevObjective, sharpness: float) -> Tensor:
    """The teacher's objective on dev data: cross-entropy, or the smooth error of the authors'
    demo ``mean(2 sigmoid(k (max_i p_i - p_y)) - 1)`` with ``k = sharpness``."""
    if kind == "cross_entropy":
        return F.cross_entropy(logits, target)
    probs = logits.softmax(-1)
    gap = probs.max(-1).values - probs.gather(-1, target[:, None]).squeeze(-1)
    return (2 * torch.sigmoid(sharpness * gap) - 1).mean()


StudentForward = Callable[[Params, dict[str, Tensor], Any], Tensor]


def student_forward(student: nn.Module) -> StudentForward:
    """``forward(params, buffers, inputs)``: the student's output computed with the given
    tensors (`torch.func.functional_call`). ``functional_call`` looks for tied weights at every
    call, a walk over all the submodules that costs a small student as much as a layer; this
    checks once, and asks for the search only if the student has some. A student with
    convolutions runs them under `DataConvolutions`, so that the unroll's Hessian-vector
    products skip the gradient for the data (about a quarter of a small CNN's teacher update)."""
    named = [
        *student.named_parameters(remove_duplicate=False),
        *student.named_buffers(remove_duplicate=False),
    ]
    tied = len({id(tensor) for _, tensor in named}) < len(named)
    convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    convolutional = any(isinstance(module, convolutions) for module in student.modules())

    def forward(params: Params, buffers: dict[str, Tensor], inputs: Any) -> Tensor:
        with DataConvolutions() if convolutional else nullcontext():
            return functional_call(student, (params, buffers), (inputs,), tie_weights=tied)

    return forward


def taught_loss_fn(
    teacher: LossTeacher,
    student: nn.Module,
    buffers: dict[str, Tensor],
    features_at: Callable[[int], Tensor],
    observe: Callable[[Tensor], None] | None = None,
) -> LossFn:
    """``loss_fn(params, k, pairs)`` for `lightning_automl.core.unroll`: the mean taught loss of
    the student at ``params`` over the micro-batches ``pairs`` of its step ``k``, with the
    coefficients the teacher sets for the state ``features_at(k)`` (differentiable in the
    teacher's parameters). ``buffers`` (e.g. BatchNorm statistics) are the student's, copied.
    ``observe``, if given, receives the `classification_summary` of every micro-batch."""

    forward = student_forward(student)

    def loss_fn(params: Params, k: int, pairs: Sequence[Pair]) -> Tensor:
        weight, bias = teacher(features_at(k))
        losses = []
        for inputs, target in pairs:
            logits = forward(params, buffers, inputs)
            if observe is not None:
                observe(classification_summary(logits, target))
            losses.append(teacher.loss(logits, target, weight, bias))
        return torch.stack(losses).mean()

    return loss_fn


def joined_dev_batches(dev: Sequence[Pair], max_samples: int = DEV_JOIN_SAMPLES) -> list[Pair]:
    """``dev`` with consecutive batches of tensor inputs concatenated into batches of at most
    ``max_samples`` samples, in order; the teachers join their dev set once, when they load it.
    A larger batch, one with other inputs, or one whose inputs differ from the previous
    batch's in anything but their number stays alone. In evaluation mode a sample's logits do
    not depend on its batch, so the dev objective and features are the same up to rounding."""
    groups: list[list[Pair]] = []
    size = 0
    for inputs, target in dev:
        previous = groups[-1][0][0] if groups else None
        joinable = (
            isinstance(inputs, Tensor)
            and isinstance(previous, Tensor)
            and inputs.shape[1:] == previous.shape[1:]
            and inputs.dtype == previous.dtype
            and inputs.device == previous.device
        )
        if joinable and size + len(target) <= max_samples:
            groups[-1].append((inputs, target))
            size += len(target)
        else:
            groups.append([(inputs, target)])
            size = len(target)
    return [
        group[0]
        if len(group) == 1
        else (torch.cat([x for x, _ in group]), torch.cat([y for _, y in group]))
        for group in groups
    ]


def _dev_logits(student: nn.Module, dev: Sequence[Pair], state: Any = None) -> Tensor:
    """The student's logits (eval mode) on all the ``dev`` batches; ``state``, if given, is
    the ``(params, buffers)`` to call it with (`torch.func.functional_call`)."""
    with evaluation_mode(student):
        if state is None:
            return torch.cat([student(inputs) for inputs, _ in dev])
        forward, (params, buffers) = student_forward(student), state
        return torch.cat([forward(params, buffers, inputs) for inputs, _ in dev])


@torch.no_grad()
def dev_summary(student: nn.Module, dev: Sequence[Pair], state: Any = None) -> Tensor:
    """`classification_summary` of the student (eval mode) on all the ``dev`` batches, with its
    own weights or the ``(params, buffers)`` ``state``."""
    return classification_summary(
        _dev_logits(student, dev, state), torch.cat([target for _, target in dev])
    )


def dev_objective_fn(
    student: nn.Module,
    buffers: dict[str, Tensor],
    dev: Sequence[Pair],
    kind: DevObjective,
    sharpness: float,
) -> list[Callable[[Params], Tensor]]:
    """The terms ``M_i(params)`` of `dev_objective` of the student at ``params`` (in eval mode)
    over all the ``dev`` batches, one per batch: batch ``i``'s mean weighted by its share of
    the samples, so that they sum to the mean over all of them and `core.unroll.hypergradient`
    holds one batch's graph at a time."""
    total = sum(len(target) for _, target in dev)
    forward = student_forward(student)

    def term(inputs: Any, target: Tensor) -> Callable[[Params], Tensor]:
        def objective(params: Params) -> Tensor:
            with evaluation_mode(student):
                logits = forward(params, buffers, inputs)
            return dev_objective(logits, target, kind, sharpness) * (len(target) / total)

        return objective

    return [term(inputs, target) for inputs, target in dev]
