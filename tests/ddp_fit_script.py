"""Fits TinyClassifier with 2 CPU processes (strategy="ddp", gloo); each rank writes a report.

Run by tests/test_ddp.py as ``python tests/ddp_fit_script.py OUT_DIR``; Lightning relaunches
this script for rank 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, seed_everything
from tiny import TinyClassifier, TinyDataModule, quiet_trainer


class FirstBatch(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.first_batch_sum = float(batch[0].sum())


def main(out_dir: Path) -> None:
    seed_everything(0)
    first_batch = FirstBatch()
    trainer = quiet_trainer(devices=2, strategy="ddp", max_epochs=2, callbacks=[first_batch])
    model = TinyClassifier()
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
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
