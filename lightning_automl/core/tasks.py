"""Tasks and task families: the inner problems that learned optimizers and controllers train on.

A `TaskFamily` draws a `Task` from a ``torch.Generator``, so each DDP rank draws its own tasks by
seeding with its rank. A task holds its starting parameters ``theta_0`` (name -> tensor), a
stream of minibatches from its own generator and a functional loss ``f(theta; batch)`` that
takes the parameters as a dict, as ``torch.func.functional_call`` does: an unrolled inner
training can then differentiate through the parameters it produces.

References:
    M. Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
    NeurIPS 2016, section 3: the quadratic functions (3.1) and the MNIST MLP (3.2).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_automl.core.validation import check_number, check_positive_int

__all__ = [
    "MLPFamily",
    "MLPTask",
    "MixtureFamily",
    "QuadraticFamily",
    "QuadraticTask",
    "Task",
    "TaskFamily",
]

BatchT = TypeVar("BatchT")

Activation = Literal["sigmoid", "relu", "tanh"]
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
}


def _draw_seed(generator: torch.Generator) -> int:
    """A seed for a task's own generator, drawn from the family's generator."""
    return int(torch.randint(0, 2**62, (), generator=generator))


class Task(ABC, Generic[BatchT]):
    """One inner problem ``f``: starting parameters, a minibatch stream and ``f(theta; batch)``.

    Args:
        initial_params: ``theta_0``, name -> tensor.
    """

    def __init__(self, initial_params: dict[str, Tensor]) -> None:
        self._initial_params = initial_params

    def initial_params(self) -> dict[str, Tensor]:
        """A fresh copy of ``theta_0`` (name -> tensor), free to update in place."""
        return {name: value.clone() for name, value in self._initial_params.items()}

    @abstractmethod
    def next_batch(self) -> BatchT:
        """The next minibatch, drawn from the task's own generator."""

    @abstractmethod
    def loss(self, params: Mapping[str, Tensor], batch: BatchT) -> Tensor:
        """The scalar loss ``f(theta; batch)``, differentiable with respect to ``params``."""

    @classmethod
    def stacked_losses(
        cls,
        tasks: Sequence[Task[BatchT]],
        params: Sequence[Mapping[str, Tensor]],
        batches: Sequence[BatchT],
    ) -> Tensor:
        """``(len(tasks),)`` losses of tasks of this class, each at its params and batch.

        Meta-training evaluates many tasks at once through this; a subclass may compute it in
        one vectorised call, and must then override it again if it changes `loss`.
        """
        return torch.stack(
            [
                task.loss(task_params, batch)
                for task, task_params, batch in zip(tasks, params, batches, strict=True)
            ]
        )


class TaskFamily(ABC):
    """A distribution over tasks."""

    @abstractmethod
    def sample(self, generator: torch.Generator) -> Task[Any]:
        """Draw a task; the same (CPU) generator state draws the same task."""


class QuadraticTask(Task[None]):
    """``f(theta) = ||W theta - y||^2`` (summed over the coordinates); it takes no batches.

    Args:
        weight: ``W``, shape ``(dim, dim)``.
        target: ``y``, shape ``(dim,)``.
        initial_theta: ``theta_0``, shape ``(dim,)``; the parameter is named ``"theta"``.
    """

    def __init__(self, weight: Tensor, target: Tensor, initial_theta: Tensor) -> None:
        super().__init__({"theta": initial_theta})
        self.weight = weight
        self.target = target

    def next_batch(self) -> None:
        """``None``: the objective is deterministic."""
        return None

    def loss(self, params: Mapping[str, Tensor], batch: None = None) -> Tensor:
        residual = self.weight @ params["theta"] - self.target  # (dim,)
        return residual.square().sum()

    @classmethod
    def stacked_losses(
        cls,
        tasks: Sequence[Task[None]],
        params: Sequence[Mapping[str, Tensor]],
        batches: Sequence[None],
    ) -> Tensor:
        """All the quadratics in one batched matrix product (equal to `loss` up to rounding)."""
        quadratics = [task for task in tasks if isinstance(task, QuadraticTask)]
        if len(quadratics) != len(tasks):
            return super().stacked_losses(tasks, params, batches)
        weight = torch.stack([task.weight for task in quadratics])  # (K, dim, dim)
        target = torch.stack([task.target for task in quadratics])  # (K, dim)
        theta = torch.stack([task_params["theta"] for task_params in params])  # (K, dim)
        residual = (weight @ theta.unsqueeze(-1)).squeeze(-1) - target  # (K, dim)
        return residual.square().sum(dim=-1)


class QuadraticFamily(TaskFamily):
    """Random quadratics ``f(theta) = ||W theta - y||^2`` (section 3.1 of the paper).

    Each task draws ``W`` (``dim x dim``), ``y`` and ``theta_0`` (``dim``) with i.i.d. standard
    normal entries, in that order.

    Args:
        dim: Number of coordinates of ``theta`` (10 in the paper).
    """

    def __init__(self, dim: int = 10) -> None:
        check_positive_int("dim", dim)
        self.dim = dim

    def sample(self, generator: torch.Generator) -> QuadraticTask:
        weight = torch.randn(self.dim, self.dim, generator=generator)
        target = torch.randn(self.dim, generator=generator)
        initial_theta = torch.randn(self.dim, generator=generator)
        return QuadraticTask(weight, target, initial_theta)


class MLPTask(Task[tuple[Tensor, Tensor]]):
    """Classification by an MLP with cross-entropy loss (mean over the minibatch).

    The parameters are ``hidden{i}.weight`` ``(width, in)`` and ``hidden{i}.bias`` for each
    hidden layer ``i``, then ``output.weight`` ``(num_classes, width)`` and ``output.bias``.
    Minibatches are drawn uniformly with replacement from the task's own generator.

    Args:
        initial_params: ``theta_0`` in the layout above.
        inputs: ``(N, features)`` training inputs.
        labels: ``(N,)`` class indices.
        activation: The hidden layers' nonlinearity.
        batch_size: Examples per minibatch.
        seed: Seed of the task's minibatch generator.
    """

    def __init__(
        self,
        initial_params: dict[str, Tensor],
        inputs: Tensor,
        labels: Tensor,
        activation: Activation,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__(initial_params)
        self.inputs = inputs
        self.labels = labels
        self.activation = ACTIVATIONS[activation]
        self.batch_size = batch_size
        self.depth = sum(name.startswith("hidden") for name in initial_params) // 2  # W and b
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """``batch_size`` (input, label) pairs drawn uniformly with replacement."""
        index = torch.randint(len(self.inputs), (self.batch_size,), generator=self.generator)
        index = index.to(self.inputs.device)
        return self.inputs[index], self.labels[index]

    def loss(self, params: Mapping[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        for layer in range(self.depth):
            x = self.activation(
                F.linear(x, params[f"hidden{layer}.weight"], params[f"hidden{layer}.bias"])
            )
        logits = F.linear(x, params["output.weight"], params["output.bias"])  # (B, num_classes)
        return F.cross_entropy(logits, y)


class MLPFamily(TaskFamily):
    """MLPs on a fixed training set, each with a fresh random init (section 3.2 of the paper).

    The paper's task is MNIST with one hidden layer of 20 sigmoid units and minibatches of 128;
    its generalisation tests change the width, the depth and the activation. The weights and
    biases of each layer are drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, as
    ``nn.Linear`` initialises them, or from ``N(0, init_std^2)`` if ``init_std`` is given (the
    authors' code draws them from ``N(0, 0.01^2)``); each task also draws the seed of its
    minibatch stream.

    Args:
        inputs: ``(N, ...)`` floating-point training inputs, flattened to ``(N, features)``
            (e.g. the MNIST training images, or small random tensors in tests).
        labels: ``(N,)`` integer class indices in ``[0, num_classes)``.
        num_classes: Number of classes.
        hidden: Units per hidden layer.
        depth: Number of hidden layers.
        activation: ``"sigmoid"``, ``"relu"`` or ``"tanh"``.
        batch_size: Examples per minibatch.
        init_std: Standard deviation of a normal init of all weights and biases; ``None`` for
            ``nn.Linear``'s uniform init.
    """

    def __init__(
        self,
        inputs: Tensor,
        labels: Tensor,
        num_classes: int = 10,
        hidden: int = 20,
        depth: int = 1,
        activation: Activation = "sigmoid",
        batch_size: int = 128,
        init_std: float | None = None,
    ) -> None:
        for name, value in [
            ("num_classes", num_classes),
            ("hidden", hidden),
            ("depth", depth),
            ("batch_size", batch_size),
        ]:
            check_positive_int(name, value)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if init_std is not None:
            check_number(
                "init_std", init_std, "a positive number or None", lambda s: 0 < s < math.inf
            )
        if not inputs.is_floating_point() or inputs.dim() < 2 or len(inputs) == 0:
            raise ValueError(
                "inputs must be a non-empty floating-point tensor of shape (N, ...), got "
                f"{inputs.dtype} of shape {tuple(inputs.shape)}"
            )
        if labels.shape != (len(inputs),) or labels.is_floating_point():
            raise ValueError(
                f"labels must be integer class indices of shape ({len(inputs)},), got "
                f"{labels.dtype} of shape {tuple(labels.shape)}"
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}) (num_classes), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        self.inputs = inputs.flatten(1)
        self.labels = labels.long()
        self.num_classes = num_classes
        self.hidden = hidden
        self.depth = depth
        self.activation: Activation = activation
        self.batch_size = batch_size
        self.init_std = init_std

    def sample(self, generator: torch.Generator) -> MLPTask:
        widths = [self.inputs.size(1)] + [self.hidden] * self.depth + [self.num_classes]
        names = [f"hidden{layer}" for layer in range(self.depth)] + ["output"]
        initial_params = {}
        for name, fan_in, fan_out in zip(names, widths[:-1], widths[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            for suffix, shape in [("weight", (fan_out, fan_in)), ("bias", (fan_out,))]:
                if self.init_std is None:
                    value = torch.rand(shape, generator=generator) * (2 * bound) - bound
                else:
                    value = torch.randn(shape, generator=generator) * self.init_std
                initial_params[f"{name}.{suffix}"] = value.to(self.inputs)
        return MLPTask(
            initial_params,
            self.inputs,
            self.labels,
            self.activation,
            self.batch_size,
            seed=_draw_seed(generator),
        )


class MixtureFamily(TaskFamily):
    """Each task is drawn from one of ``families``, chosen uniformly by the same generator.

    Meta-training on a mixture widens what a learned optimizer has seen, e.g. sigmoid and ReLU
    MLPs (the paper's optimizer, trained on sigmoid MLPs only, fails on ReLU ones, section 3.2).

    Args:
        families: At least one task family.
    """

    def __init__(self, families: Sequence[TaskFamily]) -> None:
        if not families or not all(isinstance(family, TaskFamily) for family in families):
            raise ValueError(f"families must be a non-empty list of TaskFamily, got {families!r}")
        self.families = list(families)

    def sample(self, generator: torch.Generator) -> Task[Any]:
        index = int(torch.randint(len(self.families), (), generator=generator))
        return self.families[index].sample(generator)
