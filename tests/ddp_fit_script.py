"""Fits a tiny model with 2 CPU processes (strategy="ddp", gloo); each rank writes a report.

Run by the tests as ``python tests/ddp_fit_script.py OUT_DIR [classifier|adaptive|lstm|taught]``;
Lightning relaunches this script for rank 1. ``adaptive`` fits TinyAdaptive with a
StopPolicyCallback (one epoch of Stage I, one of Stage II) and a standardizing policy, and
reports the policy's weights and BatchNorm statistics as well; ``lstm`` fits TinyClassifier
with an LSTMOptimizer, the global random state differing per rank; ``taught`` fits
TinyTaughtClassifier with a LossTeacherCallback and reports the teacher's parameters as well.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, seed_everything
from tiny import TinyAdaptive, TinyClassifier, TinyDataModule, TinyTaughtClassifier, quiet_trainer

from lightning_automl.optim import LSTMOptimizer
from lightning_automl.stopping import StopPolicy, StopPolicyCallback
from lightning_automl.teaching import LossTeacherCallback


class LSTMOptimizedClassifier(TinyClassifier):
    def configure_optimizers(self):
        torch.rand(self.global_rank + 1)  # the global random state now differs per rank
        return LSTMOptimizer(self.parameters())


class FirstBatch(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.first_batch_sum = float(batch[0].sum())


def main(out_dir: Path, which: str) -> None:
    seed_everything(0)
    first_batch = FirstBatch()
    callbacks: list[Callback] = [first_batch]
    models = {
        "adaptive": TinyAdaptive,
        "lstm": LSTMOptimizedClassifier,
        "taught": TinyTaughtClassifier,
    }
    model = models.get(which, TinyClassifier)()
    if which == "adaptive":
        torch.manual_seed(int(os.environ.get("LOCAL_RANK", 0)))  # the policies start different
        policy = StopPolicy(3, hidden_dims=(8,), step_encoding_dim=4, standardize=True)
        callbacks.append(StopPolicyCallback(stage_epochs=(1, 1), beta=0.5, policy=policy))
    if which == "taught":
        callbacks.append(LossTeacherCallback(num_classes=3, unroll_steps=2, update_every_n_steps=2))
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2, callbacks=callbacks)
    initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer.fit(model, TinyDataModule())
    final = torch.cat([p.detach().flatten() for p in model.parameters()])
    report = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "backend": torch.distributed.get_backend(),
        "first_batch_sum": first_batch.first_batch_sum,
        "parameters": final.tolist(),
        "moved": float((final - initial).abs().max()),
    }
    if which == "adaptive":
        state = callbacks[1].policy.state_dict().values()  # weights and BatchNorm statistics
        policy = torch.cat([value.float().flatten() for value in state])
        report["policy"] = policy.tolist()
    if which == "taught":
        teacher = torch.cat([p.detach().flatten() for p in callbacks[1].teacher.parameters()])
        report["teacher"] = teacher.tolist()
        fresh = LossTeacherCallback(num_classes=3).teacher.parameters()
        moved = teacher - torch.cat([p.detach().flatten() for p in fresh])
        report["teacher_moved"] = float(moved.abs().max())
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "classifier")
