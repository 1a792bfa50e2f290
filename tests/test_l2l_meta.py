from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from tiny import quiet_trainer
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from lightning_automl.cli import build_cli
from lightning_automl.core.tasks import MLPFamily, QuadraticFamily, QuadraticTask, TaskFamily
from lightning_automl.l2l import L2LMetaModule, ParallelTasks, run_unroll, start_inner_loop
from lightning_automl.l2l.meta_module import INNER_LOOP_KEY
from lightning_automl.optim import CoordinateLSTM, LSTMOptimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_mlp_family() -> MLPFamily:
    """32 random 6-feature inputs, 3 classes, a hidden layer of 4, minibatches of 8."""
    generator = seeded(123)
    inputs = torch.randn(32, 6, generator=generator)
    labels = torch.randint(3, (32,), generator=generator)
    return MLPFamily(inputs, labels, num_classes=3, hidden=4, batch_size=8)


EITHER_FAMILY = pytest.mark.parametrize(
    "family", [QuadraticFamily(dim=4), small_mlp_family()], ids=["quadratic", "mlp"]
)


# --- meta-gradient against finite differences ------------------------------------------------
#
# Autograd differentiates the meta-loss L(phi) = mean_t f(theta_t), theta_{t+1} = theta_t +
# m(grad_t; phi). With second_order=True, grad_t = grad f(theta_t) keeps its dependence on phi,
# so autograd must equal central differences of L itself. By default (the paper's choice) grad_t
# is detached: autograd then differentiates L with the gradient inputs held at the values they
# take at phi, a function we can also evaluate at perturbed phi (feeding the recorded inputs) and
# difference. Both references are written out here, with the quadratic's gradient in closed form.
# The task starts near its minimum and p = 1, where the preprocessed gradient input log|g| / p
# is sensitive to theta: the second derivatives then change the meta-gradient by far more than
# the tolerance, so each check fails if the other variant is computed.

FD_TOLERANCE = 1e-6  # central differences in float64 are accurate to ~1e-8 here


def float64_quadratic_near_its_minimum(dim: int = 3) -> QuadraticTask:
    generator = seeded(7)
    weight, target, offset = (
        torch.randn(shape, generator=generator, dtype=torch.float64)
        for shape in [(dim, dim), (dim,), (dim,)]
    )
    return QuadraticTask(weight, target, torch.linalg.solve(weight, target) + 0.03 * offset)


def meta_loss_by_hand(network, task, num_steps, gradient_inputs=None):
    """Mean of f(theta_1..theta_T); grad_t is the exact gradient, or gradient_inputs[t]."""
    theta = task.initial_params()["theta"]
    hidden, cell = network.initial_state(theta.numel())
    used, total = [], 0.0
    for step in range(num_steps):
        exact = 2 * task.weight.T @ (task.weight @ theta - task.target)
        grad = exact if gradient_inputs is None else gradient_inputs[step]
        used.append(grad.detach())
        update, hidden, cell = network(grad, hidden, cell)
        theta = theta + update
        total = total + task.loss({"theta": theta})
    return total / num_steps, used


def central_differences(network: nn.Module, function, eps: float = 1e-6) -> torch.Tensor:
    center = parameters_to_vector(network.parameters()).detach().clone()
    gradient = torch.empty_like(center)
    with torch.no_grad():
        for index in range(center.numel()):
            values = []
            for sign in (1.0, -1.0):
                shifted = center.clone()
                shifted[index] += sign * eps
                vector_to_parameters(shifted, network.parameters())
                values.append(float(function()))
            gradient[index] = (values[0] - values[1]) / (2 * eps)
        vector_to_parameters(center, network.parameters())
    return gradient


def autograd_meta_gradient(network, task, num_steps, second_order):
    tasks = ParallelTasks([task])
    state, _ = start_inner_loop(network, tasks)
    losses, _ = run_unroll(network, tasks, state, num_steps, second_order=second_order)
    return parameters_to_vector(torch.autograd.grad(losses.mean(), list(network.parameters())))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


@pytest.fixture
def float64_network() -> CoordinateLSTM:
    torch.manual_seed(0)
    return CoordinateLSTM(hidden_size=4, preprocess_p=1.0, output_scale=0.3).double()


def test_second_order_meta_gradient_matches_finite_differences(float64_network):
    task = float64_quadratic_near_its_minimum()
    autograd = autograd_meta_gradient(float64_network, task, num_steps=3, second_order=True)
    numeric = central_differences(
        float64_network, lambda: meta_loss_by_hand(float64_network, task, 3)[0]
    )
    assert relative_error(autograd, numeric) < FD_TOLERANCE
    first_order = autograd_meta_gradient(float64_network, task, num_steps=3, second_order=False)
    assert relative_error(first_order, numeric) > 100 * FD_TOLERANCE


def test_first_order_meta_gradient_holds_the_gradient_inputs_fixed(float64_network):
    task = float64_quadratic_near_its_minimum()
    autograd = autograd_meta_gradient(float64_network, task, num_steps=3, second_order=False)
    _, recorded = meta_loss_by_hand(float64_network, task, 3)
    numeric = central_differences(
        float64_network,
        lambda: meta_loss_by_hand(float64_network, task, 3, gradient_inputs=recorded)[0],
    )
    assert relative_error(autograd, numeric) < FD_TOLERANCE
    second_order = autograd_meta_gradient(float64_network, task, num_steps=3, second_order=True)
    assert relative_error(second_order, numeric) > 100 * FD_TOLERANCE


# --- the inner loop is LSTMOptimizer's -------------------------------------------------------


@EITHER_FAMILY
def test_inner_loop_reproduces_lstm_optimizer(family: TaskFamily):
    torch.manual_seed(0)
    network = CoordinateLSTM(output_scale=0.5)
    num_steps = 6
    # Two tasks side by side in one LSTM batch...
    tasks = ParallelTasks([family.sample(seeded(seed)) for seed in (0, 1)])
    with torch.no_grad():
        state, _ = start_inner_loop(network, tasks)
        _, state = run_unroll(network, tasks, state, num_steps)
    # ...end where LSTMOptimizer takes each of them, one at a time.
    for seed, functional_theta in zip((0, 1), state.theta.split(tasks.task_sizes), strict=True):
        task = family.sample(seeded(seed))
        params = {name: nn.Parameter(value) for name, value in task.initial_params().items()}
        initial = torch.cat([value.detach().reshape(-1) for value in params.values()])
        optimizer = LSTMOptimizer(params.values(), output_scale=0.5)
        optimizer.network.load_state_dict(network.state_dict())
        for _ in range(num_steps):
            optimizer.zero_grad()
            task.loss(params, task.next_batch()).backward()
            optimizer.step()
        theta = torch.cat([value.detach().reshape(-1) for value in params.values()])
        assert not torch.equal(theta, initial)
        torch.testing.assert_close(functional_theta, theta, rtol=0, atol=1e-6)


# --- meta-training in a Trainer --------------------------------------------------------------


def validate_final_loss(module: L2LMetaModule) -> float:
    """``val/final_loss``: mean loss of the held-out tasks after ``horizon`` inner steps."""
    (metrics,) = quiet_trainer().validate(module, verbose=False)
    return metrics["val/final_loss"]


def test_meta_training_lowers_the_final_loss_of_held_out_tasks():
    module = L2LMetaModule(
        QuadraticFamily(dim=10),
        num_tasks=16,
        horizon=20,
        unroll=10,
        meta_lr=1e-2,
        num_val_tasks=20,
        val_seed=999,
    )
    untrained = validate_final_loss(module)
    quiet_trainer(max_steps=60, limit_val_batches=0).fit(module)
    trained = validate_final_loss(module)
    assert trained < 0.2 * untrained


class RecordTasks(Callback):
    """The first coordinate of theta_0 of the tasks each training step unrolled."""

    def __init__(self) -> None:
        self.first_coordinates: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.first_coordinates.append(float(pl_module.tasks.initial_theta()[0]))


def test_tasks_are_redrawn_after_horizon_over_unroll_steps(tmp_path):
    module = L2LMetaModule(QuadraticFamily(dim=4), num_tasks=3, horizon=6, unroll=2)
    record = RecordTasks()
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = quiet_trainer(max_steps=7, callbacks=[record], logger=logger, log_every_n_steps=1)
    trainer.fit(module)
    draws = record.first_coordinates
    assert draws[0] == draws[1] == draws[2] != draws[3] == draws[4] == draws[5] != draws[6]
    assert module.inner_state is not None and module.inner_state.step == 2
    with open(tmp_path / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["step"] for row in rows if row["meta/loss"]] == [str(i) for i in range(7)]
    assert [row["step"] for row in rows if row["meta/final_loss"]] == ["2", "5"]


class RecordSteps(Callback):
    def __init__(self) -> None:
        self.meta_losses: list[float] = []
        self.inner_steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.meta_losses.append(float(outputs["loss"]))
        self.inner_steps.append(pl_module.inner_state.step)


def test_meta_loss_steps_weights_only_the_last_steps_of_the_horizon():
    # horizon 6 in unrolls of 2, the meta-loss on steps 4..6: the segment of steps 1..2 carries
    # no weight and runs at the start of the first training step, which then counts step 4 only.
    module = L2LMetaModule(
        QuadraticFamily(dim=4), num_tasks=2, horizon=6, unroll=2, meta_loss_steps=3
    )
    network = copy.deepcopy(module.network)
    record = RecordSteps()
    quiet_trainer(max_steps=3, callbacks=[record]).fit(module)

    generator = seeded(0)  # the module's: seed + global_rank
    tasks = ParallelTasks([QuadraticFamily(dim=4).sample(generator) for _ in range(2)])
    state, _ = start_inner_loop(network, tasks)
    with torch.no_grad():
        losses, _ = run_unroll(network, tasks, state, 6)  # f(theta_1..6) under phi_0
    assert record.meta_losses[0] == pytest.approx(float(losses[3].mean()), rel=1e-6)
    assert record.inner_steps == [4, 6, 4]  # two training steps per draw of tasks
    assert len(module.train_dataloader()) == 2
    full = L2LMetaModule(QuadraticFamily(dim=4), horizon=6, unroll=2, meta_loss_steps=6)
    assert len(full.train_dataloader()) == 3 and full.meta_loss_steps == 6


@EITHER_FAMILY
def test_resume_from_a_mid_horizon_checkpoint_is_bit_identical(family, tmp_path):
    def fit(max_steps: int, ckpt_path=None):
        module = L2LMetaModule(family, num_tasks=3, horizon=6, unroll=2, meta_lr=1e-2)
        trainer = quiet_trainer(max_steps=max_steps)
        trainer.fit(module, ckpt_path=ckpt_path)
        return module, trainer

    uninterrupted, _ = fit(max_steps=8)
    _, interrupted = fit(max_steps=4)  # step 2 of the second draw of tasks
    interrupted.save_checkpoint(tmp_path / "step4.ckpt")
    saved = torch.load(tmp_path / "step4.ckpt", weights_only=True)[INNER_LOOP_KEY]
    assert saved["theta"].shape == (1, sum(uninterrupted.tasks.task_sizes))  # one row per rank
    assert int(saved["step"][0]) == 2
    resumed, _ = fit(max_steps=8, ckpt_path=tmp_path / "step4.ckpt")

    for expected, actual in zip(
        uninterrupted.network.parameters(), resumed.network.parameters(), strict=True
    ):
        assert torch.equal(actual, expected)
    expected_state, actual_state = uninterrupted.inner_state, resumed.inner_state
    for name in ("theta", "grad", "hidden", "cell"):
        assert torch.equal(getattr(actual_state, name), getattr(expected_state, name))
    assert actual_state.step == expected_state.step == 4


def test_resume_with_another_family_or_world_size_is_refused(tmp_path):
    module = L2LMetaModule(QuadraticFamily(dim=4), num_tasks=2, horizon=4, unroll=2)
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module)
    trainer.save_checkpoint(tmp_path / "step1.ckpt")
    other = L2LMetaModule(QuadraticFamily(dim=5), num_tasks=2, horizon=4, unroll=2)
    with pytest.raises(ValueError, match=r"tasks have 8 coordinates in all, but .* draws 10"):
        quiet_trainer(max_steps=2).fit(other, ckpt_path=tmp_path / "step1.ckpt")
    checkpoint = torch.load(tmp_path / "step1.ckpt", weights_only=True)
    checkpoint[INNER_LOOP_KEY] = {
        k: v.repeat_interleave(2, 0) for k, v in checkpoint[INNER_LOOP_KEY].items()
    }
    torch.save(checkpoint, tmp_path / "two_ranks.ckpt")
    same = L2LMetaModule(QuadraticFamily(dim=4), num_tasks=2, horizon=4, unroll=2)
    with pytest.raises(ValueError, match=r"inner loops of 2 ranks, but this run has 1"):
        quiet_trainer(max_steps=2).fit(same, ckpt_path=tmp_path / "two_ranks.ckpt")


def test_save_pretrained_loads_into_lstm_optimizer_and_fine_tuning(tmp_path):
    module = L2LMetaModule(
        QuadraticFamily(dim=4), num_tasks=2, horizon=4, unroll=2, hidden_size=8, output_scale=0.05
    )
    initial = copy.deepcopy(module.network.state_dict())
    quiet_trainer(max_steps=3).fit(module)
    card = module.save_pretrained(tmp_path / "l2l-quadratic", metrics={"final_loss": 1.0})
    assert card.method == "l2l" and card.tasks == ["QuadraticFamily"]
    assert card.config == {
        "hidden_size": 8,
        "num_layers": 2,
        "preprocess_p": 10.0,
        "output_scale": 0.05,
    }
    optimizer = LSTMOptimizer(
        [nn.Parameter(torch.zeros(3))], pretrained=str(tmp_path / "l2l-quadratic")
    )
    fine_tuning = L2LMetaModule(
        QuadraticFamily(dim=4), num_tasks=2, horizon=4, unroll=2,
        pretrained=str(tmp_path / "l2l-quadratic"),
    )  # fmt: skip
    trained = module.network.state_dict()
    for loaded in (optimizer.network.state_dict(), fine_tuning.network.state_dict()):
        assert loaded.keys() == trained.keys()
        assert all(torch.equal(loaded[key], trained[key]) for key in trained)
    assert not all(torch.equal(initial[key], trained[key]) for key in trained)


def test_lightning_cli_builds_it_with_a_family_class_path(tmp_path):
    cli = build_cli(
        [
            "--model=lightning_automl.l2l.L2LMetaModule",
            "--model.family=lightning_automl.core.tasks.QuadraticFamily",
            "--model.family.dim=7",
            "--model.horizon=40",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    assert isinstance(cli.model, L2LMetaModule)
    assert isinstance(cli.model.family, QuadraticFamily) and cli.model.family.dim == 7
    assert cli.model.horizon == 40 and cli.model.unroll == 20


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"family": "quadratic"}, TypeError, r"family must be a TaskFamily, got str"),
        ({"num_tasks": 0}, ValueError, r"num_tasks must be a positive integer, got 0"),
        ({"horizon": 0}, ValueError, r"horizon must be a positive integer, got 0"),
        ({"unroll": 2.0}, ValueError, r"unroll must be a positive integer, got 2.0"),
        (
            {"horizon": 100, "unroll": 30},
            ValueError,
            r"horizon must be a multiple of unroll .* got horizon=100, unroll=30",
        ),
        (
            {"horizon": 10, "unroll": 5, "meta_loss_steps": 11},
            ValueError,
            r"meta_loss_steps must be None or an integer in \[1, horizon=10\], got 11",
        ),
        ({"meta_loss_steps": 0}, ValueError, r"meta_loss_steps must be None or an integer"),
        ({"meta_lr": 0.0}, ValueError, r"meta_lr must be a finite number > 0, got 0.0"),
        ({"meta_lr": float("inf")}, ValueError, r"meta_lr must be a finite number > 0"),
        ({"hidden_size": 0}, ValueError, r"hidden_size must be a positive integer, got 0"),
        ({"output_scale": -1.0}, ValueError, r"output_scale must be a finite number > 0"),
        ({"second_order": 1}, ValueError, r"second_order must be True or False, got 1"),
        ({"num_val_tasks": -1}, ValueError, r"num_val_tasks must be a non-negative integer"),
        ({"seed": -1}, ValueError, r"seed must be a non-negative integer, got -1"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(kwargs, error, message):
    arguments = {"family": QuadraticFamily(dim=3), **kwargs}
    with pytest.raises(error, match=message):
        L2LMetaModule(**arguments)


def test_validation_seed_must_differ_from_the_training_seeds():
    module = L2LMetaModule(QuadraticFamily(dim=3), num_val_tasks=2, val_seed=5, seed=5)
    with pytest.raises(ValueError, match=r"val_seed must differ from the training seeds"):
        quiet_trainer(max_steps=1).fit(module)


# --- DDP -------------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_ddp_ranks_draw_different_tasks_and_keep_one_network(repo_root, tmp_path):
    script = repo_root / "tests" / "l2l_ddp_fit_script.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in reports)
    assert reports[0]["task_weights"] != reports[1]["task_weights"]
    assert reports[0]["network"] == reports[1]["network"]
    assert reports[0]["moved"] > 0
    # The checkpoint holds both ranks' inner loops, one row each.
    saved = torch.load(tmp_path / "l2l.ckpt", weights_only=True)[INNER_LOOP_KEY]
    for rank, report in enumerate(reports):
        assert saved["theta"][rank].tolist() == report["theta"]
