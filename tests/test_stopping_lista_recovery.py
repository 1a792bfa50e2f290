from __future__ import annotations

import pytest
import torch
from lightning.pytorch import seed_everything
from tiny import quiet_trainer

from lightning_automl.data import SparseRecoveryDataModule
from lightning_automl.stopping import LISTARecovery, NMSEDecibels, StopPolicyCallback, nmse_db

SIZES = {"m": 20, "n": 40}


def data(**kwargs) -> SparseRecoveryDataModule:
    sizes = {"num_train": 512, "num_val": 128, "num_test": 128, "snr_db": 40.0, **SIZES}
    return SparseRecoveryDataModule(**{**sizes, **kwargs})


def model(**kwargs) -> LISTARecovery:
    return LISTARecovery(**{**SIZES, "num_layers": 4, "lr": 3e-3, **kwargs})


def test_nmse_metric_sums_error_and_energy_before_the_ratio():
    estimates, targets = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    metric = NMSEDecibels()
    for estimate, target in zip(estimates, targets, strict=True):
        metric.update(estimate, target)
    expected = nmse_db(estimates.flatten(0, 1), targets.flatten(0, 1))
    assert metric.compute().item() == pytest.approx(expected)


def test_plain_training_improves_on_the_initialisation():
    seed_everything(0)
    lista, datamodule = model(), data()
    trainer = quiet_trainer(max_epochs=10)
    before = trainer.validate(lista, datamodule, verbose=False)[0]["val/nmse_db"]
    trainer.fit(lista, datamodule)
    after = trainer.validate(lista, datamodule, verbose=False)[0]["val/nmse_db"]
    assert after < before - 1.0, (before, after)


def test_with_the_callback_it_learns_to_stop_and_logs_the_stopped_error():
    seed_everything(0)
    lista = model()
    trainer = quiet_trainer(max_epochs=3, callbacks=[StopPolicyCallback((2, 1), beta=0.5)])
    trainer.fit(lista, data())
    results = trainer.test(lista, data(), verbose=False)[0]
    assert 1 <= results["test/stop_mean_step"] <= 4
    assert results["test/stop_nmse_db"] < 0


def test_the_unit_of_beta_is_each_samples_noise_energy_or_one():
    datamodule = data(snr_db=(20.0, 40.0))
    datamodule.setup()
    y, x_star = datamodule.datasets["train"].tensors
    noise_energy = (y - x_star @ datamodule.A.T).square().sum(1)
    floor = 1e-6 * noise_energy.mean()
    assert (noise_energy == 0).any()  # samples without signal
    torch.testing.assert_close(model().loss_unit(y, x_star), noise_energy.clamp_min(floor))
    assert model(beta_unit="one").loss_unit(y, x_star) is None
    message = r'beta_unit="noise_energy" needs samples with a nonzero noise energy.*"one"'
    with pytest.raises(ValueError, match=message):
        model().loss_unit(x_star @ datamodule.A.T, x_star)
    with pytest.raises(
        ValueError, match=r"beta_unit must be one of .*'noise_energy', 'one'.*got 'db'"
    ):
        model(beta_unit="db")


def test_the_unit_of_the_step_cost_is_betas_or_each_samples_signal_energy():
    datamodule = data(snr_db=(20.0, 40.0))
    datamodule.setup()
    y, x_star = datamodule.datasets["train"].tensors
    signal_energy = (x_star @ datamodule.A.T).square().sum(1)
    floor = 1e-6 * signal_energy.mean()
    unit = model(step_cost_unit="signal_energy").step_cost_unit(y, x_star)
    torch.testing.assert_close(unit, signal_energy.clamp_min(floor))
    torch.testing.assert_close(model().step_cost_unit(y, x_star), model().loss_unit(y, x_star))
    assert model(beta_unit="one").step_cost_unit(y, x_star) is None
    with pytest.raises(ValueError, match=r'step_cost_unit="signal_energy" needs samples with a'):
        model(step_cost_unit="signal_energy").step_cost_unit(y, torch.zeros_like(x_star))
    with pytest.raises(
        ValueError, match=r"step_cost_unit must be one of .*'beta_unit', 'signal_energy'.*got 'x'"
    ):
        model(step_cost_unit="x")


def test_a_model_built_for_another_sensing_matrix_is_refused():
    with pytest.raises(ValueError, match="sensing matrix A differs"):
        quiet_trainer(max_epochs=1).fit(model(data_seed=1), data(seed=0))


def test_thresholds_have_their_own_learning_rate_and_both_decay():
    lista, datamodule = model(lr=1e-3, threshold_lr=1e-2, lr_decay_epochs=1), data()
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(lista, datamodule)
    optimizer = trainer.optimizers[0]
    W_group, theta_group = optimizer.param_groups
    assert W_group["params"] == [lista.lista.W] and theta_group["params"] == [lista.lista.theta]
    assert [W_group["initial_lr"], theta_group["initial_lr"]] == [1e-3, 1e-2]
    assert [W_group["lr"], theta_group["lr"]] == [0.0, 0.0]  # cosine decay to 0 after 1 epoch
    same = model(lr=1e-3, threshold_lr=None).configure_optimizers()
    assert [group["lr"] for group in same.param_groups] == [1e-3, 1e-3]


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [("threshold_lr", 0.0, "a number > 0"), ("lr_decay_epochs", 0, "a positive integer")],
)
def test_bad_learning_rate_arguments(name, value, allowed):
    with pytest.raises(ValueError, match=f"^{name} must be {allowed}, got {value}"):
        model(**{name: value})
