"""`EarlyExitClassifier`: residual MLP blocks with a classifier head after each, for early exit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_automl.core.schedules import cosine_decay
from lightning_automl.core.validation import check_number, check_positive_int
from lightning_automl.stopping.adaptive_depth_module import AdaptiveDepthModule
from lightning_automl.stopping.policy import StopPolicy

__all__ = ["EarlyExitClassifier"]


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: ``h + W2 relu(W1 LayerNorm(h))``."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.expand = nn.Linear(width, hidden)
        self.project = nn.Linear(hidden, width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.project(F.relu(self.expand(self.norm(h))))


class EarlyExitClassifier(AdaptiveDepthModule):
    """A stem, ``num_blocks`` residual blocks and a head (LayerNorm, linear) after every block.

    The prediction of step ``t`` is the log-probabilities of head ``t``; the default stop policy
    reads them (scale-free) with the step index. Without a `StopPolicyCallback` the network
    trains the usual way, cross-entropy on the last head; with one, by the stages of Learning to
    Stop. `predict_adaptive` runs the blocks on the samples still active only (``init_state`` /
    ``step``).

    Logs ``{stage}/loss`` and ``{stage}/acc`` (last head) and, once a policy is attached,
    ``{stage}/exit_acc`` and ``{stage}/exit_mean_step`` (1-based) for ``val`` and ``test``.

    Args:
        input_dim: Input features once flattened (784 for MNIST).
        num_classes: Classes.
        width: Width of the residual stream.
        hidden: Hidden width inside a block.
        num_blocks: Blocks `T`, one exit after each.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_decay_epochs: Cosine decay of the learning rate to 0 over this many epochs, step by
            step (``None``: constant). With `StopPolicyCallback`, the Stage I epochs.
        policy_hidden_dims: Hidden widths of the `StopPolicy` that `build_stop_policy` returns.
    """

    def __init__(
        self,
        input_dim: int = 784,
        num_classes: int = 10,
        width: int = 512,
        hidden: int = 512,
        num_blocks: int = 8,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_decay_epochs: int | None = None,
        policy_hidden_dims: tuple[int, ...] = (64, 16),
    ) -> None:
        super().__init__()
        for name, value in [
            ("input_dim", input_dim),
            ("num_classes", num_classes),
            ("width", width),
            ("hidden", hidden),
            ("num_blocks", num_blocks),
        ]:
            check_positive_int(name, value)
        check_number("lr", lr, "a number > 0", lambda value: value > 0)
        check_number("weight_decay", weight_decay, "a number >= 0", lambda value: value >= 0)
        if lr_decay_epochs is not None:
            check_positive_int("lr_decay_epochs", lr_decay_epochs)
        self.save_hyperparameters()
        self.num_steps = num_blocks
        self.stem = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, hidden) for _ in range(num_blocks))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, num_classes))
            for _ in range(num_blocks)
        )
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{kind}acc": MulticlassAccuracy(num_classes)
                for stage in ("val", "test")
                for kind in ("", "exit_")
            }
        )

    def init_state(self, x: Tensor) -> Tensor:
        return F.relu(self.stem(x.flatten(1)))  # (B, width)

    def step(self, h: Tensor, t: int) -> tuple[Tensor, Tensor]:
        h = self.blocks[t](h)
        return h, F.log_softmax(self.heads[t](h), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Full depth: every block, then the last head's logits ``(B, num_classes)``."""
        h = self.init_state(x)
        for block in self.blocks:
            h = block(h)
        return self.heads[-1](h)

    def step_loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(prediction, target, reduction="none")

    def build_stop_policy(self) -> StopPolicy:
        hidden_dims = tuple(self.hparams["policy_hidden_dims"])
        return StopPolicy(self.hparams["num_classes"], hidden_dims=hidden_dims)

    def plain_loss(self, x: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(self(x), target)

    def evaluate(self, x: Tensor, target: Tensor, stage: str) -> None:
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, target))
        self.log_metric(f"{stage}/acc", logits, target)
        if self.policy_attached:
            log_probs, stopped_at = self.predict_adaptive(x)
            self.log_metric(f"{stage}/exit_acc", log_probs, target)
            self.log(f"{stage}/exit_mean_step", (stopped_at + 1).float().mean())

    def configure_optimizers(self) -> OptimizerLRScheduler:
        hparams = self.hparams
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=hparams["lr"], weight_decay=hparams["weight_decay"], fused=True
        )
        if hparams["lr_decay_epochs"] is None:
            return optimizer
        return cosine_decay(optimizer, hparams["lr_decay_epochs"], self.trainer)
