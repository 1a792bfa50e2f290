"""`L2LMetaModule`: meta-training of the L2L optimizer network as a `LightningModule`.

References:
    M. Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
    NeurIPS 2016, section 2: the meta-objective ``L(phi) = E_f[sum_t w_t f(theta_t)]`` (eq. 3)
    with ``w_t = 1`` in the experiments, minimised by Adam on ``phi`` with truncated BPTT;
    section 3: 100 inner steps split into unrolls of 20.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any, cast

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_automl.core.pretrained import PretrainedCard
from lightning_automl.core.tasks import TaskFamily
from lightning_automl.core.validation import (
    check_bool,
    check_non_negative_int,
    check_number,
    check_positive_int,
)
from lightning_automl.l2l.unroll import (
    InnerState,
    ParallelTasks,
    loss_curve,
    run_unroll,
    start_inner_loop,
)
from lightning_automl.optim.typed_lstm import TypedCoordinateLSTM, build_l2l_network, type_segments

__all__ = ["INNER_LOOP_KEY", "L2LMetaModule"]

INNER_LOOP_KEY = "l2l_inner_loop"
"""Checkpoint key of the inner loop's state: one row per DDP rank in every tensor."""


class _StepIndices(IterableDataset[int]):
    """``0 .. length - 1``: the batches of a loop whose real input the module draws itself.

    An iterable dataset, so that Lightning gives every DDP rank all of it (no sampler).
    """

    def __init__(self, length: int) -> None:
        self.length = length

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.length))

    def __len__(self) -> int:
        return self.length


class L2LMetaModule(LightningModule):
    """Meta-trains the `CoordinateLSTM` of an `LSTMOptimizer` over a task family (L2L).

    Each rank draws ``num_tasks`` tasks from ``family`` and optimises them side by side for
    ``horizon`` inner steps, ``theta_{t+1} = theta_t + m(grad_t)``, exactly as `LSTMOptimizer`
    would. One training step is one truncated-BPTT segment of ``unroll`` inner steps: its
    meta-loss is the mean of ``f(theta_t)`` over the segment's steps (those among the last
    ``meta_loss_steps``) and the tasks, whose gradient flows through the updates and the LSTM
    states (the gradient inputs are detached unless ``second_order``); the parameters and LSTM
    states carry over to the next segment, cut from the graph. After ``horizon`` inner steps
    (one epoch) the rank draws new tasks. The Trainer's ``max_steps`` sets the length of
    meta-training. The network is a submodule, so DDP averages its meta-gradient over the
    ranks, whose task generators are seeded with ``seed + global_rank``.

    Logged: ``meta/loss`` (the meta-loss, every step), ``meta/final_loss`` (mean loss at the end
    of the horizon, on the step that reaches it) and, with ``num_val_tasks``, ``val/final_loss``:
    the mean loss after ``horizon`` steps of the frozen network on fixed held-out tasks, the
    value for a checkpoint callback to monitor. The inner loop (task parameters, LSTM states,
    step, task generator) is saved in checkpoints, so a resumed run continues bit for bit.
    `save_pretrained` saves the network for ``LSTMOptimizer(pretrained=path, ...)``.

    The inner loop runs where the family puts the tasks' tensors (the CPU for the families in
    `lightning_automl.core.tasks`), so train with ``accelerator="cpu"``. Its tensors are tiny:
    one thread per process (``torch.set_num_threads(1)``) is fastest, and far faster than
    several threads on a busy machine.

    Args:
        family: The task family, e.g. ``QuadraticFamily(dim=10)``; not saved with the
            hyperparameters: pass it again to ``load_from_checkpoint``.
        num_tasks: Tasks optimised in parallel on each rank (one LSTM batch of all their
            coordinates).
        horizon: Inner steps per task (100 in the paper).
        unroll: Inner steps per training step, the truncation of BPTT (20 in the paper);
            ``horizon`` must be a multiple of it.
        meta_loss_steps: The weights ``w_t`` of eq. 3: the meta-loss is the mean of
            ``f(theta_t)`` over the last ``meta_loss_steps`` inner steps of the horizon
            (``w_t = 1`` there, 0 before), for an optimizer judged by where it ends.
            Segments before them carry no meta-gradient under truncated BPTT: they run without
            a graph at the start of the next training step. ``None``: every step (the paper).
        meta_lr: Learning rate of Adam on the network's weights.
        pretrained: Start from this shipped L2L optimizer (name or path) instead of random
            weights: fine-tuning. Its card sets the network config.
        hidden_size: Units per LSTM layer (``None``: the card's, else 20).
        num_layers: Stacked LSTM layers (``None``: the card's, else 2).
        preprocess_p: ``p`` of the gradient preprocessing (``None``: the card's, else 10).
        output_scale: Constant factor on the network's output (``None``: the card's, else 0.1).
        parameter_types: ``{fnmatch pattern: type}`` of the tasks' parameter names: one network
            per type (`TypedCoordinateLSTM`, the paper's section 3.3), e.g. ``{"hidden*":
            "hidden", "output*": "output"}`` for `MLPFamily`. From a shared ``pretrained``
            network, every type starts as a copy of it. ``None``: the card's, if it has them,
            else one network for all coordinates.
        output_factors: ``{type: factor}``: each type's copy of a shared ``pretrained``
            network starts with its updates multiplied by its factor (e.g. smaller steps for
            the hidden layers, larger for the output layer); only with such a ``pretrained``
            and ``parameter_types``.
        second_order: Differentiate through the gradient inputs too (the paper does not).
        num_val_tasks: Held-out tasks of the validation loop (0: no validation).
        val_seed: Seed of the held-out tasks; it must differ from every rank's training seed.
        seed: Seed of the network's initial weights and of the training tasks.
    """

    def __init__(
        self,
        family: TaskFamily,
        num_tasks: int = 32,
        horizon: int = 100,
        unroll: int = 20,
        meta_loss_steps: int | None = None,
        meta_lr: float = 1e-3,
        pretrained: str | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        preprocess_p: float | None = None,
        output_scale: float | None = None,
        parameter_types: dict[str, str] | None = None,
        output_factors: dict[str, float] | None = None,
        second_order: bool = False,
        num_val_tasks: int = 0,
        val_seed: int = 1_000_000,
        seed: int = 0,
    ) -> None:
        if not isinstance(family, TaskFamily):
            raise TypeError(f"family must be a TaskFamily, got {type(family).__name__}")
        check_positive_int("num_tasks", num_tasks)
        check_positive_int("horizon", horizon)
        check_positive_int("unroll", unroll)
        if horizon % unroll != 0:
            raise ValueError(
                f"horizon must be a multiple of unroll (each training step unrolls {unroll} "
                f"inner steps, and new tasks start after horizon / unroll of them), got "
                f"horizon={horizon}, unroll={unroll}"
            )
        if meta_loss_steps is not None:
            check_number(
                "meta_loss_steps",
                meta_loss_steps,
                f"None or an integer in [1, horizon={horizon}]",
                lambda steps: isinstance(steps, int) and 1 <= steps <= horizon,
            )
        check_number("meta_lr", meta_lr, "a finite number > 0", lambda lr: 0 < lr < math.inf)
        check_bool("second_order", second_order)
        check_non_negative_int("num_val_tasks", num_val_tasks)
        check_non_negative_int("val_seed", val_seed)
        check_non_negative_int("seed", seed)
        super().__init__()
        self.save_hyperparameters(ignore=["family"])
        self.family = family
        self.num_tasks = num_tasks
        self.horizon = horizon
        self.unroll = unroll
        self.meta_loss_steps = horizon if meta_loss_steps is None else meta_loss_steps
        self.meta_lr = float(meta_lr)
        self.second_order = second_order
        self.num_val_tasks = num_val_tasks
        self.val_seed = val_seed
        self.seed = seed
        self.network = build_l2l_network(
            pretrained,
            hidden_size,
            num_layers,
            preprocess_p,
            output_scale,
            parameter_types,
            output_factors,
            seed,
        )
        self._generator: torch.Generator | None = None
        self._generator_state_before_tasks: Tensor | None = None
        self._tasks: ParallelTasks | None = None
        self._state: InnerState | None = None
        self._checkpointed_inner_loop: dict[str, Tensor] | None = None

    @property
    def tasks(self) -> ParallelTasks | None:
        """The tasks this rank is optimising (``None`` before the first training step)."""
        return self._tasks

    @property
    def inner_state(self) -> InnerState | None:
        """Where their inner optimisation stands (``None`` before the first training step)."""
        return self._state

    def setup(self, stage: str) -> None:
        if isinstance(self.network, TypedCoordinateLSTM):  # every name has a type, or fail now
            task = self.family.sample(torch.Generator().manual_seed(self.val_seed))
            type_segments(ParallelTasks([task]).named_sizes, self.network.parameter_types)
        training_seeds = range(self.seed, self.seed + self.trainer.world_size)
        if self.num_val_tasks and self.val_seed in training_seeds:
            raise ValueError(
                f"val_seed must differ from the training seeds seed + global_rank "
                f"({training_seeds.start}..{training_seeds.stop - 1}), so that the validation "
                f"tasks are held out, got val_seed={self.val_seed}"
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.meta_lr)

    def train_dataloader(self) -> DataLoader[int]:
        """One epoch: the training steps of one draw of tasks, one per segment of ``unroll``
        inner steps that holds some of the last ``meta_loss_steps``."""
        unweighted_segments = (self.horizon - self.meta_loss_steps) // self.unroll
        return DataLoader(
            _StepIndices(self.horizon // self.unroll - unweighted_segments), batch_size=None
        )

    def val_dataloader(self) -> DataLoader[int]:
        """One batch (all held-out tasks) if ``num_val_tasks``, otherwise none."""
        return DataLoader(_StepIndices(int(self.num_val_tasks > 0)), batch_size=None)

    def training_step(self, batch: int, batch_idx: int) -> Tensor:
        """One truncated-BPTT segment: ``unroll`` inner steps and their meta-loss."""
        tasks, state = self._current_tasks()
        while self._weighted_steps(state.step) == 0:  # no meta-gradient: no graph
            with torch.no_grad():
                _, state = run_unroll(self.network, tasks, state, self.unroll)
        weighted = self._weighted_steps(state.step)
        losses, state = run_unroll(
            self.network, tasks, state, self.unroll, self.second_order
        )  # (unroll, num_tasks)
        self._state = state.detach()
        meta_loss = losses[-weighted:].mean()
        self.log("meta/loss", meta_loss, prog_bar=True, sync_dist=True, batch_size=self.num_tasks)
        if state.step == self.horizon:
            self.log(
                "meta/final_loss", losses[-1].mean(), sync_dist=True, batch_size=self.num_tasks
            )
        return meta_loss

    def validation_step(self, batch: int, batch_idx: int) -> None:
        """Runs the frozen network ``horizon`` steps on the held-out tasks: ``val/final_loss``."""
        generator = torch.Generator().manual_seed(self.val_seed)
        tasks = ParallelTasks([self.family.sample(generator) for _ in range(self.num_val_tasks)])
        curve = loss_curve(self.network, tasks, self.horizon)  # (horizon + 1, tasks)
        self.log(
            "val/final_loss",
            curve[-1].mean(),
            prog_bar=True,
            sync_dist=True,
            batch_size=self.num_val_tasks,
        )

    def save_pretrained(self, path: str | os.PathLike[str], **card_fields: Any) -> PretrainedCard:
        """Save the network for ``LSTMOptimizer(params, pretrained=path, <same network config>)``.

        ``card_fields`` are the optional arguments of `write_pretrained` (``command``,
        ``metrics``, ...); ``tasks`` defaults to the family's class name.
        """
        card_fields.setdefault("tasks", [type(self.family).__name__])
        return self.network.save_pretrained(path, **card_fields)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Saves every rank's inner loop under `INNER_LOOP_KEY` (tensors only)."""
        if self._state is None or self._generator_state_before_tasks is None:
            return
        state = {
            "generator_state_before_tasks": self._generator_state_before_tasks,
            "theta": self._state.theta,
            "grad": self._state.grad,
            "hidden": self._state.hidden,
            "cell": self._state.cell,
            "step": torch.tensor(self._state.step),
        }
        if self._trainer is not None and self.trainer.world_size > 1:
            checkpoint[INNER_LOOP_KEY] = {
                key: cast(Tensor, self.all_gather(value.to(self.device))).cpu()
                for key, value in state.items()
            }
        else:
            checkpoint[INNER_LOOP_KEY] = {key: value.unsqueeze(0) for key, value in state.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps the saved inner loop; the first training step restores this rank's row."""
        self._generator = self._tasks = self._state = None
        self._checkpointed_inner_loop = checkpoint.get(INNER_LOOP_KEY)

    def _weighted_steps(self, step: int) -> int:
        """How many of the ``unroll`` steps after inner step ``step`` the meta-loss counts
        (they are the segment's last ones)."""
        first_weighted = self.horizon - self.meta_loss_steps + 1
        return max(0, min(self.unroll, step + self.unroll - first_weighted + 1))

    def _current_tasks(self) -> tuple[ParallelTasks, InnerState]:
        """The tasks and state to unroll next: restored, continued, or freshly drawn."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + self.global_rank)
            if self._checkpointed_inner_loop is not None:
                self._restore_inner_loop(self._checkpointed_inner_loop)
                self._checkpointed_inner_loop = None
        if self._tasks is None or self._state is None or self._state.step == self.horizon:
            self._tasks = self._draw_tasks()
            self._state, _ = start_inner_loop(self.network, self._tasks)
        return self._tasks, self._state

    def _draw_tasks(self) -> ParallelTasks:
        """``num_tasks`` new tasks; remembers the generator state that draws them again."""
        assert self._generator is not None
        self._generator_state_before_tasks = self._generator.get_state()
        return ParallelTasks([self.family.sample(self._generator) for _ in range(self.num_tasks)])

    def _restore_inner_loop(self, saved: dict[str, Tensor]) -> None:
        """Redraws the saved tasks, replays their minibatch streams and restores the state."""
        saved_ranks = len(saved["step"])
        if saved_ranks != self.trainer.world_size:
            raise ValueError(
                f"the checkpoint holds the inner loops of {saved_ranks} ranks, but this run has "
                f"{self.trainer.world_size}: resume with the same number of processes"
            )
        row = {key: value[self.global_rank] for key, value in saved.items()}
        assert self._generator is not None
        self._generator.set_state(row["generator_state_before_tasks"])
        self._tasks = self._draw_tasks()
        if sum(self._tasks.task_sizes) != row["theta"].numel():
            raise ValueError(
                f"the checkpoint's tasks have {row['theta'].numel()} coordinates in all, but "
                f"this family draws {sum(self._tasks.task_sizes)}: resume with the same family "
                "and num_tasks"
            )
        step = int(row["step"])
        for task in self._tasks.tasks:
            for _ in range(step + 1):  # one minibatch at theta_0 and one per inner step
                task.next_batch()
        self._state = InnerState(
            row["theta"].to(self.device),
            row["grad"].to(self.device),
            row["hidden"].to(self.device),
            row["cell"].to(self.device),
            step,
        )
