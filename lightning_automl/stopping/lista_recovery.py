"""`LISTARecovery`: LISTA as a `LightningModule` for sparse recovery, with or without stopping."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn

from lightning_automl.core.schedules import cosine_decay
from lightning_automl.core.validation import check_number, check_positive_int
from lightning_automl.data.sparse_recovery import sensing_matrix
from lightning_automl.stopping.adaptive_depth_module import AdaptiveDepthModule
from lightning_automl.stopping.lista import LISTA
from lightning_automl.stopping.metrics import NMSEDecibels
from lightning_automl.stopping.policy import StopPolicy
from lightning_automl.stopping.residual_policy import ResidualStopPolicy

__all__ = ["LISTARecovery"]

BetaUnit = Literal["noise_energy", "one"]
BETA_UNITS = get_args(BetaUnit)
StepCostUnit = Literal["beta_unit", "signal_energy"]
STEP_COST_UNITS = get_args(StepCostUnit)


class LISTARecovery(AdaptiveDepthModule):
    """Recovers ``x*`` from ``y = A x* + noise`` with `LISTA` (the model of LISTA-stop).

    Without a `StopPolicyCallback` it trains the usual way, on the last layer's squared error.
    With one, ``training_step`` returns `adaptive_depth_loss`: Stage I trains every layer on the
    softmin of the per-layer errors, Stage II a `ResidualStopPolicy` that reads the layer's
    estimate ``x_t``, the residual ``y - A x_t``, the measurements ``y`` and the layer index.

    The defaults are the LISTA-CPSS variant (support selection, Chen et al. 2018) from ALISTA's
    analytic weights (Liu et al. 2019) with a higher learning rate for the thresholds: at
    ``m, n = 250, 500`` it is already near the noise floor before training and converges within
    a few hundred Adam steps. ``init="ista", support_per_layer=0, lam=0.1, threshold_decay=1``
    is the original LISTA.

    The sensing matrix is `sensing_matrix` of ``(m, n, data_seed)``: the one
    `SparseRecoveryDataModule` draws with the same ``m``, ``n`` and ``seed``.

    Logs ``{stage}/nmse_db`` (last layer) and, once a policy is attached, ``{stage}/stop_nmse_db``
    (each sample stopped by the policy) and ``{stage}/stop_mean_step`` (1-based), for ``val``
    and ``test``.

    Args:
        m: Measurements per sample.
        n: Signal length.
        data_seed: Seed of the sensing matrix (the datamodule's ``seed``).
        num_layers: LISTA layers `T`.
        lam: l1 weight of the initial thresholds (see `LISTA`).
        tied: One step matrix and threshold shared by all layers.
        init: ``"analytic"`` (ALISTA's weights) or ``"ista"`` (`LISTA`).
        threshold_decay: Per-layer factor of the initial thresholds, in (0, 1].
        support_per_layer: Support selection's kept fraction per layer (0: plain soft threshold).
        support_max: Support selection's largest kept fraction.
        lr: Adam learning rate of the step matrices.
        threshold_lr: Adam learning rate of the thresholds (``None``: ``lr``).
        lr_decay_epochs: Cosine decay of both learning rates to 0 over this many epochs, step by
            step (``None``: constant). With `StopPolicyCallback`, the Stage I epochs.
        policy_hidden_dims: Hidden widths of the `StopPolicy` that `build_stop_policy` returns.
        beta_unit: The unit of `StopPolicyCallback`'s ``beta`` (and of its ``step_cost``, with
            ``step_cost_unit="beta_unit"``) for each sample: ``"noise_energy"``, its
            ``||y - A x*||^2``, so that one setting serves every SNR (see
            `AdaptiveDepthMixin.loss_unit`); ``"one"``: the squared error as is.
        step_cost_unit: The unit of ``step_cost`` for each sample: ``"signal_energy"``, its
            ``||A x*||^2``, so that a layer is worth its cost while it lowers the sample's
            NMSE by more than ``step_cost``, whatever its SNR; ``"beta_unit"``: that of
            ``beta``.
    """

    def __init__(
        self,
        m: int = 250,
        n: int = 500,
        data_seed: int = 0,
        num_layers: int = 20,
        lam: float = 0.4,
        tied: bool = False,
        init: Literal["ista", "analytic"] = "analytic",
        threshold_decay: float = 0.8,
        support_per_layer: float = 0.012,
        support_max: float = 0.13,
        lr: float = 4e-4,
        threshold_lr: float | None = 2e-3,
        lr_decay_epochs: int | None = None,
        policy_hidden_dims: tuple[int, ...] = (256, 128, 16),
        beta_unit: BetaUnit = "noise_energy",
        step_cost_unit: StepCostUnit = "beta_unit",
    ) -> None:
        super().__init__()
        check_number("lr", lr, "a number > 0", lambda value: value > 0)
        if threshold_lr is not None:
            check_number("threshold_lr", threshold_lr, "a number > 0", lambda value: value > 0)
        if lr_decay_epochs is not None:
            check_positive_int("lr_decay_epochs", lr_decay_epochs)
        if beta_unit not in BETA_UNITS:
            raise ValueError(f"beta_unit must be one of {BETA_UNITS}, got {beta_unit!r}")
        if step_cost_unit not in STEP_COST_UNITS:
            raise ValueError(
                f"step_cost_unit must be one of {STEP_COST_UNITS}, got {step_cost_unit!r}"
            )
        self.save_hyperparameters()
        self.lista = LISTA(
            sensing_matrix(m, n, data_seed),
            num_layers,
            lam,
            tied,
            init,
            threshold_decay,
            support_per_layer,
            support_max,
        )
        self.num_steps = num_layers
        self.metrics = nn.ModuleDict(  # keys like val_stop_nmse_db
            {
                f"{stage}_{kind}nmse_db": NMSEDecibels()
                for stage in ("val", "test")
                for kind in ("", "stop_")
            }
        )

    def forward(self, y: Tensor) -> Tensor:
        """The last layer's estimate, ``(B, n)``."""
        return self.lista(y)

    def forward_steps(self, y: Tensor) -> Tensor:
        return self.lista.forward_steps(y)  # (T, B, n)

    def step_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Squared error ``||x_t - x*||^2`` of each sample."""
        return (prediction - target).pow(2).sum(dim=1)

    def stop_summary(self, y: Tensor) -> Tensor:
        return y

    def loss_unit(self, y: Tensor, target: Tensor) -> Tensor | None:
        """With ``beta_unit="noise_energy"``, each sample's ``||y - A x*||^2``."""
        if self.hparams["beta_unit"] == "one":
            return None
        return _energy(y - self._clean(target), "noise_energy", "beta_unit", "one")

    def step_cost_unit(self, y: Tensor, target: Tensor) -> Tensor | None:
        """With ``step_cost_unit="signal_energy"``, each sample's ``||A x*||^2``."""
        if self.hparams["step_cost_unit"] == "beta_unit":
            return super().step_cost_unit(y, target)  # the mixin's default: loss_unit's
        return _energy(self._clean(target), "signal_energy", "step_cost_unit", "beta_unit")

    def _clean(self, target: Tensor) -> Tensor:
        """The noiseless measurements ``A x*``, ``(B, m)``."""
        return target @ self.lista.A.T

    def build_stop_policy(self) -> StopPolicy:
        hidden_dims = tuple(self.hparams["policy_hidden_dims"])
        return ResidualStopPolicy.for_matrix(self.lista.A, hidden_dims=hidden_dims)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_A = getattr(datamodule, "A", None)
        if data_A is not None and not torch.equal(data_A, self.lista.A.cpu()):
            raise ValueError(
                "the datamodule's sensing matrix A differs from the model's: give the model the "
                "datamodule's m, n and seed (as m, n and data_seed)"
            )

    def plain_loss(self, y: Tensor, x_star: Tensor) -> Tensor:
        return self.step_loss(self(y), x_star).mean()

    def evaluate(self, y: Tensor, x_star: Tensor, stage: str) -> None:
        self.log_metric(f"{stage}/nmse_db", self(y), x_star)
        if self.policy_attached:
            estimate, stopped_at = self.predict_adaptive(y)
            self.log_metric(f"{stage}/stop_nmse_db", estimate, x_star)
            self.log(f"{stage}/stop_mean_step", (stopped_at + 1).float().mean())

    def configure_optimizers(self) -> OptimizerLRScheduler:
        hparams = self.hparams
        threshold_lr = hparams["threshold_lr"] or hparams["lr"]
        optimizer = torch.optim.Adam(
            [{"params": [self.lista.W]}, {"params": [self.lista.theta], "lr": threshold_lr}],
            lr=hparams["lr"],
        )
        if hparams["lr_decay_epochs"] is None:
            return optimizer
        return cosine_decay(optimizer, hparams["lr_decay_epochs"], self.trainer)


def _energy(rows: Tensor, name: str, option: str, alternative: str) -> Tensor:
    """``||row||^2`` of each row, floored at 1e-6 of their mean (a sample without signal has
    neither noise nor signal energy); an error naming ``option`` when all of them are 0."""
    energy = rows.square().sum(dim=1)
    floor = 1e-6 * energy.mean()
    if not floor > 0:
        raise ValueError(
            f'{option}="{name}" needs samples with a nonzero {name.replace("_", " ")}, but the '
            f'batch has none: use {option}="{alternative}"'
        )
    return energy.clamp_min(floor)
