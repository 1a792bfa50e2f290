"""`MNISTMLPFamily`: the paper's MNIST MLP task family, reading the images from a data folder.

References:
    M. Andrychowicz et al. Learning to learn by gradient descent by gradient descent.
    NeurIPS 2016, section 3.2: an MLP with one hidden layer of 20 sigmoid units trained on
    minibatches of 128 MNIST training images, and its variants (40 units, 2 layers, ReLU).
"""

from __future__ import annotations

from lightning_automl.core.tasks import Activation, MLPFamily
from lightning_automl.data.mnist import MNISTDataModule

__all__ = ["MNISTMLPFamily"]


class MNISTMLPFamily(MLPFamily):
    """`MLPFamily` on the 60,000 MNIST training images, built from a path (e.g. by LightningCLI).

    The images are read and scaled as `MNISTDataModule` reads them: pixels in [0, 1],
    standardised with the MNIST mean and standard deviation unless ``normalize`` is off, then
    flattened to 784 features; the classes are the 10 digits.

    Args:
        data_dir: Folder holding the MNIST idx files, as for `MNISTDataModule`.
        hidden: Units per hidden layer (20 in the paper).
        depth: Number of hidden layers (1 in the paper).
        activation: ``"sigmoid"`` (the paper's), ``"relu"`` or ``"tanh"``.
        batch_size: Examples per minibatch (128 in the paper).
        normalize: Standardise the pixels, as `MNISTDataModule` does by default. The authors'
            code keeps them in [0, 1].
        init_std: Standard deviation of a normal init of all weights and biases (the authors'
            code: 0.01); ``None`` for ``nn.Linear``'s uniform init. See `MLPFamily`.
        download: Download the files missing from ``data_dir`` first.
    """

    def __init__(
        self,
        data_dir: str = "data/mnist",
        hidden: int = 20,
        depth: int = 1,
        activation: Activation = "sigmoid",
        batch_size: int = 128,
        normalize: bool = True,
        init_std: float | None = None,
        download: bool = False,
    ) -> None:
        mnist = MNISTDataModule(data_dir=data_dir, download=download, normalize=normalize)
        mnist.prepare_data()
        images, labels, _, _ = mnist.load_tensors()
        super().__init__(
            images,
            labels,
            MNISTDataModule.num_classes,
            hidden,
            depth,
            activation,
            batch_size,
            init_std,
        )
        self.data_dir = data_dir
        self.normalize = normalize
