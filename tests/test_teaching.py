"""L2T-DLF: ParametricLoss, LossTeacher, LossTeacherMixin and LossTeacherCallback."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import TinyClassifier, TinyDataModule, TinyTaughtClassifier, quiet_trainer
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import lightning_automl.teaching.callback as callback_module
from lightning_automl.core.features import ExponentialMovingAverage, classification_summary
from lightning_automl.core.unroll import SGD, Adam, hypergradient
from lightning_automl.teaching import (
    TEACHER_FEATURES,
    LossTeacher,
    LossTeacherCallback,
    ParametricLoss,
    dev_objective,
    teacher_features,
)
from lightning_automl.teaching.replay import (
    DEV_JOIN_SAMPLES,
    dev_objective_fn,
    joined_dev_batches,
    student_forward,
)
from lightning_automl.teaching.students import student_network


def test_parametric_loss_at_identity_is_the_sigmoid_surrogate_mixed_with_cross_entropy() -> None:
    logits = torch.randn(5, 4, dtype=torch.float64)
    target = torch.tensor([0, 3, 1, 1, 2])
    p_y = logits.softmax(-1)[torch.arange(5), target]
    surrogate = -p_y / (1 + p_y)
    ce = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(
        ParametricLoss(4, ce_weight=0.0)(logits, target, reduction="none"), surrogate
    )
    mixed = ParametricLoss(4, ce_weight=0.3)(logits, target, reduction="none")
    torch.testing.assert_close(mixed, 0.3 * ce + 0.7 * surrogate)
    assert ParametricLoss(4)(logits, target) == pytest.approx(
        float(ParametricLoss(4)(logits, target, reduction="none").mean())
    )


def test_parametric_loss_uses_column_y_of_w_and_entry_y_of_b() -> None:
    logits = torch.randn(3, 3, dtype=torch.float64)
    target = torch.tensor([2, 0, 1])
    weight = torch.randn(3, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    log_p = logits.log_softmax(-1)
    expected = torch.stack(
        [-torch.sigmoid(log_p[i] @ weight[:, y] + bias[y]) for i, y in enumerate(target)]
    )
    actual = ParametricLoss(3, ce_weight=0.0)(logits, target, weight, bias, reduction="none")
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3, 1.0])
def test_constant_coefficients_take_the_closed_form_gradient_of_the_same_loss(
    ce_weight, reduction
) -> None:
    logits = (3 * torch.randn(9, 4, dtype=torch.float64)).requires_grad_()
    target = torch.tensor([0, 3, 1, 1, 2, 3, 0, 2, 2])
    weight = torch.eye(4, dtype=torch.float64) + 0.2 * torch.randn(4, 4, dtype=torch.float64)
    bias = 0.3 * torch.randn(4, dtype=torch.float64)
    loss = ParametricLoss(4, ce_weight)
    closed_form = loss(logits, target, weight, bias, reduction)
    operators = loss(logits, target, weight.requires_grad_(), bias.requires_grad_(), reduction)
    assert type(closed_form.grad_fn).__name__ == "ConstantCoefficientLossBackward"
    assert type(operators.grad_fn).__name__ != "ConstantCoefficientLossBackward"
    torch.testing.assert_close(closed_form, operators, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(operators)
    (expected,) = torch.autograd.grad(operators, logits, upstream)
    (actual,) = torch.autograd.grad(closed_form, logits, upstream)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_closed_form_gradient_refuses_to_be_differentiated_again() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    loss = ParametricLoss(3)(logits, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(RuntimeError, match=r"cannot be differentiated again \(create_graph=True\)"):
        torch.autograd.grad(loss, logits, create_graph=True)


def test_closed_form_loss_of_bfloat16_logits_is_computed_in_float32() -> None:
    logits = torch.randn(6, 3).bfloat16().requires_grad_()
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    weight, bias = torch.eye(3) + 0.1 * torch.randn(3, 3), 0.1 * torch.randn(3)
    loss = ParametricLoss(3)(logits, target, weight, bias)
    (grad,) = torch.autograd.grad(loss, logits)
    as_float = logits.detach().float().requires_grad_()
    expected = ParametricLoss(3)(as_float, target, weight.requires_grad_(), bias)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, as_float)[0].bfloat16())


def test_parametric_loss_refuses_bad_targets_and_shapes() -> None:
    loss = ParametricLoss(3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), got values from 0 to 3"):
        loss(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"from -1"):
        loss(torch.randn(2, 3), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"logits must have shape \(batch, 3\)"):
        loss(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class indices"):
        loss(torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="ce_weight must be a number in"):
        ParametricLoss(3, ce_weight=1.5)


@pytest.mark.parametrize("coefficients", ["full", "tied"])
def test_untrained_teacher_gives_identity_coefficients_for_any_state(coefficients) -> None:
    teacher = LossTeacher(num_classes=4, coefficients=coefficients)
    for _ in range(3):
        weight, bias = teacher(torch.randn(len(TEACHER_FEATURES)))
        torch.testing.assert_close(weight, torch.eye(4))
        torch.testing.assert_close(bias, torch.zeros(4))


def test_tied_teacher_sets_one_diagonal_and_one_off_diagonal_value() -> None:
    torch.manual_seed(0)
    teacher = LossTeacher(num_classes=4, coefficients="tied")
    with torch.no_grad():
        teacher.head.weight.normal_()
    weights, biases = teacher(torch.rand(3, len(TEACHER_FEATURES)))
    off_diagonal = ~torch.eye(4, dtype=torch.bool)
    for weight, bias in zip(weights, biases, strict=True):
        assert torch.unique(weight.diagonal()).numel() == 1
        assert torch.unique(weight[off_diagonal]).numel() == 1
        assert weight[0, 0] != weight[0, 1] and torch.unique(bias).numel() == 4
    with pytest.raises(ValueError, match="coefficients must be 'full' or 'tied', got 'diagonal'"):
        LossTeacher(num_classes=4, coefficients="diagonal")  # type: ignore[arg-type]


@pytest.mark.parametrize("coefficients", ["full", "tied"])
def test_teacher_sets_each_state_of_a_batch_as_it_sets_that_state_alone(coefficients) -> None:
    torch.manual_seed(0)
    teacher = LossTeacher(num_classes=4, coefficients=coefficients)
    with torch.no_grad():
        teacher.head.weight.normal_()  # away from the identity it starts at
    states = teacher_features(torch.rand(6), torch.rand(4), torch.rand(4))
    weights, biases = teacher(states)
    assert weights.shape == (6, 4, 4) and biases.shape == (6, 4)
    for state, weight, bias in zip(states, weights, biases, strict=True):
        alone = teacher(state)
        torch.testing.assert_close(weight, alone[0])
        torch.testing.assert_close(bias, alone[1])
    row = teacher_features(float(states[2, 0]), *states[2, 1:].split(4))
    torch.testing.assert_close(row, states[2])


def test_teacher_round_trips_through_the_registry(tmp_path) -> None:
    teacher = LossTeacher(num_classes=3, hidden_size=5, ce_weight=0.25)
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(torch.randn_like(param))
    teacher.save_pretrained(tmp_path / "t")
    loaded = LossTeacher.from_pretrained(tmp_path / "t")
    features = torch.randn(len(TEACHER_FEATURES))
    for a, b in zip(teacher(features), loaded(features), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    callback = LossTeacherCallback(pretrained=str(tmp_path / "t"))
    assert callback.teacher.loss.ce_weight == 0.25
    with pytest.raises(ValueError, match=r"ce_weight=0.25 \(given 0.5\)"):
        LossTeacherCallback(pretrained=str(tmp_path / "t"), ce_weight=0.5)
    with pytest.raises(ValueError, match=r"coefficients='tied' \(given 'full'\)"):
        LossTeacherCallback(pretrained=str(tmp_path / "t"), coefficients="full")
    assert LossTeacherCallback(pretrained="teacher-mnist").teacher.coefficients == "full"


UNTRAINED_BASE = torch.tensor([1.0, 0.0])  # W_0 of a fresh (tied) teacher: diagonal, off-diagonal

STUDENTS = {  # a student and the shape of its inputs; the CNN's reads them by `DataConvolutions`
    "mlp": (lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), (4,)),
    "cnn": (
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)),
        (1, 4, 4),
    ),
}


@pytest.mark.parametrize("coefficients", ["full", "tied"])
@pytest.mark.parametrize("architecture", list(STUDENTS))
@pytest.mark.parametrize("inner", [SGD(lr=0.5, momentum=0.9), Adam(lr=0.05)], ids=["sgd", "adam"])
def test_teacher_hypergradient_matches_finite_differences(
    inner, architecture, coefficients
) -> None:
    torch.manual_seed(0)
    network, input_shape = STUDENTS[architecture]
    student = network().double()
    forward = student_forward(student)
    teacher = LossTeacher(num_classes=3, hidden_size=4, ce_weight=0.2, coefficients=coefficients)
    teacher = teacher.double()
    with torch.no_grad():  # away from the zero-initialised output layer
        for param in teacher.parameters():
            param.add_(0.3 * torch.randn_like(param))
    params = {name: p.detach() for name, p in student.named_parameters()}
    batches = [
        (torch.randn(10, *input_shape, dtype=torch.float64), torch.randint(0, 3, (10,)))
        for _ in range(4)
    ]
    dev_x = torch.randn(20, *input_shape, dtype=torch.float64)
    dev_y = torch.randint(0, 3, (20,))
    features = torch.rand(4, len(TEACHER_FEATURES), dtype=torch.float64)

    def run():
        def loss_fn(p, k, batch):
            logits = forward(p, {}, batch[0])
            return teacher.taught_loss(logits, batch[1], features[k])

        def objective(p):
            return dev_objective(forward(p, {}, dev_x), dev_y, "cross_entropy", 50.0)

        return hypergradient(
            loss_fn,
            objective,
            params,
            inner.init_state(params),
            inner,
            batches,
            list(teacher.parameters()),
        )

    grads = run().grads
    direction = [torch.randn_like(p) for p in teacher.parameters()]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
    eps = 1e-6

    def shifted(sign: float) -> float:
        with torch.no_grad():
            for param, d in zip(teacher.parameters(), direction, strict=True):
                param.add_(sign * eps * d)
        value = float(run().objective)
        with torch.no_grad():
            for param, d in zip(teacher.parameters(), direction, strict=True):
                param.sub_(sign * eps * d)
        return value

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    assert abs(analytic) > 1e-4
    assert abs(analytic - numeric) / abs(numeric) < 1e-4


@pytest.mark.parametrize("kind", ["cross_entropy", "smooth_error"])
def test_dev_objective_terms_sum_to_the_objective_over_all_batches(kind) -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).double()
    params = {name: p.detach() for name, p in student.named_parameters()}
    buffers = {name: b.detach() for name, b in student.named_buffers()}
    x, y = torch.randn(23, 4, dtype=torch.float64), torch.randint(0, 3, (23,))
    dev = list(zip(x.split(10), y.split(10), strict=True))  # batches of 10, 10 and 3
    terms = dev_objective_fn(student, buffers, dev, kind, 5.0)
    student.eval()
    whole = dev_objective(functional_call(student, (params, buffers), (x,)), y, kind, 5.0)
    student.train()
    student[2].eval()  # a frozen part
    assert len(terms) == 3
    torch.testing.assert_close(sum(term(params) for term in terms), whole)
    # each term runs the student in evaluation mode and restores every part's mode
    assert [module.training for module in student.modules()] == [True, True, True, False]


def test_dev_batches_are_joined_up_to_the_term_size_in_order() -> None:
    sizes = [128, 128, 256, 100, 600, 50]
    x, y = torch.randn(sum(sizes), 4), torch.randint(0, 3, (sum(sizes),))
    batches = list(zip(x.split(sizes), y.split(sizes), strict=True))
    batches.insert(4, ({"x": torch.randn(8, 4)}, torch.zeros(8, dtype=torch.long)))  # no tensor
    batches.append((torch.randn(30, 5), torch.zeros(30, dtype=torch.long)))  # another shape
    joined = joined_dev_batches(batches)
    assert [len(target) for _, target in joined] == [DEV_JOIN_SAMPLES, 100, 8, 600, 50, 30]
    assert torch.equal(joined[0][0], x[:512]) and torch.equal(joined[0][1], y[:512])
    assert joined[2][0] is batches[4][0] and joined[3][0] is batches[5][0]
    smaller = joined_dev_batches(batches, max_samples=256)
    assert [len(target) for _, target in smaller] == [256, 256, 100, 8, 600, 50, 30]
    kept = joined_dev_batches(batches, max_samples=0)
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(kept, batches, strict=True))


@pytest.mark.parametrize(("join", "sizes"), [(DEV_JOIN_SAMPLES, [24]), (16, [16, 8]), (0, [8] * 3)])
def test_callback_joins_its_dev_batches_as_told_for_the_objective_only(join, sizes) -> None:
    teacher = LossTeacherCallback(num_classes=3, dev_batches=3, dev_join_samples=join)
    trainer = quiet_trainer(max_steps=1, callbacks=[teacher], num_sanity_val_steps=0)
    trainer.fit(TinyTaughtClassifier(), TinyDataModule())
    assert [len(target) for _, target in teacher._dev_joined] == sizes
    assert [len(target) for _, target in teacher._dev] == [8] * 3  # the features': as loaded


def test_cnn_student_runs_channels_last_and_computes_what_the_default_layout_does() -> None:
    torch.manual_seed(0)
    student = student_network("cnn")
    default_layout = copy.deepcopy(student).to(memory_format=torch.contiguous_format)
    images = torch.randn(4, 1, 28, 28)
    assert student[0](images).is_contiguous(memory_format=torch.channels_last)
    assert default_layout[0](images).is_contiguous()
    torch.testing.assert_close(student(images), default_layout(images))


@pytest.mark.parametrize("tied", [False, True])
def test_student_forward_uses_the_given_tensors_for_every_use_of_a_tied_weight(tied) -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    if tied:
        student[2].weight = student[0].weight  # one tensor under two names
    params = {name: p.detach() + 0.5 for name, p in student.named_parameters()}
    expected = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    with torch.no_grad():
        for name, _ in student.named_parameters(remove_duplicate=False):
            canonical = "0.weight" if tied and name == "2.weight" else name
            expected.get_parameter(name).copy_(params[canonical])
    x = torch.randn(5, 4)
    torch.testing.assert_close(student_forward(student)(params, {}, x), expected(x))


class DevCrossEntropy(Callback):
    """Records, at every teacher update, the logged dev objective and the real student's."""

    def __init__(self) -> None:
        self.pairs: list[tuple[float, float]] = []
        self.step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        teacher = pl_module._loss_teacher
        stepped, self.step = trainer.global_step != self.step, trainer.global_step
        if not stepped or (
            trainer.global_step % teacher.update_every_n_steps
            or "teacher/dev_objective" not in trainer.callback_metrics
        ):
            return
        with torch.no_grad():
            pl_module.eval()
            logits = torch.cat([pl_module(x) for x, _ in teacher._dev])
            pl_module.train()
        real = F.cross_entropy(logits, torch.cat([y for _, y in teacher._dev]))
        self.pairs.append((float(trainer.callback_metrics["teacher/dev_objective"]), float(real)))


@pytest.mark.parametrize(
    ("optimizer", "lr", "accumulate"),
    [("sgd", 0.1, 1), ("momentum", 0.1, 1), ("adam", 0.01, 1), ("momentum", 0.1, 2)],
)
def test_replay_reproduces_the_students_real_updates(optimizer, lr, accumulate) -> None:
    # The dev objective after replaying the last unroll_steps updates is the real student's.
    seed_everything(0)
    model = TinyTaughtClassifier(optimizer, lr)
    teacher = LossTeacherCallback(
        num_classes=3, unroll_steps=2, update_every_n_steps=2, teacher_lr=0.01
    )
    check = DevCrossEntropy()
    trainer = quiet_trainer(
        max_epochs=2,
        callbacks=[teacher, check],
        accumulate_grad_batches=accumulate,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, TinyDataModule())
    assert len(check.pairs) == 8 // accumulate
    for logged, real in check.pairs:
        assert logged == pytest.approx(real, rel=1e-5)
    assert not torch.equal(teacher.teacher.base_weight, UNTRAINED_BASE)  # the teacher learned


@pytest.mark.parametrize("table_entries", [2**20, 24, 1])
def test_each_step_is_taught_with_the_coefficients_of_its_own_state(
    table_entries, monkeypatch
) -> None:
    # The callback sets the coefficients of all the steps until a refresh in one teacher pass,
    # or in blocks of as many steps as fit in COEFFICIENT_TABLE_ENTRIES (24: two steps of 3
    # classes, so a block and a part-block between refreshes every 3 steps), or one at a time.
    monkeypatch.setattr(callback_module, "COEFFICIENT_TABLE_ENTRIES", table_entries)
    seen = []

    class Recording(TinyTaughtClassifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            teacher = self._loss_teacher
            state = teacher.features(self.trainer.global_step)
            seen.append((teacher.teacher.taught_loss(logits, y, state), state[0]))
            return self.taught_loss(logits, y)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen[-1] = (outputs["loss"], *seen[-1])

    seed_everything(0)
    callback = LossTeacherCallback(
        num_classes=3, frozen=True, unroll_steps=1, update_every_n_steps=3
    )
    with torch.no_grad():
        callback.teacher.head.weight.normal_()  # coefficients that change with the progress
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], num_sanity_val_steps=0)
    trainer.fit(Recording(), TinyDataModule())
    assert len(seen) == 16 and len({float(progress) for _, _, progress in seen}) == 16
    for taught, expected, _ in seen:
        torch.testing.assert_close(taught.detach(), expected.detach())


class ParametricLossClassifier(TinyTaughtClassifier):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return ParametricLoss(3)(self(x), y)


def test_frozen_untrained_teacher_trains_exactly_as_the_initial_parametric_loss() -> None:
    final = []
    for model_class, callbacks in (
        (TinyTaughtClassifier, [LossTeacherCallback(num_classes=3, frozen=True)]),
        (ParametricLossClassifier, []),
    ):
        seed_everything(0)
        model = model_class("momentum", 0.1)
        quiet_trainer(max_epochs=2, callbacks=callbacks, num_sanity_val_steps=0).fit(
            model, TinyDataModule()
        )
        final.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(final[0], final[1], rtol=0, atol=0)


class StopAfterFirstEpoch(Callback):
    """An interruption: the run is planned for more epochs (the progress feature knows it)."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def fit_taught(tmp_path, max_epochs, ckpt_path=None, precision="32-true", interrupt=False):
    seed_everything(0)
    model = TinyTaughtClassifier("adam", 0.01)
    teacher = LossTeacherCallback(
        num_classes=3, unroll_steps=4, update_every_n_steps=5, teacher_lr=0.05
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}")
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        enable_checkpointing=True,
        callbacks=[teacher, checkpoint, *([StopAfterFirstEpoch()] if interrupt else [])],
        num_sanity_val_steps=0,
        precision=precision,
    )
    trainer.fit(model, TinyDataModule(), ckpt_path=ckpt_path)
    return model, teacher


def test_resume_mid_window_continues_identically(tmp_path) -> None:
    # Updates at steps 5, 10, 15 replay [1, 5), [6, 10), [11, 15): the epoch-0 checkpoint (step 8)
    # falls inside a window, whose snapshot and batches travel in the callback's state.
    model_a, teacher_a = fit_taught(tmp_path / "a", 2)
    fit_taught(tmp_path / "b", 2, interrupt=True)
    model_c, teacher_c = fit_taught(tmp_path / "c", 2, tmp_path / "b" / "epoch=0.ckpt")
    for expected, actual in zip(
        [*model_a.parameters(), *teacher_a.teacher.parameters()],
        [*model_c.parameters(), *teacher_c.teacher.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert not torch.equal(teacher_a.teacher.base_weight, UNTRAINED_BASE)


def test_bf16_autocast_trains_and_updates_the_teacher(tmp_path) -> None:
    model, teacher = fit_taught(tmp_path, 1, precision="bf16-mixed")
    assert not torch.equal(teacher.teacher.base_weight, UNTRAINED_BASE)
    assert all(torch.isfinite(p).all() for p in model.parameters())


class TargetsOutOfRange(TinyDataModule):
    def val_dataloader(self):
        x, y = self.dataset.tensors
        return DataLoader(TensorDataset(x, y + 3), batch_size=8)


class NoValidation(TinyDataModule):
    val_dataloader = LightningModule.val_dataloader  # not defined, as in the base class


def test_bad_input_is_refused_before_training() -> None:
    with pytest.raises(ValueError, match="unroll_steps must be a positive integer, got 0"):
        LossTeacherCallback(num_classes=3, unroll_steps=0)
    with pytest.raises(
        ValueError, match=r"unroll_steps \(8\) must be at most update_every_n_steps \(4\)"
    ):
        LossTeacherCallback(num_classes=3, unroll_steps=8, update_every_n_steps=4)
    with pytest.raises(ValueError, match="num_classes is required"):
        LossTeacherCallback()
    with pytest.raises(ValueError, match="dev_objective must be"):
        LossTeacherCallback(num_classes=3, dev_objective="accuracy")
    with pytest.raises(ValueError, match="dev_join_samples must be a non-negative integer"):
        LossTeacherCallback(num_classes=3, dev_join_samples=-1)
    cases = [
        (TinyClassifier(), TinyDataModule(), TypeError, "inherits LossTeacherMixin"),
        (TinyTaughtClassifier(), NoValidation(), ValueError, "needs validation data"),
        (TinyTaughtClassifier(), TargetsOutOfRange(), ValueError, r"class indices in \[0, 3\)"),
        (TinyTaughtClassifier(), TinyDataModule(), ValueError, "num_classes=5"),
    ]
    for model, data, error, message in cases:
        num_classes = 5 if "num_classes" in message else 3
        trainer = quiet_trainer(
            max_epochs=1, callbacks=[LossTeacherCallback(num_classes=num_classes)]
        )
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(error, match=message):
            trainer.fit(model, data)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_taught_loss_without_the_callback_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="needs a LossTeacherCallback"):
        TinyTaughtClassifier().taught_loss(torch.randn(2, 3), torch.tensor([0, 1]))


def test_unsupported_student_optimizer_is_refused() -> None:
    class RMSpropStudent(TinyTaughtClassifier):
        def configure_optimizers(self):
            return torch.optim.RMSprop(self.parameters())

    trainer = quiet_trainer(max_epochs=1, callbacks=[LossTeacherCallback(num_classes=3)])
    with pytest.raises(TypeError, match="got RMSprop"):
        trainer.fit(RMSpropStudent(), TinyDataModule())


def test_training_features_average_every_batch_in_order_with_bounded_memory(monkeypatch) -> None:
    monkeypatch.setattr(callback_module, "PENDING_TRAIN_BATCHES", 3)
    seen, pending = [], []

    class Recording(TinyTaughtClassifier):
        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            seen.append(classification_summary(logits, y))
            return self.taught_loss(logits, y)

    teacher = LossTeacherCallback(num_classes=3, frozen=True, update_every_n_steps=50)

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pending.append(len(teacher._train_outputs))

    seed_everything(0)
    trainer = quiet_trainer(max_epochs=2, callbacks=[teacher, Watch()], num_sanity_val_steps=0)
    trainer.fit(Recording(), TinyDataModule())  # 16 steps, no refresh after the first
    assert len(seen) == 16 and max(pending) == 2  # summarised 3 at a time
    teacher._summarise_train_outputs()
    expected = ExponentialMovingAverage(teacher.train_features.decay)
    for summary in seen:
        expected.update(summary)
    torch.testing.assert_close(teacher.train_features.value, expected.value)


def test_the_same_callback_teaches_a_new_student_with_fresh_features() -> None:
    teacher = LossTeacherCallback(num_classes=3, unroll_steps=2, update_every_n_steps=2)
    first = TinyTaughtClassifier()
    quiet_trainer(max_epochs=1, callbacks=[teacher], num_sanity_val_steps=0).fit(
        first, TinyDataModule()
    )
    learned = [p.detach().clone() for p in teacher.teacher.parameters()]
    second = TinyTaughtClassifier()
    with torch.no_grad():
        second.net[0].weight.mul_(3.0)  # a student in another state than the first one ended in
    x, y = TinyDataModule().dataset.tensors
    fresh_dev = classification_summary(second(x), y)
    seen = {}

    class Look(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["dev"] = teacher._summaries["dev"].clone()
            seen["teacher"] = [p.detach().clone() for p in teacher.teacher.parameters()]

    quiet_trainer(max_epochs=1, callbacks=[teacher, Look()], num_sanity_val_steps=0).fit(
        second, TinyDataModule()
    )
    torch.testing.assert_close(seen["dev"], fresh_dev)
    for carried, expected in zip(seen["teacher"], learned, strict=True):
        assert torch.equal(carried, expected)
