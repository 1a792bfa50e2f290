"""The inner loop of L2L as functions: tasks optimised by a `CoordinateLSTM`, unrolled for BPTT.

The update is the one `LSTMOptimizer` applies, ``theta_{t+1} = theta_t + g_t`` with
``(g_t, h_{t+1}) = m(grad_t, h_t; phi)``, written functionally so that ``theta_t`` stays a
function of ``phi`` and the meta-loss ``sum_t f(theta_t)`` can be differentiated through the
unroll. The gradient inputs ``grad_t`` are detached by default: the paper drops the second
derivatives of ``f`` (section 2, the dashed edges of its Figure 2), so the meta-gradient flows
through the updates and the LSTM states only.

The tasks of a batch are optimised side by side: the coordinates of all of them form one vector
``theta`` and one batch of the coordinatewise LSTM. Their losses are independent, so the
gradient of their sum with respect to ``theta`` holds each task's own gradient.

References:
    M. Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
    NeurIPS 2016, section 2: the update rule and the meta-objective
    ``L(phi) = E_f[sum_t w_t f(theta_t)]`` (w_t = 1), trained by truncated BPTT.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_automl.core.tasks import Task
from lightning_automl.optim.typed_lstm import L2LNetwork, TypedCoordinateLSTM

__all__ = [
    "InnerState",
    "ParallelTasks",
    "inner_step",
    "loss_curve",
    "run_unroll",
    "start_inner_loop",
]


class ParallelTasks:
    """Tasks optimised side by side, their parameters concatenated into one vector ``theta``.

    ``theta`` holds the first task's parameters flattened in the order of its
    ``initial_params()``, then the second task's, and so on: ``N`` coordinates in all.

    Args:
        tasks: The tasks; at least one.
    """

    def __init__(self, tasks: Sequence[Task[Any]]) -> None:
        if not tasks:
            raise ValueError("tasks must hold at least one Task, got none")
        self.tasks = list(tasks)
        initial = [task.initial_params() for task in self.tasks]
        self._shapes = [[value.shape for value in params.values()] for params in initial]
        self._names = [list(params) for params in initial]
        self.task_sizes = [sum(math.prod(shape) for shape in shapes) for shapes in self._shapes]
        """Coordinates per task."""
        self.named_sizes = [
            (name, math.prod(shape))
            for names, shapes in zip(self._names, self._shapes, strict=True)
            for name, shape in zip(names, shapes, strict=True)
        ]
        """``(parameter name, coordinates)`` of every parameter of every task, in ``theta``'s
        order: what a `TypedCoordinateLSTM` reads the types from."""
        classes = {type(task) for task in self.tasks}
        self._task_class = classes.pop() if len(classes) == 1 else Task

    def __len__(self) -> int:
        return len(self.tasks)

    def initial_theta(self) -> Tensor:
        """``theta_0`` of all tasks, ``(N,)``."""
        return torch.cat(
            [value.reshape(-1) for task in self.tasks for value in task.initial_params().values()]
        )

    def params(self, theta: Tensor) -> list[dict[str, Tensor]]:
        """Each task's parameters (name -> view of ``theta``), as its ``loss`` takes them."""
        params = []
        for chunk, names, shapes in zip(
            theta.split(self.task_sizes), self._names, self._shapes, strict=True
        ):
            values = chunk.split([math.prod(shape) for shape in shapes])
            params.append(
                {
                    name: value.view(shape)
                    for name, value, shape in zip(names, values, shapes, strict=True)
                }
            )
        return params

    def losses(self, theta: Tensor) -> Tensor:
        """``f(theta; batch)`` of every task on its next minibatch, ``(num_tasks,)``.

        Tasks of one class are evaluated together by `Task.stacked_losses`.
        """
        batches = [task.next_batch() for task in self.tasks]
        return self._task_class.stacked_losses(self.tasks, self.params(theta), batches)


@dataclasses.dataclass
class InnerState:
    """Where the inner optimisation of a `ParallelTasks` stands after ``step`` inner steps.

    Attributes:
        theta: ``(N,)`` parameters ``theta_t`` of all tasks.
        grad: ``(N,)`` gradient ``grad_t`` of the losses at ``theta_t``, the next input of ``m``.
        hidden: ``(num_layers, hidden_size, N)`` LSTM hidden states ``h_t``.
        cell: ``(num_layers, hidden_size, N)`` LSTM cell states.
        step: Inner steps taken since ``theta_0``.
    """

    theta: Tensor
    grad: Tensor
    hidden: Tensor
    cell: Tensor
    step: int

    def detach(self) -> InnerState:
        """The same state cut from the graph: the truncation between two unrolls."""
        return InnerState(
            self.theta.detach(),
            self.grad.detach(),
            self.hidden.detach(),
            self.cell.detach(),
            self.step,
        )


def _losses_and_gradient(
    tasks: ParallelTasks, theta: Tensor, second_order: bool = False
) -> tuple[Tensor, Tensor]:
    """Each task's loss at ``theta`` (``(num_tasks,)``) and their gradient ``grad_t`` (``(N,)``).

    ``grad_t`` is detached unless ``second_order``. When ``theta`` is part of a graph (it
    depends on ``phi``), the losses keep it, so that the meta-loss can be differentiated later.
    """
    with torch.enable_grad():
        tracked = theta.requires_grad
        if not tracked:
            theta = theta.detach().requires_grad_()
        losses = tasks.losses(theta)
        (grad,) = torch.autograd.grad(
            losses.sum(), theta, retain_graph=tracked or second_order, create_graph=second_order
        )
    return (losses if tracked else losses.detach()), grad


def start_inner_loop(network: L2LNetwork, tasks: ParallelTasks) -> tuple[InnerState, Tensor]:
    """The state at ``theta_0`` (zero LSTM states) and the losses ``f(theta_0)``, ``(K,)``."""
    theta = tasks.initial_theta()
    losses, grad = _losses_and_gradient(tasks, theta)
    hidden, cell = network.initial_state(theta.numel(), device=theta.device)
    return InnerState(theta, grad, hidden, cell, step=0), losses


def inner_step(
    network: L2LNetwork, tasks: ParallelTasks, state: InnerState, second_order: bool = False
) -> tuple[Tensor, InnerState]:
    """One update ``theta_{t+1} = theta_t + g_t``; the losses ``f(theta_{t+1})`` and the new state.

    The update is computed as `LSTMOptimizer.step` computes it, so a network trained here
    reproduces the same trajectory there. With ``second_order`` the gradient inputs keep their
    graph, so that the meta-gradient includes the second derivatives the paper drops.
    """
    if isinstance(network, TypedCoordinateLSTM):
        update, hidden, cell = network(state.grad, state.hidden, state.cell, tasks.named_sizes)
    else:
        update, hidden, cell = network(state.grad, state.hidden, state.cell)  # (N,), states
    theta = state.theta + update.to(state.theta.dtype)
    losses, grad = _losses_and_gradient(tasks, theta, second_order)
    return losses, InnerState(theta, grad, hidden, cell, state.step + 1)


def run_unroll(
    network: L2LNetwork,
    tasks: ParallelTasks,
    state: InnerState,
    num_steps: int,
    second_order: bool = False,
) -> tuple[Tensor, InnerState]:
    """``num_steps`` inner steps from ``state``: the ``(num_steps, num_tasks)`` losses and the end.

    The losses ``f(theta_{t+1})`` of the unroll's steps are differentiable with respect to the
    network's weights (when grad mode is on); their mean is the meta-loss of a truncated BPTT
    segment. Call `InnerState.detach` on the returned state before the next segment.
    """
    losses = []
    for _ in range(num_steps):
        step_losses, state = inner_step(network, tasks, state, second_order)
        losses.append(step_losses)
    return torch.stack(losses), state


def loss_curve(network: L2LNetwork, tasks: ParallelTasks, num_steps: int) -> Tensor:
    """The losses ``f(theta_t)``, ``t = 0..num_steps``, under the frozen network: ``(T + 1, K)``.

    No meta-gradient is kept; this also runs inside Lightning's validation (inference mode).
    """
    with torch.inference_mode(False), torch.no_grad():
        state, losses = start_inner_loop(network, tasks)
        curve = [losses]
        for _ in range(num_steps):
            losses, state = inner_step(network, tasks, state)
            curve.append(losses)
    return torch.stack(curve)
