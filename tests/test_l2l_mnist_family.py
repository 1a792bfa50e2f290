from __future__ import annotations

import math

import pytest
import torch
from shared_data import SHARED_DATA

from lightning_automl.cli import build_cli
from lightning_automl.data import MNISTDataModule
from lightning_automl.l2l import L2LMetaModule, MNISTMLPFamily

MNIST_DIR = SHARED_DATA / "mnist"


@pytest.fixture(scope="module")
def family() -> MNISTMLPFamily:
    """The paper's family on the real MNIST, read once for the whole module."""
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared dataset folder {MNIST_DIR} is missing")
    return MNISTMLPFamily(data_dir=str(MNIST_DIR))


def test_it_holds_the_60000_training_images_scaled_as_the_datamodule(family):
    assert family.inputs.shape == (60_000, 784) and family.inputs.dtype == torch.float32
    assert family.labels.shape == (60_000,) and set(family.labels.unique().tolist()) == set(
        range(10)
    )
    assert family.inputs.min().item() == pytest.approx(-MNISTDataModule.MEAN / MNISTDataModule.STD)
    assert family.inputs.mean().item() == pytest.approx(0.0, abs=0.01)
    assert family.inputs.std().item() == pytest.approx(1.0, abs=0.01)


def test_defaults_are_the_papers_mlp(family):
    task = family.sample(torch.Generator().manual_seed(0))
    shapes = {name: tuple(value.shape) for name, value in task.initial_params().items()}
    assert shapes == {
        "hidden0.weight": (20, 784),
        "hidden0.bias": (20,),
        "output.weight": (10, 20),
        "output.bias": (10,),
    }
    x, y = task.next_batch()
    assert x.shape == (128, 784) and y.shape == (128,)
    loss = task.loss(task.initial_params(), (x, y))
    assert loss.item() == pytest.approx(math.log(10), abs=0.2)  # near-uniform predictions


def test_unnormalised_pixels_lie_in_the_unit_interval():
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared dataset folder {MNIST_DIR} is missing")
    family = MNISTMLPFamily(
        data_dir=str(MNIST_DIR), hidden=40, depth=2, normalize=False, init_std=0.01
    )
    assert family.inputs.min().item() == 0.0 and family.inputs.max().item() == 1.0
    assert family.init_std == 0.01  # the authors' code's task: passed on to MLPFamily
    shapes = [
        tuple(value.shape) for value in family.sample(torch.Generator()).initial_params().values()
    ]
    assert shapes == [(40, 784), (40,), (40, 40), (40,), (10, 40), (10,)]


def test_missing_files_are_reported_with_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST files not found in .*train-images"):
        MNISTMLPFamily(data_dir=str(tmp_path))


def test_the_recipe_builds_the_papers_setup(repo_root, tmp_path, family):
    cli = build_cli(
        [
            "-c",
            str(repo_root / "recipes" / "l2l" / "mnist.yaml"),
            f"--model.init_args.family.init_args.data_dir={MNIST_DIR}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ],
        run=False,
    )
    module = cli.model
    assert isinstance(module, L2LMetaModule) and isinstance(module.family, MNISTMLPFamily)
    assert (module.family.hidden, module.family.depth) == (20, 1)
    assert (module.family.activation, module.family.batch_size) == ("sigmoid", 128)
    assert (module.horizon, module.unroll, module.meta_lr) == (100, 20, 1e-3)
    assert module.network.output_scale == 0.1 and module.network.preprocess_p == 4.0
