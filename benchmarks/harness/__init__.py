"""What every benchmark shares: its command line, the targets, the table and the JSON report.

The convention (``../shared/docs/BENCHMARKS.md``): ``python benchmarks/NAME.py [--quick]
[--out PATH] [--data-dir DIR]`` prints a table and writes ``NAME.json`` and ``NAME.png``.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

from lightning_automl.core.provenance import git_commit

BENCHMARKS_DIR = Path(__file__).resolve().parents[1]
RESULTS_DIR = BENCHMARKS_DIR / "results"
OPERATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def parse_args(name: str, description: str) -> argparse.Namespace:
    """``--quick``, ``--out`` (default ``benchmarks/results/NAME.json``) and ``--data-dir``."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    parser.add_argument("--quick", action="store_true", help="reduced budget smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    return parser.parse_args()


def target(name: str, value: float, bound: float, op: str) -> dict[str, Any]:
    """One entry of the JSON ``targets`` list, ``met`` computed as ``value op bound``."""
    return {
        "name": name,
        "value": value,
        "target": bound,
        "op": op,
        "met": bool(OPERATORS[op](value, bound)),
    }


def fit(
    model: LightningModule,
    data: LightningDataModule,
    epochs: int,
    callbacks: list[Callback],
    max_steps: int = -1,
) -> None:
    """``Trainer.fit`` on the CPU for ``epochs`` (-1: until ``max_steps``), without logging,
    checkpoints or validation."""
    trainer = Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, data)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; floats with 3 decimals."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class Report:
    """Times the run and writes the JSON report; the PNG path is ``out`` with ``.png``."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.started = time.perf_counter()
        self.png = args.out.with_suffix(".png")
        args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(self, results: dict[str, Any], targets: list[dict[str, Any]], table: str) -> None:
        """Prints the table and the targets, and writes the JSON."""
        seconds = time.perf_counter() - self.started
        print(table)
        print(format_table(["target", "value", "op", "bound", "met"], _target_rows(targets)))
        command = " ".join(["python", f"benchmarks/{self.name}.py", *sys.argv[1:]])
        report = {
            "benchmark": self.name,
            "command": command,
            "git_commit": git_commit(BENCHMARKS_DIR),
            "quick": self.args.quick,
            "seconds": round(seconds, 1),
            "machine": machine(),
            "results": results,
            "targets": targets,
        }
        self.args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {self.args.out} and {self.png} in {seconds:.0f} s")


def _target_rows(targets: list[dict[str, Any]]) -> list[list[Any]]:
    return [[t["name"], t["value"], t["op"], t["target"], t["met"]] for t in targets]
