from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from tiny import quiet_trainer

from lightning_automl.callbacks import SavePretrained
from lightning_automl.core.pretrained import read_pretrained
from lightning_automl.core.tasks import QuadraticFamily
from lightning_automl.l2l import L2LMetaModule

pytestmark = pytest.mark.usefixtures("one_thread")


def module() -> L2LMetaModule:
    return L2LMetaModule(
        QuadraticFamily(dim=3), num_tasks=2, horizon=4, unroll=2, hidden_size=4, num_val_tasks=2
    )


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_saves_the_best_checkpoint_or_the_last_weights_with_a_card(tmp_path, with_checkpoint):
    # "max": the worst validation loss, an early checkpoint, so unlike the final weights
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/final_loss", mode="max")
    final = {}
    keep_final = LambdaCallback(
        on_train_end=lambda trainer, module: final.update(
            copy.deepcopy(module.network.state_dict())
        )
    )
    callbacks = [SavePretrained(str(tmp_path / "l2l-toy"), description="toy"), keep_final]
    trainer = quiet_trainer(
        max_steps=8,
        callbacks=[*callbacks, best] if with_checkpoint else callbacks,
        enable_checkpointing=with_checkpoint,
        limit_val_batches=1,
    )
    learner = module()
    trainer.fit(learner)
    card, weights = read_pretrained(tmp_path / "l2l-toy")
    assert card.method == "l2l" and card.description == "toy" and card.command
    assert "val/final_loss" in card.metrics
    if with_checkpoint:
        expected = torch.load(best.best_model_path, weights_only=True)["state_dict"]
        expected = {k.removeprefix("network."): v for k, v in expected.items()}
        assert card.metrics["best val/final_loss"] == pytest.approx(float(best.best_model_score))
        assert not all(torch.equal(weights[key], final[key]) for key in final)
    else:
        expected = final
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in expected)


def test_a_module_without_save_pretrained_is_refused(tiny_model, tiny_data, tmp_path):
    trainer = quiet_trainer(max_epochs=1, callbacks=[SavePretrained(str(tmp_path / "x"))])
    with pytest.raises(TypeError, match="SavePretrained needs a module with save_pretrained"):
        trainer.fit(tiny_model, tiny_data)


def test_a_fast_dev_run_writes_nothing(tmp_path):
    trainer = quiet_trainer(fast_dev_run=True, callbacks=[SavePretrained(str(tmp_path / "x"))])
    trainer.fit(module())
    assert not list(tmp_path.iterdir())
