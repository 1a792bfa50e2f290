from __future__ import annotations

import io
import math

import pytest
import torch
from tiny import TinyClassifier, TinyDataModule, quiet_trainer
from torch import nn

import lightning_automl.core.pretrained as registry
import lightning_automl.optim.lstm as lstm_module
from lightning_automl.cli import build_cli
from lightning_automl.core.pretrained import PretrainedError
from lightning_automl.optim import CoordinateLSTM, LSTMOptimizer


def record_network_calls(network: CoordinateLSTM, record) -> None:
    """Call ``record(inputs)`` with the ``(2, N)`` inputs of every `CoordinateLSTM.update_` call."""
    update_ = network.update_

    def recorded(inputs, *args):
        record(inputs)
        return update_(inputs, *args)

    network.update_ = recorded  # type: ignore[method-assign]


def small_model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """Two parameters of different shapes: a (3, 4) weight and a (3,) bias."""
    return nn.Linear(4, 3).to(dtype)


def set_grads(model: nn.Module, grads: list[torch.Tensor]) -> None:
    for param, grad in zip(model.parameters(), grads, strict=True):
        param.grad = grad.to(param.dtype)


def reference_step(network: CoordinateLSTM, grad, hidden, cell):
    """The same step written out: the paper's preprocessing, then the LSTM gate equations.

    ``hidden`` and ``cell`` are lists with one ``(N, H)`` tensor per layer; all in float64.
    """
    p = network.preprocess_p

    def preprocess(g: float) -> tuple[float, float]:
        if abs(g) >= math.exp(-p):
            return math.log(abs(g)) / p, math.copysign(1.0, g)
        return -1.0, math.exp(p) * g

    x = torch.tensor([preprocess(g) for g in grad.tolist()], dtype=torch.float64)  # (N, 2)
    next_hidden, next_cell = [], []
    for layer in range(network.num_layers):
        weight = {
            name: getattr(network.lstm, f"{name}_l{layer}").double()
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        }
        gates = (
            x @ weight["weight_ih"].T
            + weight["bias_ih"]
            + hidden[layer] @ weight["weight_hh"].T
            + weight["bias_hh"]
        )
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=1)
        c = torch.sigmoid(forget_gate) * cell[layer] + torch.sigmoid(input_gate) * torch.tanh(
            candidate
        )
        h = torch.sigmoid(output_gate) * torch.tanh(c)
        next_hidden.append(h)
        next_cell.append(c)
        x = h
    output = x @ network.head.weight.double().T + network.head.bias.double()
    return network.output_scale * output.squeeze(1), next_hidden, next_cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_steps_match_the_hand_written_lstm(dtype):
    torch.manual_seed(0)
    model = small_model(dtype)
    optimizer = LSTMOptimizer(model.parameters(), output_scale=0.5)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    # Large and tiny (< e^-10) gradients and an exact zero exercise both preprocessing branches.
    gradients = [
        [torch.randn(3, 4), torch.tensor([1e-7, 0.0, -3.0])],
        [torch.randn(3, 4) * 1e-6, torch.tensor([2.0, -1e-5, 0.5])],
    ]
    hidden = [torch.zeros(15, 20, dtype=torch.float64)] * 2
    cell = [torch.zeros(15, 20, dtype=torch.float64)] * 2
    for grads in gradients:
        set_grads(model, grads)
        optimizer.step()
        flat_grad = torch.cat([g.reshape(-1) for g in grads]).to(dtype).double()
        update, hidden, cell = reference_step(optimizer.network, flat_grad, hidden, cell)
        theta = theta + update
        result = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        assert result.dtype == dtype
        torch.testing.assert_close(result.double(), theta, rtol=0, atol=1e-6)
    weight_state = optimizer.state[model.weight]
    assert weight_state["hidden"].shape == (2, 20, 12) == weight_state["cell"].shape
    assert weight_state["hidden"].dtype == dtype
    expected_cell = torch.stack(cell)[:, :12].transpose(1, 2)  # unit-major: (layers, units, N)
    torch.testing.assert_close(weight_state["cell"].double(), expected_cell, rtol=0, atol=1e-6)


def test_in_place_update_equals_the_differentiable_step_to_rounding():
    """`update_` takes tanh as ``2 sigmoid(2x) - 1`` with the candidate's rows doubled."""
    torch.manual_seed(0)
    network = CoordinateLSTM().double()
    grad = torch.randn(500, dtype=torch.float64) * 10.0 ** torch.randint(-8, 1, (500,))
    hidden, cell = (3 * torch.randn(2, 20, 500, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        expected = network(grad, hidden, cell)
    next_hidden, next_cell = hidden.clone(), cell.clone()
    weights = network.layer_weights(candidate_scale=2.0)
    update = network.update_(network.features(grad), next_hidden, next_cell, weights)
    for actual, wanted in zip((update, next_hidden, next_cell), expected, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-12)


def test_a_bfloat16_network_steps_bfloat16_parameters_as_float32_does_to_its_precision():
    torch.manual_seed(0)
    grad = torch.randn(300)
    updates = {}
    for dtype in (torch.float32, torch.bfloat16):
        param = nn.Parameter(torch.zeros(300, dtype=dtype))
        param.grad = grad.to(dtype)
        optimizer = LSTMOptimizer([param])
        optimizer.network.to(dtype)
        optimizer.step()
        assert param.dtype == optimizer.state[param]["hidden"].dtype == dtype
        updates[dtype] = param.detach().float()
    torch.testing.assert_close(updates[torch.bfloat16], updates[torch.float32], rtol=0, atol=2e-3)


def test_all_coordinates_of_a_small_model_go_through_the_network_in_one_call():
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    frozen = nn.Parameter(torch.ones(5))
    optimizer = LSTMOptimizer([*model.parameters(), frozen])
    batch_sizes = []
    record_network_calls(optimizer.network, lambda inputs: batch_sizes.append(inputs.shape[1]))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(6, 4)).square().sum().backward()
        optimizer.step()
    assert batch_sizes == [4 * 3 + 3 + 3 * 2 + 2] * 3
    assert frozen not in optimizer.state and torch.equal(frozen, torch.ones(5))


def test_chunked_steps_equal_one_call_of_the_network_on_all_coordinates(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(lstm_module, "CHUNK_ROWS", 4096)
    # 9,000 coordinates: a chunk inside the first tensor, one across both, one in the second
    params = [nn.Parameter(torch.randn(7000)), nn.Parameter(torch.randn(50, 40))]
    optimizer = LSTMOptimizer(params)
    hidden, cell = optimizer.network.initial_state(9000)
    for _ in range(2):  # the second step reads the states the first one wrote
        for param in params:
            param.grad = torch.randn_like(param)
        before = torch.cat([p.detach().flatten() for p in params])
        optimizer.step()
        grad = torch.cat([p.grad.flatten() for p in params])
        with torch.no_grad():
            update, hidden, cell = optimizer.network(grad, hidden, cell)
        after = torch.cat([p.detach().flatten() for p in params])
        torch.testing.assert_close(after, before + update)
        for key, expected in (("hidden", hidden), ("cell", cell)):
            states = torch.cat([optimizer.state[p][key] for p in params], dim=2)
            torch.testing.assert_close(states, expected)


def test_closure_is_evaluated_and_its_loss_returned():
    model = small_model()
    optimizer = LSTMOptimizer(model.parameters())
    x = torch.randn(5, 4)

    def closure():
        optimizer.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    before = model.weight.detach().clone()
    loss = optimizer.step(closure)
    assert loss is not None and loss.requires_grad
    assert not torch.equal(model.weight, before)


def run_steps(model, optimizer, batches):
    for x in batches:
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


def test_state_dict_round_trip_continues_bit_identically():
    torch.manual_seed(0)
    batches = [torch.randn(8, 4) for _ in range(6)]
    batches[1][0, 0] = float("nan")  # a skipped step, counted in the state
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    optimizer = LSTMOptimizer(model.parameters(), skip_nonfinite=True)
    run_steps(model, optimizer, batches[:3])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    run_steps(model, optimizer, batches[3:])

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # as Lightning loads checkpoints
    resumed_model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = LSTMOptimizer(resumed_model.parameters(), skip_nonfinite=True)
    resumed.load_state_dict(checkpoint["optimizer"])
    assert resumed.skipped_steps == 1
    run_steps(resumed_model, resumed, batches[3:])

    for param, resumed_param in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(param, resumed_param)
        for key in ("hidden", "cell"):
            assert torch.equal(optimizer.state[param][key], resumed.state[resumed_param][key])


def test_state_dict_carries_the_network_and_refuses_a_different_one():
    optimizer = LSTMOptimizer(small_model().parameters(), hidden_size=8)
    state = optimizer.state_dict()
    assert state["coordinate_lstm"]["config"]["hidden_size"] == 8
    assert state["skipped_steps"] == 0
    other = LSTMOptimizer(small_model().parameters())
    with pytest.raises(ValueError, match=r"holds a network with config .*'hidden_size': 8"):
        other.load_state_dict(state)
    sgd_state = torch.optim.SGD(small_model().parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="not saved by LSTMOptimizer"):
        other.load_state_dict(sgd_state)


def test_nonfinite_gradient_raises_naming_the_parameter_before_any_update():
    model = small_model()
    optimizer = LSTMOptimizer(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    set_grads(model, [torch.ones(3, 4), torch.tensor([0.0, float("nan"), 1.0])])
    with pytest.raises(
        FloatingPointError, match=r"parameter 1 of param group 0 \(shape \(3,\)\) holds NaN or inf"
    ):
        optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert len(optimizer.state) == 0


def test_skip_nonfinite_skips_the_whole_step_and_counts_it():
    model = small_model()
    optimizer = LSTMOptimizer(model.parameters(), skip_nonfinite=True)
    set_grads(model, [torch.ones(3, 4), torch.ones(3)])
    optimizer.step()
    params = [p.detach().clone() for p in model.parameters()]
    states = {k: optimizer.state[model.weight][k].clone() for k in ("hidden", "cell")}
    set_grads(model, [torch.full((3, 4), float("inf")), torch.ones(3)])
    optimizer.step()
    assert optimizer.skipped_steps == 1 and optimizer.state_dict()["skipped_steps"] == 1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), params, strict=True))
    assert all(torch.equal(optimizer.state[model.weight][k], v) for k, v in states.items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preprocess_p": 0.0}, r"preprocess_p must be a finite number > 0, got 0.0"),
        ({"preprocess_p": -1}, r"preprocess_p must be a finite number > 0, got -1"),
        ({"hidden_size": 0}, r"hidden_size must be a positive integer, got 0"),
        ({"num_layers": 1.5}, r"num_layers must be a positive integer, got 1.5"),
        ({"output_scale": float("nan")}, r"output_scale must be a finite number > 0"),
        ({"skip_nonfinite": "yes"}, r"skip_nonfinite must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LSTMOptimizer(small_model().parameters(), **kwargs)


def test_empty_params_are_refused():
    with pytest.raises(ValueError, match="params must hold at least one tensor"):
        LSTMOptimizer([])


@pytest.fixture
def shipped_l2l(tmp_path, monkeypatch):
    """A saved L2L network, shipped as ``l2l-toy`` from a temporary package folder."""
    network = CoordinateLSTM(hidden_size=8, output_scale=0.05)
    network.save_pretrained(tmp_path / "l2l-toy", tasks=["quadratic"])
    monkeypatch.setattr(registry, "SHIPPED_DIR", tmp_path)
    return network


@pytest.mark.parametrize("repeated", [{}, {"hidden_size": 8, "output_scale": 0.05}])
def test_pretrained_name_loads_the_weights_and_the_card_config(shipped_l2l, repeated):
    optimizer = LSTMOptimizer(small_model().parameters(), pretrained="l2l-toy", **repeated)
    assert optimizer.network.pretrained_config() == shipped_l2l.pretrained_config()
    loaded, saved = optimizer.network.state_dict(), shipped_l2l.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)


def test_pretrained_with_another_config_or_unknown_name_is_refused(shipped_l2l):
    with pytest.raises(
        PretrainedError, match=r"trained with hidden_size=8 \(given 20\), output_scale=0.05"
    ):
        LSTMOptimizer(
            small_model().parameters(), pretrained="l2l-toy", hidden_size=20, output_scale=0.1
        )
    with pytest.raises(ValueError, match=r"unknown pretrained component 'nope'.*known: l2l-toy"):
        LSTMOptimizer(small_model().parameters(), pretrained="nope")


class LSTMClassifier(TinyClassifier):
    """`TinyClassifier` trained by an `LSTMOptimizer` whose network calls are counted."""

    def configure_optimizers(self):
        optimizer = LSTMOptimizer(self.parameters())
        self.network_calls = 0
        record_network_calls(optimizer.network, lambda inputs: self.count_network_call())
        return optimizer

    def count_network_call(self) -> None:
        self.network_calls += 1


@pytest.mark.parametrize("accumulate_grad_batches", [1, 2])
def test_lightning_fit_steps_once_per_optimizer_step(accumulate_grad_batches):
    torch.manual_seed(0)
    model = LSTMClassifier()
    before = model.layer.weight.detach().clone()
    trainer = quiet_trainer(
        max_epochs=1, limit_val_batches=0, accumulate_grad_batches=accumulate_grad_batches
    )
    trainer.fit(model, TinyDataModule())  # 8 batches
    assert trainer.global_step == model.network_calls == 8 // accumulate_grad_batches
    assert not torch.equal(model.layer.weight, before)
    optimizer = trainer.optimizers[0]
    assert optimizer.state[model.layer.weight]["hidden"].shape == (2, 20, 24)


def test_lightning_cli_builds_it_from_the_optimizer_key(tmp_path):
    cli = build_cli(
        [
            "--model=tiny.TinyClassifier",
            "--data=tiny.TinyDataModule",
            "--optimizer=lightning_automl.optim.LSTMOptimizer",
            "--optimizer.output_scale=0.05",
            "--optimizer.skip_nonfinite=true",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, LSTMOptimizer)
    assert optimizer.network.output_scale == 0.05 and optimizer.skip_nonfinite


def test_lightning_resume_reproduces_the_uninterrupted_run(tmp_path):
    def fit(max_epochs: int, seed: int, ckpt_path=None):
        torch.manual_seed(seed)  # the resumed run starts from other weights, network included
        model = LSTMClassifier()
        trainer = quiet_trainer(max_epochs=max_epochs, limit_val_batches=0)
        trainer.fit(model, TinyDataModule(), ckpt_path=ckpt_path)
        return model, trainer

    uninterrupted, _ = fit(max_epochs=2, seed=0)
    _, interrupted = fit(max_epochs=1, seed=0)
    interrupted.save_checkpoint(tmp_path / "epoch=0.ckpt")
    resumed, _ = fit(max_epochs=2, seed=1, ckpt_path=tmp_path / "epoch=0.ckpt")
    for expected, actual in zip(uninterrupted.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(actual, expected)
