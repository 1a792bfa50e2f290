"""Tiny models and data for tests (importable from test modules and from helper scripts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_automl.core.pretrained import PretrainedMixin
from lightning_automl.data.sampling import EpochSeededRandomSampler
from lightning_automl.stopping import AdaptiveDepthMixin, StopPolicy
from lightning_automl.teaching import LossTeacherMixin


class TinyNet(PretrainedMixin, nn.Module):
    """A two-layer network with a buffer, to round-trip through the pretrained registry."""

    pretrained_method = "tiny"

    def __init__(self, in_features: int = 4, hidden: int = 3) -> None:
        super().__init__()
        self.in_features, self.hidden = in_features, hidden
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.register_buffer("scale", torch.ones(1))

    def pretrained_config(self) -> dict[str, int]:
        return {"in_features": self.in_features, "hidden": self.hidden}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale


class TinyClassifier(LightningModule):
    """Linear classifier over 8 features, 3 classes, SGD."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyAdaptive(AdaptiveDepthMixin, LightningModule):
    """Three blocks (Linear, BatchNorm, dropout) over 8 features, a 3-class head after each."""

    num_steps = 3

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.1))
            for _ in range(self.num_steps)
        )
        self.heads = nn.ModuleList(nn.Linear(8, 3) for _ in range(self.num_steps))

    def forward_steps(self, x):
        logits = []
        for block, head in zip(self.blocks, self.heads, strict=True):
            x = block(x)
            logits.append(head(x))
        return logits

    def step_loss(self, prediction, target):
        return F.cross_entropy(prediction, target, reduction="none")

    def build_stop_policy(self):
        return StopPolicy(prediction_dim=3, hidden_dims=(8,), step_encoding_dim=4)

    def training_step(self, batch, batch_idx):
        return self.adaptive_depth_loss(*batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class TinyDataModule(LightningDataModule):
    """64 random samples of 8 features with labels from a fixed linear rule."""

    def __init__(self, batch_size: int = 8, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(64, 8, generator=generator)
        y = (x[:, :3] @ torch.randn(3, 3, generator=generator)).argmax(dim=1)
        self.dataset = TensorDataset(x, y)
        self.batch_size = batch_size

    def train_dataloader(self):
        sampler = EpochSeededRandomSampler(self.dataset, seed=0)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size)


def quiet_trainer(**kwargs) -> Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or summary, unless ``kwargs`` say."""
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(**{**defaults, **kwargs})


class TinyTaughtClassifier(LossTeacherMixin, LightningModule):
    """An MLP over 8 features with 3 classes, trained with the teacher's loss.

    ``optimizer``: ``"sgd"``, ``"momentum"`` (0.9) or ``"adam"``.
    """

    def __init__(self, optimizer: str = "momentum", lr: float = 0.1) -> None:
        super().__init__()
        self.optimizer_name, self.lr = optimizer, lr
        self.net = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.taught_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        momentum = 0.9 if self.optimizer_name == "momentum" else 0.0
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=momentum)
