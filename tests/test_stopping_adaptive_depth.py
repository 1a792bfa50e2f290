from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_automl.stopping.adaptive_depth import AdaptiveDepthMixin, StopSchedule
from lightning_automl.stopping.policy import StopPolicy
from lightning_automl.stopping.stop_time import oracle_loss


class FullDepthNet(AdaptiveDepthMixin, nn.Module):
    """T tanh layers on 3 features; the prediction after each layer is its hidden state."""

    num_steps = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(3, 3) for _ in range(self.num_steps))

    def forward_steps(self, x):
        steps = []
        for layer in self.layers:
            x = torch.tanh(layer(x))
            steps.append(x)
        return steps

    def step_loss(self, prediction, target):
        return (prediction - target).pow(2).mean(dim=1)


class SteppedNet(FullDepthNet):
    """The same network, also computable one step at a time; counts the rows it computes."""

    rows_computed = 0

    def init_state(self, x):
        return {"hidden": x}

    def step(self, state, t):
        hidden = torch.tanh(self.layers[t](state["hidden"]))
        self.rows_computed += hidden.size(0)
        return {"hidden": hidden}, hidden


class SignPolicy(nn.Module):
    """Stops a sample once the first feature of its prediction is positive."""

    def forward(self, prediction, step, summary=None):
        return torch.where(prediction[:, 0] > 0, 10.0, -10.0)

    def step_logits(self, predictions, summary=None):
        return torch.where(predictions[..., 0] > 0, 10.0, -10.0)


@pytest.fixture
def x():
    return torch.randn(64, 3, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("net_class", [FullDepthNet, SteppedNet])
def test_threshold_one_never_stops_and_equals_the_full_depth_output(net_class, x):
    net = net_class()
    outputs, stop_steps = net.predict_adaptive(x, StopPolicy(prediction_dim=3), threshold=1.0)
    assert torch.equal(outputs, net.stacked_steps(x)[-1])
    assert (stop_steps == net.num_steps - 1).all()


def test_threshold_zero_stops_every_sample_after_the_first_step(x):
    net = SteppedNet()
    outputs, stop_steps = net.predict_adaptive(x, StopPolicy(prediction_dim=3), threshold=0.0)
    assert torch.equal(outputs, net.stacked_steps(x)[0])
    assert (stop_steps == 0).all()
    assert net.rows_computed == len(x)  # the later steps were not computed


def test_samples_stop_at_different_steps_and_stopped_ones_are_not_computed(x):
    net = SteppedNet()
    outputs, stop_steps = net.predict_adaptive(x, SignPolicy())
    steps = net.stacked_steps(x)  # (T, B, 3)
    assert torch.equal(outputs, steps[stop_steps, torch.arange(len(x))])
    assert stop_steps.unique().numel() > 1
    assert net.rows_computed == int((stop_steps + 1).sum()) < len(x) * net.num_steps
    # without init_state/step the same stops are chosen from the full-depth predictions
    full_outputs, full_stop_steps = FullDepthNet().predict_adaptive(x, SignPolicy())
    assert torch.equal(full_outputs, outputs) and torch.equal(full_stop_steps, stop_steps)


def test_the_input_summary_follows_the_shrinking_batch(x):
    class Summarised(SteppedNet):
        def stop_summary(self, x):
            return x.flip(1)

    class FullSummarised(FullDepthNet):
        def stop_summary(self, x):
            return x.flip(1)

    torch.manual_seed(2)
    policy = StopPolicy(prediction_dim=3, summary_dim=3, hidden_dims=(8,))
    with torch.no_grad():  # spread the logits around 0 so that samples stop at different steps
        policy.mlp[-1].weight.mul_(20)
        logits = policy.step_logits(FullSummarised().stacked_steps(x), x.flip(1))
        policy.mlp[-1].bias.sub_(logits.median())
    outputs, stop_steps = Summarised().predict_adaptive(x, policy)
    assert stop_steps.unique().numel() > 1
    full_outputs, full_stop_steps = FullSummarised().predict_adaptive(x, policy)
    torch.testing.assert_close(outputs, full_outputs)
    assert torch.equal(stop_steps, full_stop_steps)


def test_stage_one_trains_the_model_on_the_oracle_loss(x):
    net, target = FullDepthNet(), torch.zeros(64, 3)
    loss = net.stage_one_loss(x, target, beta=0.5)
    expected = oracle_loss(net.step_losses(net.stacked_steps(x), target), 0.5)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_stage_two_trains_the_policy_and_never_reaches_the_frozen_model(x):
    net, policy = FullDepthNet(), StopPolicy(prediction_dim=3, hidden_dims=(8,))
    net.stage_two_loss(x, torch.zeros(64, 3), beta=0.5, policy=policy).backward()
    assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in policy.parameters())


def test_step_cost_adds_a_cost_per_step_to_the_losses_the_oracle_sees(x):
    net, target = FullDepthNet(), torch.zeros(64, 3)
    losses = net.step_losses(net.stacked_steps(x), target)
    costs = 0.3 * torch.arange(4.0)[:, None]
    expected = oracle_loss(losses + costs, 0.5)
    torch.testing.assert_close(net.stage_one_loss(x, target, beta=0.5, step_cost=0.3), expected)
    with pytest.raises(ValueError, match="step_cost must be >= 0"):
        net.stage_one_loss(x, target, beta=0.5, step_cost=-1.0)


class UnitNet(FullDepthNet):
    """Each sample's losses are in units of its target's energy."""

    def loss_unit(self, x, target):
        return target.square().sum(dim=1)


def test_a_per_sample_loss_unit_scales_the_temperature_and_the_step_cost(x):
    net, target = UnitNet(), torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    losses = net.step_losses(net.stacked_steps(x), target)
    unit = target.square().sum(dim=1)
    costs = 0.3 * torch.arange(4.0)[:, None] * unit
    expected = oracle_loss(losses + costs, 0.5, unit)
    torch.testing.assert_close(net.stage_one_loss(x, target, beta=0.5, step_cost=0.3), expected)


class CostUnitNet(UnitNet):
    """The step cost is in units of each sample's first input instead (shifted positive)."""

    def step_cost_unit(self, x, target):
        return x[:, 0].abs() + 1


def test_a_step_cost_unit_of_its_own_scales_the_step_cost_only(x):
    net, target = CostUnitNet(), torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    losses = net.step_losses(net.stacked_steps(x), target)
    unit, cost_unit = target.square().sum(dim=1), x[:, 0].abs() + 1
    costs = 0.3 * torch.arange(4.0)[:, None] * cost_unit
    expected = oracle_loss(losses + costs, 0.5, unit)
    torch.testing.assert_close(net.stage_one_loss(x, target, beta=0.5, step_cost=0.3), expected)
    without_cost = oracle_loss(losses, 0.5, unit)
    torch.testing.assert_close(net.stage_one_loss(x, target, beta=0.5), without_cost)


def test_a_bad_step_cost_unit_is_refused_when_there_is_a_step_cost(x):
    class BadCostUnit(FullDepthNet):
        def step_cost_unit(self, x, target):
            return torch.zeros(64)

    net = BadCostUnit()
    net.stage_one_loss(x, torch.zeros(64, 3), beta=1.0)  # no step cost: the unit is not used
    message = r"step_cost_unit must return positive, finite units, got \[0.0, 0.0, 0.0\]"
    with pytest.raises(ValueError, match=message):
        net.stage_one_loss(x, torch.zeros(64, 3), beta=1.0, step_cost=0.1)


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        (torch.ones(3), r"loss_unit must return one unit per sample, shape \(64,\), got \(3,\)"),
        (torch.zeros(64), r"loss_unit must return positive, finite units, got \[0.0, 0.0, 0.0\]"),
        (torch.full((64,), float("nan")), "loss_unit must return positive, finite units"),
    ],
)
def test_a_bad_loss_unit_is_refused(x, unit, message):
    class BadUnit(FullDepthNet):
        def loss_unit(self, x, target):
            return unit

    with pytest.raises(ValueError, match=message):
        BadUnit().stage_one_loss(x, torch.zeros(64, 3), beta=1.0)


def test_adaptive_depth_loss_uses_the_schedule_of_the_stage(x):
    net, target = FullDepthNet(), torch.zeros(64, 3)
    policy = StopPolicy(prediction_dim=3, hidden_dims=(8,))
    net.stop_schedule = StopSchedule(2, beta=1.0, policy=policy, imitation_beta=0.1, step_cost=0.2)
    expected = net.stage_two_loss(x, target, 0.1, policy, step_cost=0.2)
    torch.testing.assert_close(net.adaptive_depth_loss(x, target), expected)
    net.stop_schedule.stage = 3
    expected = net.stage_three_loss(x, target, 1.0, policy, step_cost=0.2)
    torch.testing.assert_close(net.adaptive_depth_loss(x, target), expected)


def test_bad_models_are_refused(x):
    class OneStep(FullDepthNet):
        def forward_steps(self, x):
            return [x]

    class Ragged(FullDepthNet):
        def forward_steps(self, x):
            return [x, x[:, :2]]

    class BatchMeanLoss(FullDepthNet):
        def step_loss(self, prediction, target):
            return (prediction - target).pow(2).mean()

    with pytest.raises(ValueError, match="at least 2 per-step predictions, got 1"):
        OneStep().stacked_steps(x)
    with pytest.raises(ValueError, match="different shapes"):
        Ragged().stacked_steps(x)
    with pytest.raises(ValueError, match=r"one loss per sample, shape \(B,\) = \(64,\), got \(\)"):
        BatchMeanLoss().stage_one_loss(x, torch.zeros(64, 3), beta=1.0)
    with pytest.raises(ValueError, match="threshold must be in"):
        FullDepthNet().predict_adaptive(x, SignPolicy(), threshold=1.5)


def test_forward_steps_defaults_to_init_state_and_step(x):
    class StepsOnly(SteppedNet):
        forward_steps = AdaptiveDepthMixin.forward_steps

    torch.testing.assert_close(
        torch.stack(StepsOnly().forward_steps(x)), SteppedNet().stacked_steps(x)
    )
    with pytest.raises(NotImplementedError, match="init_state"):
        AdaptiveDepthMixin().forward_steps(x)
