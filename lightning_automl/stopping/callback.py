"""`StopPolicyCallback`: the three training stages of Learning to Stop in a Lightning `Trainer`."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from lightning_automl.core.validation import check_non_negative_int, check_number
from lightning_automl.stopping.adaptive_depth import AdaptiveDepthMixin, StopSchedule
from lightning_automl.stopping.policy import StopPolicy
from lightning_automl.stopping.stop_time import (
    stop_log_distribution,
    stop_steps,
    threshold_logit,
)

__all__ = ["StopPolicyCallback"]

STAGE_NAMES = {1: "oracle model learning", 2: "imitation", 3: "joint fine-tuning"}


class StopPolicyCallback(Callback):
    """Schedules Stage I, II and III of Learning to Stop (Chen et al., ICML 2020) by epoch.

    The module mixes in `AdaptiveDepthMixin` and returns ``self.adaptive_depth_loss(x, y)``
    from ``training_step``; the callback tells it which stage's loss to compute:

    - **Stage I** (oracle model learning): the model learns on `oracle_loss`; its optimizer
      steps as usual and the policy is idle.
    - **Stage II** (imitation): the model is frozen (run without gradient, every submodule in
      eval mode, so BatchNorm and dropout are inert) and the policy learns ``KL(q* || q_phi)``.
    - **Stage III** (optional joint fine-tuning): both learn `variational_loss`.

    The policy and its Adam optimizer live on the callback, not in the model (so DDP wraps the
    model alone); the policy steps in ``on_before_optimizer_step``, i.e. once per optimizer step
    after gradient accumulation, with its gradients averaged over the DDP ranks. Both are saved
    in the callback's checkpoint state; the stage follows from the epoch, so a resumed run goes
    on in the stage it was in. After ``fit`` the policy stays attached to the module:
    ``module.predict_adaptive(x)`` uses it, and ``callback.policy.save_pretrained(path)`` saves it.

    Logged every step: ``stop/stage``, ``stop/oracle_mean_step`` (1-based mean stop step under
    ``q*``), and from Stage II on ``stop/policy_mean_step`` (under ``q_phi``) and
    ``stop/exit_mean_step`` (stopping at the first ``pi_t > threshold``, as at inference).
    Every epoch, the stop-step histograms: ``stop/oracle_hist/tK`` (the oracle's most likely
    step) and ``stop/exit_hist/tK``, the fraction of the epoch's samples that stop at step K.

    Args:
        stage_epochs: Epochs of Stage I, II and optionally III, e.g. ``(20, 10)`` or
            ``(20, 10, 5)``. They must add up to the Trainer's ``max_epochs`` when it is set.
        beta: Temperature of the oracle stop-time distribution (> 0) in Stages I and III, on
            the scale of the model's ``step_loss``.
        imitation_beta: Temperature of the oracle that Stage II imitates (default: ``beta``).
            A small value makes the policy follow the best step of each sample closely while
            Stage I trains all steps with a larger ``beta``.
        step_cost: Cost per step (>= 0) added to the per-step losses: a prior on the stop
            time ``p(t) ∝ exp(-step_cost * t / beta)`` instead of the paper's uniform prior
            (0). When several steps predict equally well, it makes the oracle prefer the
            earliest, so that the policy saves compute.
        policy: The policy to train; by default the module's ``build_stop_policy()``.
        policy_lr: Learning rate of the policy's Adam optimizer (the paper's 1e-3).
        threshold: Stop probability used by the logged exit statistics.
    """

    def __init__(
        self,
        stage_epochs: Sequence[int],
        beta: float,
        imitation_beta: float | None = None,
        step_cost: float = 0.0,
        policy: StopPolicy | None = None,
        policy_lr: float = 1e-3,
        threshold: float = 0.5,
    ) -> None:
        stage_epochs = tuple(stage_epochs)
        if len(stage_epochs) not in (2, 3):
            raise ValueError(
                "stage_epochs must give the epochs of Stage I, II and optionally III, e.g. "
                f"(20, 10) or (20, 10, 5), got {stage_epochs!r}"
            )
        for stage, epochs in enumerate(stage_epochs, start=1):
            check_non_negative_int(f"stage_epochs[{stage - 1}] (Stage {stage})", epochs)
        if sum(stage_epochs) == 0:
            raise ValueError(f"stage_epochs must hold at least one epoch, got {stage_epochs!r}")
        check_number("beta", beta, "a number > 0", lambda value: value > 0)
        if imitation_beta is not None:
            check_number("imitation_beta", imitation_beta, "a number > 0", lambda v: v > 0)
        check_number("step_cost", step_cost, "a number >= 0", lambda value: value >= 0)
        check_number("policy_lr", policy_lr, "a number > 0", lambda value: value > 0)
        threshold_logit(threshold)
        if policy is not None and not hasattr(policy, "step_logits"):
            raise TypeError(
                "policy must be a StopPolicy or an nn.Module with forward(prediction, step, "
                f"summary) and step_logits(predictions, summary), got {type(policy).__name__}"
            )
        self.stage_epochs = stage_epochs
        self.beta = float(beta)
        self.imitation_beta = self.beta if imitation_beta is None else float(imitation_beta)
        self.step_cost = float(step_cost)
        self.policy = policy
        self.policy_lr = float(policy_lr)
        self.threshold = float(threshold)
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict[str, Any] | None = None
        self._module_modes: dict[str, bool] | None = None
        self._histograms: dict[str, Tensor] = {}

    def stage_at(self, epoch: int) -> int:
        """The stage (1, 2 or 3) of a 0-based epoch; epochs past the schedule stay in the last."""
        ends = list(accumulate(self.stage_epochs))
        for stage, end in enumerate(ends, start=1):
            if epoch < end:
                return stage
        return max(stage for stage, epochs in enumerate(self.stage_epochs, 1) if epochs > 0)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, AdaptiveDepthMixin):
            raise TypeError(
                f"StopPolicyCallback needs a module that mixes in AdaptiveDepthMixin, "
                f"got {type(pl_module).__name__}"
            )
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                "StopPolicyCallback does not support a gradient scaler (precision='16-mixed'): "
                "use precision='bf16-mixed' or 32"
            )
        scheduled = sum(self.stage_epochs)
        debugging = getattr(trainer, "fast_dev_run", False)
        if trainer.max_epochs not in (None, -1, scheduled) and not debugging:
            raise ValueError(
                f"stage_epochs {self.stage_epochs} add up to {scheduled} epochs but the "
                f"Trainer has max_epochs={trainer.max_epochs}"
            )
        if self.policy is None:
            self.policy = pl_module.build_stop_policy()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        policy = self._policy().to(pl_module.device).eval()
        if trainer.world_size > 1:  # every rank starts from rank 0's policy
            policy.load_state_dict(trainer.strategy.broadcast(policy.state_dict(), src=0))
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=self.policy_lr)
        if self._pending_optimizer_state is not None:
            self.optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stage = self.stage_at(trainer.current_epoch)
        assert isinstance(pl_module, AdaptiveDepthMixin)
        pl_module.stop_schedule = StopSchedule(
            stage, self.beta, self._policy(), self.imitation_beta, self.step_cost
        )
        if stage == 2 and self._module_modes is None:
            self._module_modes = {name: m.training for name, m in pl_module.named_modules()}
            pl_module.eval()
        elif stage != 2:
            self._restore_module_modes(pl_module)
        self._histograms = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_module_modes(pl_module)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for p in self._policy().parameters() if p.grad is not None]
        if not grads or self.optimizer is None:
            return  # Stage I: the policy took no part in the loss
        if trainer.world_size > 1:  # gradients and BatchNorm statistics, averaged over ranks
            shared = grads + running_statistics(self._policy())
            flat = torch.cat([value.flatten() for value in shared])
            flat = trainer.strategy.reduce(flat, reduce_op="mean")
            for value, mean in zip(shared, flat.split([v.numel() for v in shared]), strict=True):
                value.copy_(mean.view_as(value))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._policy().train()  # batch statistics, dropout: for training batches only

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._policy().eval()
        schedule = getattr(pl_module, "stop_schedule", None)
        if schedule is None or schedule.last_batch is None:
            return
        terms, schedule.last_batch = schedule.last_batch, None
        steps = torch.arange(1, terms.oracle.size(0) + 1, device=terms.oracle.device)
        metrics = {
            "stop/stage": float(schedule.stage),
            "stop/oracle_mean_step": (terms.oracle * steps[:, None]).sum(0).mean(),
        }
        self._count("oracle_hist", terms.oracle.argmax(dim=0), len(steps))
        if terms.stop_logits is not None:
            policy_q = stop_log_distribution(terms.stop_logits).exp()
            exits = stop_steps(terms.stop_logits, self.threshold)
            metrics["stop/policy_mean_step"] = (policy_q * steps[:, None]).sum(0).mean()
            metrics["stop/exit_mean_step"] = (exits + 1).float().mean()
            self._count("exit_hist", exits, len(steps))
        batch_size = terms.oracle.size(1)
        pl_module.log_dict(metrics, on_step=True, on_epoch=True, batch_size=batch_size)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, counts in self._histograms.items():
            totals = trainer.strategy.reduce(counts, reduce_op="sum")
            fractions = totals / totals.sum().clamp(min=1)
            pl_module.log_dict(
                {f"stop/{name}/t{step}": value for step, value in enumerate(fractions, 1)},
                on_step=False,
                on_epoch=True,
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self._policy().state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._policy().load_state_dict(state_dict["policy"])
        self._pending_optimizer_state = state_dict["optimizer"]

    def _restore_module_modes(self, pl_module: LightningModule) -> None:
        """Undo Stage II's eval mode: every submodule back to its train / eval mode before it."""
        if self._module_modes is None:
            return
        for name, module in pl_module.named_modules():
            module.train(self._module_modes.get(name, module.training))
        self._module_modes = None

    def _policy(self) -> StopPolicy:
        if self.policy is None:
            raise RuntimeError("StopPolicyCallback has no policy before Trainer.fit sets it up")
        return self.policy

    def _count(self, name: str, steps: Tensor, num_steps: int) -> None:
        counts = torch.bincount(steps, minlength=num_steps).float()
        self._histograms[name] = self._histograms.get(name, 0) + counts


def running_statistics(module: nn.Module) -> list[Tensor]:
    """The running means and variances of the BatchNorm layers in ``module``."""
    return [
        statistic
        for layer in module.modules()
        if isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d)
        for statistic in (layer.running_mean, layer.running_var)
        if statistic is not None
    ]
