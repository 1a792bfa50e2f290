"""One coordinatewise LSTM per parameter type (`TypedCoordinateLSTM`, L2L section 3.3)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import quiet_trainer
from torch import nn

import lightning_automl.core.pretrained as registry
from lightning_automl.core.pretrained import PretrainedError
from lightning_automl.core.tasks import MLPFamily
from lightning_automl.l2l import L2LMetaModule, ParallelTasks, run_unroll, start_inner_loop
from lightning_automl.optim import CoordinateLSTM, LSTMOptimizer, TypedCoordinateLSTM

pytestmark = pytest.mark.usefixtures("one_thread")

MLP_TYPES = {"0.*": "hidden", "2.*": "output"}
TASK_TYPES = {"hidden*": "hidden", "output*": "output"}


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3)).double()


def train(model: nn.Module, *optimizers: torch.optim.Optimizer, steps: int = 4) -> None:
    """``steps`` steps of cross-entropy on random minibatches, every optimizer stepping each."""
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=generator, dtype=torch.float64)
        y = torch.randint(3, (8,), generator=generator)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for optimizer in optimizers:
            optimizer.step()


def small_mlp_family() -> MLPFamily:
    generator = torch.Generator().manual_seed(123)
    inputs = torch.randn(32, 6, generator=generator)
    return MLPFamily(inputs, torch.randint(3, (32,), generator=generator), num_classes=3, hidden=4)


def test_each_type_is_updated_by_its_own_network():
    typed = TypedCoordinateLSTM(MLP_TYPES, output_scale=0.3)  # two different random networks
    model, by_hand = mlp(), mlp()
    optimizer = LSTMOptimizer(model.named_parameters(), parameter_types=MLP_TYPES, output_scale=0.3)
    optimizer.network.load_state_dict(typed.state_dict())
    train(model, optimizer)
    # ...as two shared-network optimizers, one per layer, each with its type's weights.
    per_layer = []
    for index, kind in ((0, "hidden"), (2, "output")):
        layer_optimizer = LSTMOptimizer(by_hand[index].parameters(), output_scale=0.3)
        layer_optimizer.network.load_state_dict(typed.network(kind).state_dict())
        per_layer.append(layer_optimizer)
    train(by_hand, *per_layer)
    for param, expected in zip(model.parameters(), by_hand.parameters(), strict=True):
        torch.testing.assert_close(param, expected, rtol=0, atol=1e-12)
    reference = mlp()
    train(reference, LSTMOptimizer(reference.parameters(), output_scale=0.3))
    assert not torch.allclose(model[2].weight, reference[2].weight)


def test_copies_of_a_shared_network_reproduce_it():
    shared = CoordinateLSTM(output_scale=0.3).double()
    typed = TypedCoordinateLSTM.from_shared(shared, MLP_TYPES)
    assert typed.dtype == torch.float64 and typed.types == ["hidden", "output"]
    model, reference = mlp(), mlp()
    optimizer = LSTMOptimizer(model.named_parameters(), parameter_types=MLP_TYPES, output_scale=0.3)
    optimizer.network.double().load_state_dict(typed.state_dict())
    baseline = LSTMOptimizer(reference.parameters(), output_scale=0.3)
    baseline.network.double().load_state_dict(shared.state_dict())
    train(model, optimizer)
    train(reference, baseline)
    for param, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param, expected, rtol=0, atol=1e-12)


def test_state_dict_round_trip_continues_bit_identically():
    model = mlp()
    optimizer = LSTMOptimizer(model.named_parameters(), parameter_types=MLP_TYPES, seed=3)
    train(model, optimizer, steps=2)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    train(model, optimizer, steps=3)
    resumed_model = mlp()
    resumed_model.load_state_dict(saved_model)
    resumed = LSTMOptimizer(resumed_model.named_parameters(), parameter_types=MLP_TYPES)
    resumed.load_state_dict(saved)
    train(resumed_model, resumed, steps=3)
    for param, expected in zip(resumed_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(param, expected)


def test_inner_loop_reproduces_the_typed_optimizer():
    family = small_mlp_family()
    network = TypedCoordinateLSTM(TASK_TYPES, output_scale=0.5)
    with torch.no_grad():
        network.network("hidden").head.bias.sub_(0.02)
    tasks = ParallelTasks([family.sample(torch.Generator().manual_seed(seed)) for seed in (0, 1)])
    with torch.no_grad():
        state, _ = start_inner_loop(network, tasks)
        _, state = run_unroll(network, tasks, state, 5)
    for seed, functional_theta in zip((0, 1), state.theta.split(tasks.task_sizes), strict=True):
        task = family.sample(torch.Generator().manual_seed(seed))
        params = {name: nn.Parameter(value) for name, value in task.initial_params().items()}
        optimizer = LSTMOptimizer(params.items(), parameter_types=TASK_TYPES, output_scale=0.5)
        optimizer.network.load_state_dict(network.state_dict())
        for _ in range(5):
            optimizer.zero_grad()
            task.loss(params, task.next_batch()).backward()
            optimizer.step()
        theta = torch.cat([value.detach().reshape(-1) for value in params.values()])
        torch.testing.assert_close(functional_theta, theta, rtol=0, atol=1e-6)


def test_meta_training_trains_every_type_and_saves_them(tmp_path, monkeypatch):
    CoordinateLSTM(hidden_size=8).save_pretrained(tmp_path / "l2l-toy")
    monkeypatch.setattr(registry, "SHIPPED_DIR", tmp_path)
    module = L2LMetaModule(
        small_mlp_family(), num_tasks=2, horizon=4, unroll=2, pretrained="l2l-toy",
        parameter_types=TASK_TYPES,
    )  # fmt: skip
    start = copy.deepcopy(module.network.state_dict())
    quiet_trainer(max_steps=3).fit(module)
    for kind in ("hidden", "output"):
        prefix = f"networks.{kind}."
        assert not all(
            torch.equal(value, start[key])
            for key, value in module.network.state_dict().items()
            if key.startswith(prefix)
        ), kind
    card = module.save_pretrained(tmp_path / "l2l-typed")
    assert card.config["parameter_types"] == TASK_TYPES
    model = mlp()
    renamed = {"0.*": "hidden", "2.*": "output"}
    optimizer = LSTMOptimizer(
        model.named_parameters(), pretrained="l2l-typed", parameter_types=renamed
    )
    loaded, trained = optimizer.network.state_dict(), module.network.state_dict()
    assert all(torch.equal(loaded[key], trained[key]) for key in trained)
    train(model, optimizer)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: LSTMOptimizer(mlp().parameters(), parameter_types=MLP_TYPES),
            r"one network per parameter type \(\['hidden', 'output'\].*named_parameters",
        ),
        (
            lambda: LSTMOptimizer(mlp().named_parameters(), parameter_types={"0.*": "hidden"}),
            r"parameter '2.weight' must match exactly one pattern.*matches none",
        ),
        (
            lambda: LSTMOptimizer(
                mlp().named_parameters(), parameter_types={"*": "hidden", "2.*": "output"}
            ),
            r"parameter '2.weight' must match exactly one pattern.*several \(\['\*', '2.\*'\]\)",
        ),
        (
            lambda: LSTMOptimizer(mlp().named_parameters(), parameter_types={"*": ""}),
            r"parameter_types must be a non-empty dict from fnmatch patterns",
        ),
        (
            lambda: L2LMetaModule(small_mlp_family(), parameter_types=["hidden*"]),
            r"parameter_types must be a non-empty dict",
        ),
    ],
)
def test_bad_parameter_types_are_refused_before_any_step(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_typed_card_refuses_other_types_and_meta_training_checks_names_first(
    tmp_path, monkeypatch
):
    TypedCoordinateLSTM(TASK_TYPES).save_pretrained(tmp_path / "l2l-typed")
    monkeypatch.setattr(registry, "SHIPPED_DIR", tmp_path)
    with pytest.raises(PretrainedError, match=r"one network per type of \['hidden', 'output'\]"):
        LSTMOptimizer(mlp().named_parameters(), pretrained="l2l-typed", parameter_types={"*": "x"})
    module = L2LMetaModule(small_mlp_family(), parameter_types={"hidden*": "hidden"})
    with pytest.raises(ValueError, match=r"parameter 'output.weight' must match exactly one"):
        quiet_trainer(max_steps=1).fit(module)


def test_output_factors_multiply_each_copys_updates():
    shared = CoordinateLSTM(output_scale=0.3).double()
    typed = TypedCoordinateLSTM.from_shared(shared, MLP_TYPES, {"hidden": 0.5, "output": 3.0})
    model, reference = mlp(), mlp()
    optimizer = LSTMOptimizer(model.named_parameters(), parameter_types=MLP_TYPES, output_scale=0.3)
    optimizer.network.double().load_state_dict(typed.state_dict())
    baseline = LSTMOptimizer(reference.parameters(), output_scale=0.3)
    baseline.network.double().load_state_dict(shared.state_dict())
    start = copy.deepcopy(model.state_dict())
    train(model, optimizer, steps=1)
    train(reference, baseline, steps=1)
    for name, factor in [("0.weight", 0.5), ("0.bias", 0.5), ("2.weight", 3.0), ("2.bias", 3.0)]:
        update = model.state_dict()[name] - start[name]
        torch.testing.assert_close(update, factor * (reference.state_dict()[name] - start[name]))


def test_output_factors_need_a_shared_pretrained_network_and_every_type(tmp_path, monkeypatch):
    CoordinateLSTM().save_pretrained(tmp_path / "l2l-toy")
    monkeypatch.setattr(registry, "SHIPPED_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"output_factors scale the copies of a shared pretrained"):
        L2LMetaModule(small_mlp_family(), parameter_types=TASK_TYPES, output_factors={"a": 1.0})
    with pytest.raises(ValueError, match=r"output_factors must map each type of \['hidden', 'out"):
        L2LMetaModule(
            small_mlp_family(), pretrained="l2l-toy", parameter_types=TASK_TYPES,
            output_factors={"hidden": 0.5},
        )  # fmt: skip
