"""Functional unrolled inner training (``torch.func``) and its exact reverse-mode hypergradient.

The inner model's parameters are a dict name -> tensor and an inner optimizer is a pure function
``(params, grads, state) -> (params, state)``, so ``K`` unrolled updates form one autograd graph
from the hyperparameters that shape the training loss to the parameters they produce. Reverse mode
through that graph is the exact hypergradient, Hessian-vector products included
(Maclaurin et al., ICML 2015; the teacher's gradient of L2T-DLF, Wu et al., NeurIPS 2018):

    dM/dlambda = sum_k dM/dw_{k+1} . dw_{k+1}/dlambda.

The objective's gradient ``dM/dw_K`` is taken first and then carried back through the unroll.
``M`` can be a sum of terms (one per dev batch, say) whose gradients are taken one after the
other, so that only one term's graph is held next to the unroll's. Memory grows with ``K``.
`hypergradient` can instead keep only the states at segment boundaries and recompute each segment
during the backward pass (checkpointing): memory ~ ``K / c + c`` steps for segments of ``c``, at
the price of one more forward pass, with the same result.

`SGD` and `Adam` reproduce ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay) and
``torch.optim.Adam`` / ``AdamW``; `inner_optimizer` reads the update rule of a torch optimizer and
`mirror_optimizer` its state as well.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_automl.core.validation import check_number, check_positive_int

__all__ = [
    "SGD",
    "Adam",
    "Hypergradient",
    "InnerOptimizer",
    "InnerState",
    "Objective",
    "hypergradient",
    "inner_optimizer",
    "mirror_optimizer",
    "unroll",
]

Params = dict[str, Tensor]
LossFn = Callable[[Params, int, Any], Tensor]
"""``loss_fn(params, k, batch)``: the scalar training loss of inner step ``k`` (0-based)."""
Objective = Callable[[Params], Tensor] | Sequence[Callable[[Params], Tensor]]
"""``M(w)``, or the terms ``M_i(w)`` of ``M = sum_i M_i``: scalar functions of the parameters."""


@dataclass(frozen=True)
class InnerState:
    """An inner optimizer's state: the number of steps taken and its per-parameter buffers.

    Attributes:
        step: Updates taken so far.
        buffers: Buffer kind (e.g. ``"exp_avg"``) -> parameter name -> tensor.
    """

    step: int
    buffers: dict[str, Params]

    def tensors(self) -> list[Tensor]:
        """The buffers in a fixed order (kind, then parameter name)."""
        return [
            self.buffers[kind][name] for kind in sorted(self.buffers) for name in self.buffers[kind]
        ]

    def replace_tensors(self, tensors: Sequence[Tensor]) -> InnerState:
        """The same state with `tensors` (in the order of `tensors`) as its buffers."""
        values = iter(tensors)
        buffers = {
            kind: {name: next(values) for name in self.buffers[kind]}
            for kind in sorted(self.buffers)
        }
        return InnerState(self.step, buffers)


class InnerOptimizer(ABC):
    """A differentiable update rule for a dict of parameters."""

    buffer_kinds: tuple[str, ...] = ()

    def init_state(self, params: Mapping[str, Tensor]) -> InnerState:
        """The state before the first step: zero buffers."""
        zeros = {name: torch.zeros_like(value) for name, value in params.items()}
        return InnerState(0, {kind: dict(zeros) for kind in self.buffer_kinds})

    @abstractmethod
    def step(
        self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: InnerState
    ) -> tuple[Params, InnerState]:
        """One update; differentiable in ``params``, ``grads`` and ``state``."""


class SGD(InnerOptimizer):
    """``torch.optim.SGD``'s update: ``w <- w - lr * d`` with momentum buffer ``b``.

    ``g = grad + weight_decay * w``; ``b = g`` at the first step, then
    ``b = momentum * b + (1 - dampening) * g``; ``d = g + momentum * b`` (Nesterov) or ``b``.
    """

    def __init__(
        self,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        check_number("lr", lr, "a number > 0", lambda value: value > 0)
        check_number("momentum", momentum, "a number in [0, 1)", lambda value: 0 <= value < 1)
        check_number("dampening", dampening, "a number in [0, 1]", lambda value: 0 <= value <= 1)
        check_number("weight_decay", weight_decay, "a number >= 0", lambda value: value >= 0)
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening 0")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.buffer_kinds = ("momentum_buffer",) if momentum else ()

    def step(
        self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: InnerState
    ) -> tuple[Params, InnerState]:
        # One fused op (``add`` with ``alpha``) per term: fewer nodes for the backward pass.
        new_params, buffers = {}, {}
        for name, param in params.items():
            direction = grads[name]
            if self.weight_decay:
                direction = direction.add(param, alpha=self.weight_decay)
            if self.momentum:
                if state.step == 0:
                    buffer = direction
                elif self.dampening:
                    previous = state.buffers["momentum_buffer"][name]
                    buffer = previous.mul(self.momentum).add(direction, alpha=1 - self.dampening)
                else:
                    buffer = direction.add(
                        state.buffers["momentum_buffer"][name], alpha=self.momentum
                    )
                buffers[name] = buffer
                direction = direction.add(buffer, alpha=self.momentum) if self.nesterov else buffer
            new_params[name] = param.add(direction, alpha=-self.lr)
        kinds = {"momentum_buffer": buffers} if self.momentum else {}
        return new_params, InnerState(state.step + 1, kinds)


class Adam(InnerOptimizer):
    """``torch.optim.Adam``'s update (``AdamW``'s with ``decoupled_weight_decay=True``).

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``w <- w - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)``. The square root has a zero
    derivative where ``v = 0`` (a coordinate that never had a gradient) instead of an infinite
    one, so such coordinates do not turn the hypergradient into NaN.
    """

    buffer_kinds = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        check_number("lr", lr, "a number > 0", lambda value: value > 0)
        for index, beta in enumerate(betas):
            check_number(f"betas[{index}]", beta, "a number in [0, 1)", lambda v: 0 <= v < 1)
        check_number("eps", eps, "a number >= 0", lambda value: value >= 0)
        check_number("weight_decay", weight_decay, "a number >= 0", lambda value: value >= 0)
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.weight_decay, self.decoupled_weight_decay = weight_decay, decoupled_weight_decay

    def step(
        self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: InnerState
    ) -> tuple[Params, InnerState]:
        beta1, beta2 = self.betas
        t = state.step + 1
        step_size = self.lr / (1 - beta1**t)
        root_correction = math.sqrt(1 - beta2**t)
        new_params: Params = {}
        exp_avg: Params = {}
        exp_avg_sq: Params = {}
        for name, param in params.items():
            grad = grads[name]
            if self.weight_decay and self.decoupled_weight_decay:
                param = param.mul(1 - self.lr * self.weight_decay)
            elif self.weight_decay:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg[name] = state.buffers["exp_avg"][name].lerp(grad, 1 - beta1)
            previous_sq = state.buffers["exp_avg_sq"][name]
            exp_avg_sq[name] = previous_sq.mul(beta2).addcmul(grad, grad, value=1 - beta2)
            denominator = _sqrt_zero_safe(exp_avg_sq[name]).div(root_correction).add(self.eps)
            new_params[name] = param.addcdiv(exp_avg[name], denominator, value=-step_size)
        return new_params, InnerState(t, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq})


def _sqrt_zero_safe(value: Tensor) -> Tensor:
    """``sqrt(value)`` for ``value >= 0``, with derivative 0 (not inf) where ``value == 0``."""
    positive = value > 0
    return torch.where(positive, value, torch.ones_like(value)).sqrt() * positive


def inner_optimizer(optimizer: torch.optim.Optimizer) -> InnerOptimizer:
    """The `InnerOptimizer` with the update rule and hyperparameters of a torch optimizer.

    Args:
        optimizer: A ``torch.optim.SGD``, ``Adam`` or ``AdamW`` whose parameter groups all share
            their hyperparameters.

    Raises:
        TypeError: Another optimizer class.
        ValueError: Parameter groups with different hyperparameters, ``maximize`` or
            ``amsgrad``.
    """
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if any(group != groups[0] for group in groups):
        raise ValueError(
            f"the unrolled {type(optimizer).__name__} needs one set of hyperparameters for all "
            f"parameter groups, got {groups}"
        )
    group = groups[0]
    if group.get("maximize") or group.get("amsgrad"):
        raise ValueError("the unrolled optimizer supports neither maximize=True nor amsgrad=True")
    if isinstance(optimizer, torch.optim.SGD):
        return SGD(
            group["lr"],
            group["momentum"],
            group["dampening"],
            group["weight_decay"],
            group["nesterov"],
        )
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        decoupled = isinstance(optimizer, torch.optim.AdamW) or group.get("decoupled_weight_decay")
        return Adam(
            group["lr"], group["betas"], group["eps"], group["weight_decay"], bool(decoupled)
        )
    raise TypeError(
        "the unrolled student update supports torch.optim.SGD (with or without momentum), "
        f"Adam and AdamW, got {type(optimizer).__name__}"
    )


def mirror_optimizer(
    optimizer: torch.optim.Optimizer, names: Mapping[Tensor, str]
) -> tuple[InnerOptimizer, InnerState]:
    """`inner_optimizer` of a running torch optimizer, with a copy of its state.

    Args:
        optimizer: As for `inner_optimizer`.
        names: Parameter tensor -> name, for every parameter the optimizer updates.

    Raises:
        TypeError, ValueError: As `inner_optimizer`; also ``ValueError`` for a parameter
            missing from ``names``.
    """
    inner = inner_optimizer(optimizer)
    params = [param for group in optimizer.param_groups for param in group["params"]]
    missing = [tuple(param.shape) for param in params if param not in names]
    if missing:
        raise ValueError(f"parameters of shapes {missing} are in the optimizer but not named")
    state = inner.init_state({names[param]: param.detach() for param in params})
    steps = [optimizer.state[param].get("step") for param in params]
    step = max((int(step) for step in steps if step is not None), default=0)
    if isinstance(inner, SGD) and inner.momentum:
        step = int(any("momentum_buffer" in optimizer.state[param] for param in params))
    for kind in inner.buffer_kinds:
        for param in params:
            buffer = optimizer.state[param].get(kind)
            if buffer is not None:
                state.buffers[kind][names[param]] = buffer.detach().clone()
    return inner, InnerState(step, state.buffers)


def unroll(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    state: InnerState,
    optimizer: InnerOptimizer,
    batches: Sequence[Any],
    create_graph: bool = True,
    first_step: int = 0,
) -> tuple[Params, InnerState]:
    """``len(batches)`` inner updates ``w_{k+1} = update(w_k, grad loss_fn(w_k, k, batch_k))``.

    With ``create_graph`` the result stays differentiable with respect to ``params``, ``state``
    and anything ``loss_fn`` uses (second-order terms included); without it every step starts
    from detached tensors and the result carries no graph.
    """
    current = dict(params)
    for offset, batch in enumerate(batches):
        if not create_graph:
            current = {name: value.detach().requires_grad_() for name, value in current.items()}
            state = state.replace_tensors([value.detach() for value in state.tensors()])
        loss = loss_fn(current, first_step + offset, batch)
        grads = torch.autograd.grad(
            loss,
            list(current.values()),
            create_graph=create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        current, state = optimizer.step(current, dict(zip(current, grads, strict=True)), state)
    if not create_graph:
        current = {name: value.detach() for name, value in current.items()}
        state = state.replace_tensors([value.detach() for value in state.tensors()])
    return current, state


class Hypergradient(NamedTuple):
    """What `hypergradient` returns."""

    objective: Tensor
    """``M(w_K)``."""
    grads: list[Tensor]
    """``dM/dlambda`` for each hyperparameter tensor."""
    params: Params
    """``w_K``."""
    state: InnerState
    """The inner optimizer's state after the unroll."""


def hypergradient(
    loss_fn: LossFn,
    objective: Objective,
    params: Mapping[str, Tensor],
    state: InnerState,
    optimizer: InnerOptimizer,
    batches: Sequence[Any],
    hyperparameters: Sequence[Tensor],
    checkpoint_every: int | None = None,
) -> Hypergradient:
    """``M(w_K)`` after `unroll` from ``params`` and its exact gradient for ``hyperparameters``.

    ``params`` and ``state`` are the starting point, a constant of the hyperparameters.
    ``objective`` is ``M`` or the list of its terms; each term is evaluated and differentiated
    in turn, so a dev set given as one term per batch holds one batch's graph at a time.
    ``checkpoint_every=c`` recomputes the unroll in segments of ``c`` steps during the backward
    pass instead of keeping its whole graph; the random number generator is replayed, so
    dropout draws the same masks and the gradient is the same.

    Returns:
        The objective, one gradient per hyperparameter (zeros where unused) and where the unroll
        ended, all detached.

    Raises:
        ValueError: ``objective`` is an empty list, or ``checkpoint_every`` is not a positive
            integer.
    """
    terms = [objective] if callable(objective) else list(objective)
    if not terms:
        raise ValueError("objective must be a function of the parameters or a non-empty list")
    if checkpoint_every is not None:
        check_positive_int("checkpoint_every", checkpoint_every)
    start = {name: value.detach() for name, value in params.items()}
    state = state.replace_tensors([value.detach() for value in state.tensors()])
    if checkpoint_every is None or checkpoint_every >= len(batches):
        leaves = {name: value.requires_grad_() for name, value in start.items()}
        final, final_state = unroll(loss_fn, leaves, state, optimizer, batches)
        value, adjoint = _objective_and_gradient(terms, final)
        grads = torch.autograd.grad(
            list(final.values()), list(hyperparameters), grad_outputs=adjoint, allow_unused=True
        )
        return Hypergradient(
            value,
            _zeros_for_unused(grads, hyperparameters),
            {name: param.detach() for name, param in final.items()},
            final_state.replace_tensors([buffer.detach() for buffer in final_state.tensors()]),
        )

    boundaries = []
    current = start
    for first in range(0, len(batches), checkpoint_every):
        boundaries.append((first, current, state, _rng_state()))
        segment = batches[first : first + checkpoint_every]
        current, state = unroll(loss_fn, current, state, optimizer, segment, False, first)
    final_state = state
    value, adjoint = _objective_and_gradient(terms, current)
    adjoint += [torch.zeros_like(buffer) for buffer in state.tensors()]
    totals = [torch.zeros_like(hyper) for hyper in hyperparameters]
    for first, begin, begin_state, rng_state in reversed(boundaries):
        begin = {name: value.requires_grad_() for name, value in begin.items()}
        begin_state = begin_state.replace_tensors(
            [buffer.requires_grad_() for buffer in begin_state.tensors()]
        )
        segment = batches[first : first + checkpoint_every]
        with _replayed_rng(rng_state):
            end, end_state = unroll(loss_fn, begin, begin_state, optimizer, segment, True, first)
        inputs = [*begin.values(), *begin_state.tensors()]
        grads = torch.autograd.grad(
            [*end.values(), *end_state.tensors()],
            [*inputs, *hyperparameters],
            grad_outputs=adjoint,
            allow_unused=True,
        )
        adjoint = _zeros_for_unused(grads[: len(inputs)], inputs)
        totals = [
            total + grad
            for total, grad in zip(
                totals, _zeros_for_unused(grads[len(inputs) :], hyperparameters), strict=True
            )
        ]
    return Hypergradient(value, totals, current, final_state)


def _objective_and_gradient(
    terms: Sequence[Callable[[Params], Tensor]], params: Mapping[str, Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """``M(w) = sum_i M_i(w)`` and ``dM/dw`` (detached), one term's graph at a time."""
    leaves = [value.detach().requires_grad_() for value in params.values()]
    values = []
    for term in terms:  # each backward adds its term's gradient into the leaves' .grad in place
        value = term(dict(zip(params, leaves, strict=True)))
        torch.autograd.backward(value, inputs=leaves)
        values.append(value.detach())
    gradient = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves]
    return torch.stack(values).sum(), gradient


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []


def _rng_state() -> tuple[Tensor, list[Tensor]]:
    """The CPU generator's state and, when CUDA is in use, every CUDA generator's."""
    cuda = [torch.cuda.get_rng_state(device) for device in _cuda_devices()]
    return torch.get_rng_state(), cuda


@contextmanager
def _replayed_rng(state: tuple[Tensor, list[Tensor]]) -> Iterator[None]:
    """Run the block from the generators' saved ``state``; restore their current state after."""
    with torch.random.fork_rng(devices=_cuda_devices()):
        torch.set_rng_state(state[0])
        for device, cuda_state in enumerate(state[1]):
            torch.cuda.set_rng_state(cuda_state, device)
        yield


def _zeros_for_unused(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [
        torch.zeros_like(ref) if grad is None else grad
        for grad, ref in zip(grads, like, strict=True)
    ]
