"""Meta-trains an L2LMetaModule with 2 CPU processes (strategy="ddp", gloo); each rank reports.

Run by tests/test_l2l_meta.py as ``python tests/l2l_ddp_fit_script.py OUT_DIR``; Lightning
relaunches this script for rank 1. Both ranks then save one checkpoint, ``OUT_DIR/l2l.ckpt``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tiny import quiet_trainer

from lightning_automl.core.tasks import QuadraticFamily
from lightning_automl.l2l import L2LMetaModule


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    module = L2LMetaModule(QuadraticFamily(dim=4), num_tasks=2, horizon=4, unroll=2, meta_lr=1e-2)
    initial = torch.cat([p.detach().flatten().clone() for p in module.network.parameters()])
    trainer = quiet_trainer(devices=2, strategy="ddp", max_steps=3)
    trainer.fit(module)
    trainer.save_checkpoint(out_dir / "l2l.ckpt")
    final = torch.cat([p.detach().flatten() for p in module.network.parameters()])
    assert module.tasks is not None and module.inner_state is not None
    report = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "backend": torch.distributed.get_backend(),
        "network": final.tolist(),
        "moved": float((final - initial).abs().max()),
        "task_weights": [task.weight.flatten().tolist() for task in module.tasks.tasks],
        "theta": module.inner_state.theta.tolist(),
    }
    (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
