"""L2T-DLF (Wu, Tian et al., NeurIPS 2018) against cross-entropy on MNIST; its hypergradient cost.

Quality: MNIST with 10,000 training, 5,000 dev (validation) and the 10,000 test images; the
students are the MLP 784-100-10 and the small CNN of `teaching.students.student_network`,
trained with SGD (momentum 0.9) for EPOCHS epochs of batches of 128. Each student is trained
three ways with identical budgets: cross-entropy, the online teacher (`LossTeacherCallback`
with its defaults, a fresh teacher per run) and the shipped `teacher-mnist`, frozen. Each way
has its learning rate picked by dev error on a separate seed (`tuned_rates`). Test error over
SEEDS seeds (mean and standard deviation). Time per student step (`step_times`): TIMING_ROUNDS
rounds of one fit of TIMING_STEPS steps by each way, interleaved, after a warm-up round; the
median over the rounds of each way's time over cross-entropy's in the same round.

Hypergradient cost: one teacher update on each student (K SGD-momentum steps of the taught
loss on batches of 128, dev cross-entropy on 512 images, reverse mode to the teacher's
parameters) by `core.unroll.hypergradient`, by the same with checkpointing every 5 steps, and
by torchopt's `MetaSGD` (the peer), for K = 5, 20, 50: the median time of 7 updates (the three
interleaved, one thread, the default allocator) and the peak memory, measured in a fresh process
as the growth of its peak resident set (with every large block mapped on its own).
`hypergradient` gets the dev set as the callback does: its batches of 128 joined, when it is
loaded, into batches of up to 512 (`teaching.replay.joined_dev_batches`; one objective term each,
differentiated in turn), so one term here; the peer evaluates the 512 images at once. Each
hypergradient's relative difference from torchopt's is recorded (`relative_difference`).

    python benchmarks/l2t.py            # the full run (see the docs for its time)
    python benchmarks/l2t.py --quick    # smoke run, small budget

Targets (issue 5): for both students, the mean test error of L2T (online, and frozen) at least
5 % below cross-entropy's; at each K, the hypergradient no slower and using no more memory than
torchopt's; the online teacher's time per step at most 2x cross-entropy's, the frozen teacher's
at most 1.1x.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning threads on a shared machine

import gc
import multiprocessing
import re
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import torch
import torchopt
from harness import Report, fit, format_table, parse_args, target
from lightning.pytorch import Callback, seed_everything
from torch import Tensor, nn

from lightning_automl.core.modes import evaluation_mode
from lightning_automl.core.unroll import SGD, hypergradient
from lightning_automl.data import MNISTDataModule
from lightning_automl.models import TaughtClassifier
from lightning_automl.teaching import TEACHER_FEATURES, LossTeacher, LossTeacherCallback
from lightning_automl.teaching.replay import dev_objective_fn, joined_dev_batches, taught_loss_fn
from lightning_automl.teaching.students import student_network

matplotlib.use("Agg")
from matplotlib import pyplot as plt

NAME = "l2t"
STUDENTS = ("mlp", "cnn")
METHODS = ("cross_entropy", "online", "frozen")
SEEDS = (0, 1, 2, 3, 4)
TUNING_SEED = 100
LEARNING_RATES = (0.02, 0.05, 0.1, 0.2)
EPOCHS = 20
TIMING_ROUNDS = 30
TIMING_STEPS = 200
UNROLLS = (5, 20, 50)
PEERS = ("ours", "ours_checkpointed", "torchopt")
TEACHER = "teacher-mnist"


class StepTimer(Callback):
    """The fit's wall time, from the start of training."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.started


class ErrorCurve(StepTimer):
    """Test error after every epoch, and the fit's wall time without the testing."""

    def __init__(self, test_loader) -> None:
        super().__init__()
        self.test_loader, self.errors = test_loader, []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        paused = time.perf_counter()
        self.errors.append(test_error(pl_module, self.test_loader))
        self.started += time.perf_counter() - paused  # not counted as training time


@torch.no_grad()
def test_error(model: nn.Module, loader) -> float:
    with evaluation_mode(model):
        wrong = sum(int((model(x).argmax(-1) != y).sum()) for x, y in loader)
    return wrong / len(loader.dataset)


def taught_student(student: str, method: str, lr: float) -> tuple[nn.Module, list[Callback]]:
    """The student network trained by ``method`` and the callbacks that teach it."""
    loss = "cross_entropy" if method == "cross_entropy" else "taught"
    model = TaughtClassifier(student, loss, lr=lr)
    if method == "online":
        return model, [LossTeacherCallback(num_classes=10)]
    if method == "frozen":
        return model, [LossTeacherCallback(pretrained=TEACHER, frozen=True)]
    return model, []


def train_student(
    data: MNISTDataModule, student: str, method: str, lr: float, seed: int, epochs: int
) -> dict[str, Any]:
    """One student trained by ``method``: its test error after each epoch, its final dev error
    and its wall time per step."""
    seed_everything(seed)
    model, callbacks = taught_student(student, method, lr)
    curve = ErrorCurve(data.test_dataloader())
    fit(model, data, epochs, [curve, *callbacks])
    return {
        "test_error": curve.errors[-1],
        "dev_error": test_error(model, data.val_dataloader()),
        "curve": curve.errors,
        "seconds_per_step": curve.seconds / model.trainer.global_step,
    }


def step_times(
    data: MNISTDataModule, student: str, rates: dict[str, float], rounds: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per step of each method in ``rounds`` fits of ``steps`` steps, the methods
    interleaved within each round (in a rotating order, after a warm-up round), so that the
    machine's load hits them alike."""
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    for round_ in range(rounds + 1):
        for method in METHODS[round_ % len(METHODS) :] + METHODS[: round_ % len(METHODS)]:
            seed_everything(round_)
            model, callbacks = taught_student(student, method, rates[method])
            timer = StepTimer()
            fit(model, data, -1, [timer, *callbacks], max_steps=steps)
            if round_:
                times[method].append(timer.seconds / steps)
    return times


def tuned_rates(data: MNISTDataModule, student: str, quick: bool, epochs: int) -> dict[str, Any]:
    """Each method's learning rate, picked by dev error on the tuning seed: cross-entropy's on
    `LEARNING_RATES`, the taught students' between that one and twice it (at initialisation the
    taught loss has about half of cross-entropy's gradient)."""
    rates = LEARNING_RATES[1:2] if quick else LEARNING_RATES
    grids = {"cross_entropy": {lr: 0.0 for lr in rates}}
    for method in METHODS:
        if method != "cross_entropy":
            best = min(grids["cross_entropy"], key=grids["cross_entropy"].__getitem__)
            grids[method] = {best: 0.0} if quick else {best: 0.0, 2 * best: 0.0}
        for lr in grids[method]:
            run = train_student(data, student, method, lr, TUNING_SEED, epochs)
            grids[method][lr] = run["dev_error"]
    return {method: min(grid, key=grid.__getitem__) for method, grid in grids.items()} | {
        "dev_errors": grids
    }


def quality(data_dir: Path, quick: bool) -> dict[str, Any]:
    epochs = 1 if quick else EPOCHS
    seeds = SEEDS[:1] if quick else SEEDS
    train_size = 1024 if quick else 10_000
    results: dict[str, Any] = {}
    for student in STUDENTS:
        tuning_data = MNISTDataModule(
            str(data_dir / "mnist"), train_size=train_size, seed=TUNING_SEED
        )
        tuning_data.setup()
        rates = tuned_rates(tuning_data, student, quick, epochs)
        runs: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
        for seed in seeds:
            data = MNISTDataModule(str(data_dir / "mnist"), train_size=train_size, seed=seed)
            data.setup()
            for method in METHODS:
                runs[method].append(
                    train_student(data, student, method, rates[method], seed, epochs)
                )
        rounds, steps = (1, 50) if quick else (TIMING_ROUNDS, TIMING_STEPS)
        timed = step_times(tuning_data, student, rates, rounds, steps)
        results[student] = {"tuning": rates, "runs": runs, "step_times": timed}
        for method in METHODS:
            errors = [run["test_error"] for run in runs[method]]
            ratios = [t / ce for t, ce in zip(timed[method], timed["cross_entropy"], strict=True)]
            results[student][method] = {
                "lr": rates[method],
                "mean": statistics.fmean(errors),
                "std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
                "seconds_per_step": statistics.median(timed[method]),
                "step_time_ratio": statistics.median(ratios),
                "seconds_per_step_of_the_runs": statistics.median(
                    run["seconds_per_step"] for run in runs[method]
                ),
            }
    return results


# -- hypergradient cost --------------------------------------------------------------------


def peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def resident_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def teacher_updates(student_name: str, unroll: int, data_dir: str) -> dict[str, Any]:
    """One teacher update of the ``student_name`` student, as each peer computes it: peer ->
    function returning the teacher's gradients."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = student_network(student_name)
    teacher = LossTeacher(num_classes=10)
    with torch.no_grad():  # a teacher away from its zero-initialised output layer
        for param in teacher.parameters():
            param.add_(0.05 * torch.randn_like(param))
    data = MNISTDataModule(data_dir, train_size=128 * unroll, val_size=512, batch_size=128)
    data.setup()
    batches = list(data.train_dataloader())[:unroll]
    dev_x, dev_y = data.datasets["val"].tensors
    dev_batches = joined_dev_batches(list(zip(dev_x.split(128), dev_y.split(128), strict=True)))
    features = torch.rand(len(TEACHER_FEATURES))
    lr, momentum = 0.1, 0.9

    def ours(checkpoint_every: int | None) -> list[Tensor]:
        params = {name: p.detach() for name, p in student.named_parameters()}
        inner = SGD(lr, momentum)
        result = hypergradient(
            taught_loss_fn(teacher, student, {}, lambda k: features),
            dev_objective_fn(student, {}, dev_batches, "cross_entropy", 50.0),
            params,
            inner.init_state(params),
            inner,
            [[batch] for batch in batches],
            list(teacher.parameters()),
            checkpoint_every,
        )
        return result.grads

    def torchopt_meta_sgd() -> list[Tensor]:
        copy = student_network(student_name)
        copy.load_state_dict(student.state_dict())
        optimizer = torchopt.MetaSGD(copy, lr=lr, momentum=momentum)
        for x, y in batches:
            optimizer.step(teacher.taught_loss(copy(x), y, features))
        dev = nn.functional.cross_entropy(copy(dev_x), dev_y)
        return list(torch.autograd.grad(dev, list(teacher.parameters())))

    return {
        "ours": lambda: ours(None),
        "ours_checkpointed": lambda: ours(5),
        "torchopt": torchopt_meta_sgd,
    }


def peak_memory(student_name: str, peer: str, unroll: int, data_dir: str) -> dict[str, Any]:
    """One update by ``peer`` from a reset peak: the growth of the peak resident set (MiB), and
    the gradients. Run it in a fresh process."""
    run = teacher_updates(student_name, unroll, data_dir)[peer]
    gc.collect()
    before = resident_kib()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set
    grads = run()
    return {"peak_mib": (peak_kib() - before) / 1024, "grads": [g.tolist() for g in grads]}


def update_times(student_name: str, unroll: int, data_dir: str, rounds: int) -> dict[str, float]:
    """Median seconds per update of every peer over ``rounds`` rounds, the peers interleaved
    within each round (after a warm-up), so that the machine's load hits them alike."""
    runs = teacher_updates(student_name, unroll, data_dir)
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {peer: [] for peer in runs}
    for _ in range(rounds):
        for peer, run in runs.items():
            started = time.perf_counter()
            run()
            times[peer].append(time.perf_counter() - started)
    return {peer: statistics.median(values) for peer, values in times.items()}


@contextmanager
def mapped_allocations() -> Iterator[None]:
    """Processes started inside map and unmap every block of 64 KiB and more one by one (glibc's
    ``MALLOC_MMAP_THRESHOLD_``), so that their resident set follows the live tensors instead of
    the allocator's free lists. Only for measuring memory: it slows allocation down."""
    previous = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = previous


def cost(data_dir: Path, quick: bool) -> dict[str, Any]:
    unrolls = UNROLLS[:1] if quick else UNROLLS
    context = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {}
    for student in STUDENTS:
        results[student] = {}
        for unroll in unrolls:
            row: dict[str, Any] = {}
            grads = {}
            mnist = str(data_dir / "mnist")
            with context.Pool(1) as pool:
                times = pool.apply(update_times, (student, unroll, mnist, 3 if quick else 7))
            for peer in PEERS:
                with mapped_allocations(), context.Pool(1) as pool:
                    memory = pool.apply(peak_memory, (student, peer, unroll, mnist))
                row[peer] = {"seconds": times[peer], "peak_mib": memory["peak_mib"]}
                grads[peer] = torch.cat([torch.tensor(g).flatten() for g in memory["grads"]])
            reference = grads["torchopt"]
            for peer in PEERS:
                difference = (grads[peer] - reference).norm() / reference.norm()
                row[peer]["relative_difference"] = float(difference)
            results[student][str(unroll)] = row
    return results


def main() -> None:
    args = parse_args(NAME, __doc__.splitlines()[0])
    report = Report(NAME, args)
    results = {
        "quality": quality(args.data_dir, args.quick),
        "cost": cost(args.data_dir, args.quick),
    }
    targets = []
    for student in STUDENTS:
        r = results["quality"][student]
        ce = r["cross_entropy"]
        for method in ("online", "frozen"):
            targets.append(
                target(
                    f"{method}_error_5pct_below_ce_{student}",
                    r[method]["mean"],
                    0.95 * ce["mean"],
                    "<=",
                )
            )
        for method, bound in (("online", 2.0), ("frozen", 1.1)):
            ratio = r[method]["step_time_ratio"]
            targets.append(target(f"{method}_step_time_ratio_{student}", ratio, bound, "<="))
    for student in STUDENTS:
        for unroll, row in results["cost"][student].items():
            name, ours, peer = f"{student}_K{unroll}", row["ours"], row["torchopt"]
            targets.append(
                target(
                    f"hypergradient_time_le_torchopt_{name}", ours["seconds"], peer["seconds"], "<="
                )
            )
            targets.append(
                target(
                    f"hypergradient_memory_le_torchopt_{name}",
                    ours["peak_mib"],
                    peer["peak_mib"],
                    "<=",
                )
            )
    rows = []
    for student in STUDENTS:
        for method in METHODS:
            m = results["quality"][student][method]
            error = f"{100 * m['mean']:.2f} +- {100 * m['std']:.2f}"
            step = [1000 * m["seconds_per_step"], m["step_time_ratio"]]
            rows.append([student, method, m["lr"], error, *step])
    header = ["student", "training", "lr", "test error %", "ms / step", "x cross-entropy"]
    table = format_table(header, rows)
    cost_rows = [
        [student, unroll, peer, cell["seconds"], cell["peak_mib"], cell["relative_difference"]]
        for student in STUDENTS
        for unroll, row in results["cost"][student].items()
        for peer, cell in row.items()
    ]
    header = ["student", "K", "hypergradient", "seconds", "peak MiB", "rel. diff."]
    table += "\n\n" + format_table(header, cost_rows)
    results["settings"] = {
        "epochs": EPOCHS,
        "seeds": SEEDS,
        "tuning_seed": TUNING_SEED,
        "learning_rates": LEARNING_RATES,
        "unrolls": UNROLLS,
        "timing_rounds": TIMING_ROUNDS,
        "timing_steps": TIMING_STEPS,
    }
    report.write(results, targets, table)

    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for axis, student in zip(axes, STUDENTS, strict=False):
        for method in METHODS:
            curves = torch.tensor(
                [run["curve"] for run in results["quality"][student]["runs"][method]]
            )
            epochs = range(1, curves.shape[1] + 1)
            axis.plot(epochs, 100 * curves.mean(0), label=method)
        axis.set(title=f"MNIST {student}", xlabel="epoch", ylabel="test error (%)")
        axis.legend(fontsize=7)
    for student, style in zip(STUDENTS, ("o-", "s--"), strict=True):
        cost_results = results["cost"][student]
        unrolls = [int(k) for k in cost_results]
        for peer in PEERS:
            peaks = [cost_results[str(k)][peer]["peak_mib"] for k in unrolls]
            axes[2].plot(unrolls, peaks, style, label=f"{student} {peer}")
    axes[2].set(title="hypergradient memory", xlabel="unroll K", ylabel="peak MiB")
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(report.png, dpi=120)


if __name__ == "__main__":
    main()
