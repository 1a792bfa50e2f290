from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_automl.core.tasks import MixtureFamily, MLPFamily, QuadraticFamily


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_mlp_family(**kwargs) -> MLPFamily:
    """32 random 1x4x4 "images" (16 features) with labels in 0..2."""
    generator = seeded(123)
    inputs = torch.randn(32, 1, 4, 4, generator=generator)
    labels = torch.randint(3, (32,), generator=generator)
    return MLPFamily(inputs, labels, **{"num_classes": 3, "hidden": 5, "batch_size": 8, **kwargs})


def test_quadratic_tasks_are_reproducible_per_seed():
    family = QuadraticFamily(dim=4)
    first, again, other = (
        family.sample(seeded(0)),
        family.sample(seeded(0)),
        family.sample(seeded(1)),
    )
    for name in ("weight", "target"):
        assert torch.equal(getattr(first, name), getattr(again, name))
        assert not torch.equal(getattr(first, name), getattr(other, name))
    assert torch.equal(first.initial_params()["theta"], again.initial_params()["theta"])
    assert not torch.equal(first.initial_params()["theta"], other.initial_params()["theta"])


def test_quadratic_loss_is_the_squared_residual_norm():
    task = QuadraticFamily(dim=3).sample(seeded(0))
    theta = torch.tensor([0.5, -1.0, 2.0])
    residual = [
        sum(task.weight[i, j].item() * theta[j].item() for j in range(3)) - task.target[i].item()
        for i in range(3)
    ]
    expected = sum(r * r for r in residual)
    loss = task.loss({"theta": theta}, task.next_batch())
    assert loss.shape == () and loss.item() == pytest.approx(expected, rel=1e-6)


def test_loss_is_differentiable_and_initial_params_are_copies():
    task = QuadraticFamily(dim=3).sample(seeded(0))
    params = task.initial_params()
    theta = params["theta"].requires_grad_()
    (grad,) = torch.autograd.grad(task.loss(params, None), theta)
    expected = 2 * task.weight.T @ (task.weight @ theta.detach() - task.target)
    torch.testing.assert_close(grad, expected)
    theta.detach().zero_()
    assert task.initial_params()["theta"].abs().sum() > 0


@pytest.mark.parametrize(("depth", "activation"), [(1, "sigmoid"), (2, "relu"), (3, "tanh")])
def test_mlp_params_and_loss_match_an_nn_module(depth, activation):
    task = small_mlp_family(depth=depth, activation=activation).sample(seeded(0))
    params = task.initial_params()
    widths = [16] + [5] * depth + [3]
    expected_shapes = {}
    for layer in range(depth):
        expected_shapes[f"hidden{layer}.weight"] = (5, widths[layer])
        expected_shapes[f"hidden{layer}.bias"] = (5,)
    expected_shapes.update({"output.weight": (3, 5), "output.bias": (3,)})
    assert {name: tuple(value.shape) for name, value in params.items()} == expected_shapes

    nonlinearity = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    layers: list[nn.Module] = []
    for width_in, width_out in pairwise(widths[:-1]):
        layers += [nn.Linear(width_in, width_out), nonlinearity()]
    mlp = nn.Sequential(*layers, nn.Linear(5, 3))
    module_names = [name for name, _ in mlp.named_parameters()]
    x, y = task.next_batch()
    assert x.shape == (8, 16) and y.shape == (8,)
    logits = functional_call(mlp, dict(zip(module_names, params.values(), strict=True)), (x,))
    torch.testing.assert_close(task.loss(params, (x, y)), nn.functional.cross_entropy(logits, y))

    grads = torch.autograd.grad(
        task.loss({k: v.requires_grad_() for k, v in params.items()}, (x, y)), list(params.values())
    )
    assert all(
        grad.shape == param.shape for grad, param in zip(grads, params.values(), strict=True)
    )


def test_mlp_tasks_differ_by_seed_in_init_and_minibatches():
    family = small_mlp_family()
    first, again, other = (
        family.sample(seeded(0)),
        family.sample(seeded(0)),
        family.sample(seeded(1)),
    )
    for name, value in first.initial_params().items():
        assert torch.equal(value, again.initial_params()[name])
        assert not torch.equal(value, other.initial_params()[name])
    batches = [task.next_batch()[0] for task in (first, again, other)]
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])
    assert not torch.equal(first.next_batch()[0], batches[0])  # the stream moves on


@pytest.mark.parametrize("family", [QuadraticFamily(dim=4), small_mlp_family()])
def test_stacked_losses_equal_the_losses_one_by_one(family):
    tasks = [family.sample(seeded(seed)) for seed in range(3)]
    params = [
        {name: value + 0.1 for name, value in task.initial_params().items()} for task in tasks
    ]
    batches = [task.next_batch() for task in tasks]
    stacked = type(tasks[0]).stacked_losses(tasks, params, batches)
    one_by_one = torch.stack(
        [task.loss(p, batch) for task, p, batch in zip(tasks, params, batches, strict=True)]
    )
    assert stacked.shape == (3,)
    torch.testing.assert_close(stacked, one_by_one)


def test_mlp_init_std_draws_every_weight_and_bias_from_a_normal():
    default = small_mlp_family(hidden=200).sample(seeded(0)).initial_params()
    normal = small_mlp_family(hidden=200, init_std=0.01).sample(seeded(0)).initial_params()
    assert default.keys() == normal.keys()
    bound = 1 / 16**0.5  # nn.Linear's uniform init of the first layer (16 inputs)
    assert default["hidden0.weight"].abs().max() <= bound
    assert default["hidden0.weight"].std() > 0.1
    for name, value in normal.items():
        assert value.shape == default[name].shape
        assert 0.005 < value.std() < 0.02, name
    assert normal["hidden0.weight"].std() == pytest.approx(0.01, rel=0.1)  # 3,200 draws


def test_bad_family_arguments_are_refused():
    with pytest.raises(ValueError, match="dim must be a positive integer, got 0"):
        QuadraticFamily(dim=0)
    with pytest.raises(
        ValueError, match=r"activation must be one of \['relu', 'sigmoid', 'tanh'\], got 'gelu'"
    ):
        small_mlp_family(activation="gelu")
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        small_mlp_family(depth=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\) \(num_classes\)"):
        small_mlp_family(num_classes=2)
    for init_std in (0.0, -0.01, float("nan")):
        with pytest.raises(ValueError, match="init_std must be a positive number or None"):
            small_mlp_family(init_std=init_std)
    with pytest.raises(ValueError, match="inputs must be a non-empty floating-point tensor"):
        MLPFamily(torch.zeros(4, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be integer class indices of shape \(4,\)"):
        MLPFamily(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_mixture_draws_from_each_family_reproducibly():
    mixture = MixtureFamily([QuadraticFamily(dim=2), QuadraticFamily(dim=3)])
    dims = [
        mixture.sample(torch.Generator().manual_seed(seed)).initial_params()["theta"].numel()
        for seed in range(20)
    ]
    assert set(dims) == {2, 3}
    again = mixture.sample(torch.Generator().manual_seed(0)).initial_params()["theta"]
    first = mixture.sample(torch.Generator().manual_seed(0)).initial_params()["theta"]
    assert torch.equal(again, first)
    with pytest.raises(ValueError, match="families must be a non-empty list of TaskFamily"):
        MixtureFamily([])
