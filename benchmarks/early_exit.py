"""Early exit on MNIST with Learning to Stop (Chen et al., ICML 2020) against full depth.

One `EarlyExitClassifier` (residual MLP blocks, a head after each) is trained by Stage I and a
stop policy by Stage II (`StopPolicyCallback`); the same architecture is also trained the usual
way, on its last head, with the Stage I budget (AdamW, cosine decay over those epochs). On the
10,000 test images it reports the accuracy of every fixed exit, of the full depth and of the
policy at several thresholds with its mean depth, and the throughput of the batched early
exit (`predict_adaptive`, batch 256) against the full-depth forward, timed interleaved.

    python benchmarks/early_exit.py            # the full run (about 5 minutes on 2 cores)
    python benchmarks/early_exit.py --quick    # smoke run, 1 + 1 epochs on 5,000 images

Targets (issue 3): the policy's accuracy within 0.2 points of the full-depth model's at a mean
depth of at most 70 % of T, and a throughput at least 1.3 times the full-depth forward's. The
accuracy is also compared with the conventionally trained network (an added target).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared machine

import statistics
import time

import matplotlib
import torch
from harness import Report, fit, format_table, parse_args, target
from lightning.pytorch import seed_everything
from torch import Tensor

from lightning_automl.data import MNISTDataModule
from lightning_automl.stopping import EarlyExitClassifier, StopPolicyCallback

matplotlib.use("Agg")
from matplotlib import pyplot as plt

NAME = "early_exit"
MODEL = {"width": 512, "hidden": 512, "num_blocks": 8, "lr": 1e-3}
STOPPING = {"beta": 3.0, "imitation_beta": 0.01, "step_cost": 0.02}
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
BATCH = 256


@torch.no_grad()
def exit_accuracies(model: EarlyExitClassifier, x: Tensor, y: Tensor) -> list[float]:
    """Test accuracy (%) of every fixed exit."""
    steps = torch.stack(model.forward_steps(x))  # (T, N, classes)
    return [100 * (step.argmax(-1) == y).float().mean().item() for step in steps]


@torch.no_grad()
def early_exit(model: EarlyExitClassifier, x: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """`predict_adaptive` over ``x`` in batches of 256: log-probabilities and stop steps."""
    outputs = [
        model.predict_adaptive(x[i : i + BATCH], None, threshold) for i in range(0, len(x), BATCH)
    ]
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


def policy_accuracy(model: EarlyExitClassifier, x: Tensor, y: Tensor, threshold: float):
    """Accuracy (%) and mean depth (1-based) of the batched early exit at ``threshold``."""
    log_probs, stopped_at = early_exit(model, x, threshold)
    accuracy = 100 * (log_probs.argmax(-1) == y).float().mean().item()
    return accuracy, (stopped_at + 1).float().mean().item()


@torch.no_grad()
def routing(model: EarlyExitClassifier, x: Tensor, y: Tensor) -> dict[str, float]:
    """Share (%) of the samples that go past exit 1 (threshold 0.5), by exit 1's correctness."""
    first_right = model.forward_steps(x)[0].argmax(-1) == y
    continues = early_exit(model, x, 0.5)[1] > 0
    return {
        "continue_if_exit1_wrong": 100 * continues[~first_right].float().mean().item(),
        "continue_if_exit1_right": 100 * continues[first_right].float().mean().item(),
    }


@torch.no_grad()
def throughput_ratio(model: EarlyExitClassifier, x: Tensor, repeats: int) -> dict[str, float]:
    """Median time per batch of the full forward and of ``predict_adaptive``, interleaved."""
    batches = [x[start : start + BATCH] for start in range(0, len(x) - BATCH + 1, BATCH)]
    times: dict[str, list[float]] = {"full": [], "adaptive": []}
    runs = {"full": model, "adaptive": lambda batch: model.predict_adaptive(batch)}
    for _ in range(2):  # warm-up
        for run in runs.values():
            run(batches[0])
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            for batch in batches:
                run(batch)
            times[name].append((time.perf_counter() - started) / len(batches))
    full, adaptive = statistics.median(times["full"]), statistics.median(times["adaptive"])
    return {"full_ms": 1e3 * full, "adaptive_ms": 1e3 * adaptive, "speedup": full / adaptive}


def main() -> None:
    args = parse_args(NAME, __doc__.splitlines()[0])
    report = Report(NAME, args)
    stage_epochs = (1, 1) if args.quick else (6, 3)
    data = MNISTDataModule(data_dir=str(args.data_dir / "mnist"), batch_size=128)
    data.setup()
    x, y = data.datasets["test"].tensors
    x = x.flatten(1)
    if args.quick:
        data.datasets["train"] = torch.utils.data.Subset(data.datasets["train"], range(5000))

    model = {**MODEL, "lr_decay_epochs": stage_epochs[0]}
    seed_everything(0)
    conventional = EarlyExitClassifier(**model)
    fit(conventional, data, stage_epochs[0], [])
    seed_everything(0)
    staged = EarlyExitClassifier(**model)
    fit(staged, data, sum(stage_epochs), [StopPolicyCallback(stage_epochs, **STOPPING)])
    conventional.eval()
    staged.eval()

    exits = {"staged": exit_accuracies(staged, x, y)}
    exits["conventional"] = exit_accuracies(conventional, x, y)
    policy = {t: policy_accuracy(staged, x, y, t) for t in THRESHOLDS}
    speed = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        speed[threads] = throughput_ratio(staged, x, repeats=3 if args.quick else 10)
    num_blocks = MODEL["num_blocks"]
    full, (accuracy, depth) = exits["staged"][-1], policy[0.5]
    conventional_full = exits["conventional"][-1]
    results = {
        "model": model,
        "stopping": STOPPING,
        "stage_epochs": stage_epochs,
        "test_samples": len(x),
        "exit_accuracy": exits,
        "full_depth_accuracy": full,
        "conventional_accuracy": conventional_full,
        "policy": {str(t): {"accuracy": a, "mean_depth": d} for t, (a, d) in policy.items()},
        "routing": routing(staged, x, y),
        "throughput": {str(threads): value for threads, value in speed.items()},
    }
    targets = [
        target("exit_accuracy_within_0.2_of_full_depth", accuracy, full - 0.2, ">="),
        target("exit_mean_depth_le_0.7T", depth, 0.7 * num_blocks, "<="),
        target("exit_accuracy_within_0.2_of_conventional", accuracy, conventional_full - 0.2, ">="),
        target("exit_throughput_ge_1.3x_full_depth", speed[2]["speedup"], 1.3, ">="),
    ]
    rows = [[f"exit {t + 1}", s, c] for t, (s, c) in enumerate(zip(*exits.values(), strict=True))]
    rows += [[f"policy {t} (depth {d:.2f})", a, ""] for t, (a, d) in policy.items()]
    table = format_table(["test accuracy %", "staged", "conventional"], rows)
    table += "\n\n" + format_table(["routing at 0.5", "%"], list(results["routing"].items()))
    speed_rows = [[n, v["full_ms"], v["adaptive_ms"], v["speedup"]] for n, v in speed.items()]
    table += "\n\n" + format_table(["threads", "full ms", "adaptive ms", "speedup"], speed_rows)
    report.write(results, targets, table)

    figure, axis = plt.subplots(figsize=(6, 4))
    depths = range(1, num_blocks + 1)
    axis.plot(depths, exits["staged"], "o-", label="fixed exit (Stage I network)")
    conventional_label = "conventional (last head)"
    axis.plot([num_blocks], [exits["conventional"][-1]], "ks", label=conventional_label)
    axis.plot(*zip(*[(d, a) for a, d in policy.values()], strict=True), "r*", ms=10, label="policy")
    axis.set(xlabel="mean depth (blocks)", ylabel="test accuracy (%)", title="MNIST early exit")
    axis.set_ylim(min(exits["staged"]) - 0.5, max(exits["staged"]) + 0.5)
    axis.legend()
    figure.tight_layout()
    figure.savefig(report.png, dpi=120)


if __name__ == "__main__":
    main()
