"""The functional inner optimizers and the unrolled hypergradient (core/unroll.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_automl.core.unroll import SGD, Adam, hypergradient, mirror_optimizer, unroll

TORCH_OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    "dampening": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.5, dampening=0.3),
    "adam": lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=0.01),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, betas=(0.8, 0.99)),
}


def batches(count: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 3, generator=generator, dtype=dtype),
            torch.randint(0, 2, (8,), generator=generator),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("name", sorted(TORCH_OPTIMIZERS))
def test_unroll_reproduces_the_torch_optimizer_from_its_running_state(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = TORCH_OPTIMIZERS[name](model.parameters())
    data = batches(6)

    def torch_step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    torch_step(*data[0])  # the mirrored state is mid-training, not fresh
    names = {param: name for name, param in model.named_parameters()}
    inner, state = mirror_optimizer(optimizer, names)
    params = {name: param.detach().clone() for name, param in model.named_parameters()}

    def loss_fn(params, k, batch):
        return nn.functional.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])

    unrolled, _ = unroll(loss_fn, params, state, inner, data[1:], create_graph=False)
    for x, y in data[1:]:
        torch_step(x, y)
    for name, param in model.named_parameters():
        torch.testing.assert_close(unrolled[name], param.detach(), rtol=1e-5, atol=1e-6)


def test_mirror_refuses_what_it_cannot_reproduce() -> None:
    param = nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match=r"SGD.*Adam and AdamW, got RMSprop"):
        mirror_optimizer(torch.optim.RMSprop([param]), {param: "w"})
    with pytest.raises(ValueError, match="amsgrad"):
        mirror_optimizer(torch.optim.Adam([param], amsgrad=True), {param: "w"})
    other = nn.Parameter(torch.ones(2))
    groups = [{"params": [param]}, {"params": [other], "lr": 0.5}]
    with pytest.raises(ValueError, match="one set of hyperparameters"):
        mirror_optimizer(torch.optim.SGD(groups, lr=0.1), {param: "w", other: "v"})
    with pytest.raises(ValueError, match="not named"):
        mirror_optimizer(torch.optim.SGD([param], lr=0.1), {})
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        SGD(lr=0.0)


def _tiny_problem(inner, checkpoint_every=None, dev_terms=1):
    """A weighted-loss student: the hyperparameter scales each class's training loss. The dev
    cross-entropy is given as ``dev_terms`` terms, each the mean over a slice of the dev set
    weighted by its share."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.2), nn.Linear(5, 2)).double()
    params = {name: param.detach() for name, param in model.named_parameters()}
    data = batches(5, torch.float64)
    dev_x, dev_y = batches(1, torch.float64)[0]

    def loss_fn(params, k, batch, weights):
        logits = functional_call(model, params, (batch[0],))
        losses = nn.functional.cross_entropy(logits, batch[1], reduction="none")
        return (losses * weights[batch[1]] * (1 + 0.1 * k)).mean()

    def objective(params, rows=slice(None)):
        model.eval()
        try:
            logits = functional_call(model, params, (dev_x[rows],))
            return nn.functional.cross_entropy(logits, dev_y[rows]) * len(dev_y[rows]) / len(dev_y)
        finally:
            model.train()

    slices = [rows.tolist() for rows in torch.arange(len(dev_y)).tensor_split(dev_terms)]
    terms = [lambda p, rows=rows: objective(p, rows) for rows in slices]

    def run(weights, checkpoint=checkpoint_every):
        torch.manual_seed(5)  # dropout masks
        hyper = weights.detach().requires_grad_()
        return hypergradient(
            lambda p, k, b: loss_fn(p, k, b, hyper),
            objective if dev_terms == 1 else terms,
            params,
            inner.init_state(params),
            inner,
            data,
            [hyper],
            checkpoint,
        )

    return run


@pytest.mark.parametrize(
    "inner",
    [SGD(lr=0.5), SGD(lr=0.3, momentum=0.9), Adam(lr=0.05)],
    ids=["sgd", "momentum", "adam"],
)
def test_hypergradient_matches_central_finite_differences(inner) -> None:
    run = _tiny_problem(inner)
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    (grad,) = run(weights).grads
    eps = 1e-6
    numeric = torch.stack(
        [
            (run(weights + eps * e).objective - run(weights - eps * e).objective) / (2 * eps)
            for e in torch.eye(2, dtype=torch.float64)
        ]
    )
    assert grad.abs().max() > 1e-4  # a real signal, not two zeros
    torch.testing.assert_close(grad, numeric, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("segment", [1, 2, 4])
def test_checkpointed_hypergradient_equals_the_full_graph(segment: int) -> None:
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    inner = Adam(lr=0.05)
    full = _tiny_problem(inner)(weights)
    checkpointed = _tiny_problem(inner, segment)(weights)
    torch.testing.assert_close(checkpointed.objective, full.objective)
    torch.testing.assert_close(checkpointed.grads, full.grads, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(checkpointed.params, full.params)
    torch.testing.assert_close(checkpointed.state.tensors(), full.state.tensors())


@pytest.mark.parametrize("segment", [None, 2])
def test_an_objective_given_as_terms_equals_their_sum(segment: int | None) -> None:
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)
    inner = SGD(lr=0.3, momentum=0.9)
    whole = _tiny_problem(inner, segment)(weights)
    split = _tiny_problem(inner, segment, dev_terms=3)(weights)
    torch.testing.assert_close(split.objective, whole.objective)
    torch.testing.assert_close(split.grads, whole.grads, rtol=1e-10, atol=1e-12)
    assert whole.grads[0].abs().max() > 1e-4


def test_an_empty_list_of_objective_terms_is_refused() -> None:
    inner = SGD(lr=0.1)
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="non-empty list"):
        hypergradient(
            lambda p, k, b: p["w"].sum(), [], params, inner.init_state(params), inner, [0], []
        )


def test_adam_hypergradient_stays_finite_where_a_gradient_is_zero() -> None:
    # Coordinate 2 is masked out of the loss (as behind a dead ReLU): its gradient and second
    # moment stay exactly 0, where sqrt has an infinite derivative.
    weight = torch.ones(3, dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    inner = Adam(lr=0.1)

    def loss_fn(params, k, batch):
        return scale * (params["w"] * mask - 2).square().sum()

    (grad,) = hypergradient(
        loss_fn,
        lambda p: p["w"].square().sum(),
        {"w": weight},
        inner.init_state({"w": weight}),
        inner,
        [None] * 3,
        [scale],
    ).grads
    assert torch.isfinite(grad).all() and grad.abs() > 0
