"""Learning to Stop While Learning to Predict (Chen et al., ICML 2020).

* `oracle_stop_distribution`, `oracle_loss` (Stage I), `stop_log_distribution`,
  `imitation_loss` (Stage II) and `variational_loss` (Stage III): the stop-time math, on
  ``(T, B)`` per-step tensors.
* `StopPolicy`: the default policy network ``pi_phi``; `ResidualStopPolicy`, one for inverse
  problems that reads scale-free energies of the residual and the estimate (LISTA-stop's).
* `AdaptiveDepthMixin`: per-step predictions, the stage losses and batched early exit.
* `AdaptiveDepthModule`: the mixin on a `LightningModule` that trains plainly without the
  callback and by its stages with it (the base of `LISTARecovery` and `EarlyExitClassifier`).
* `StopPolicyCallback`: trains the policy and schedules the stages in a Lightning `Trainer`.
* `LISTA`: learned ISTA with an estimate per layer, the predictive model of LISTA-stop;
  `LISTARecovery`, the `LightningModule` that trains it, with or without a stop policy;
  `support_selected_soft_threshold` and `analytic_weight` for its LISTA-CPSS / ALISTA options.
* `ista` and `fista`: the classical baselines, with the estimate per iteration.
* `EarlyExitClassifier`: residual MLP blocks with a classifier head each, for early exit.
* `nmse_db` and `NMSEDecibels`: the error measure of the sparse-recovery experiment.
"""

from __future__ import annotations

from lightning_automl.stopping.adaptive_depth import AdaptiveDepthMixin, StopSchedule
from lightning_automl.stopping.adaptive_depth_module import AdaptiveDepthModule
from lightning_automl.stopping.callback import StopPolicyCallback
from lightning_automl.stopping.early_exit import EarlyExitClassifier
from lightning_automl.stopping.iterative import (
    fista,
    ista,
    lasso_objective,
    lipschitz_constant,
    soft_threshold,
)
from lightning_automl.stopping.lista import LISTA, analytic_weight, support_selected_soft_threshold
from lightning_automl.stopping.lista_recovery import LISTARecovery
from lightning_automl.stopping.metrics import NMSEDecibels, nmse_db
from lightning_automl.stopping.policy import StopPolicy
from lightning_automl.stopping.residual_policy import ResidualStopPolicy
from lightning_automl.stopping.stop_time import (
    imitation_loss,
    oracle_loss,
    oracle_stop_distribution,
    stop_log_distribution,
    variational_loss,
)

__all__ = [
    "LISTA",
    "AdaptiveDepthMixin",
    "AdaptiveDepthModule",
    "EarlyExitClassifier",
    "LISTARecovery",
    "NMSEDecibels",
    "ResidualStopPolicy",
    "StopPolicy",
    "StopPolicyCallback",
    "StopSchedule",
    "analytic_weight",
    "fista",
    "imitation_loss",
    "ista",
    "lasso_objective",
    "lipschitz_constant",
    "nmse_db",
    "oracle_loss",
    "oracle_stop_distribution",
    "soft_threshold",
    "stop_log_distribution",
    "support_selected_soft_threshold",
    "variational_loss",
]
