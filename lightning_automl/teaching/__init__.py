"""Learned loss teacher (L2T-DLF, Wu et al., NeurIPS 2018).

- `ParametricLoss`: the loss family ``-sigmoid((log p)^T W e_y + b_y)`` mixed with cross-entropy.
- `LossTeacher`: the network that sets its coefficients from the student's state.
- `LossTeacherMixin`: gives a `LightningModule` ``taught_loss(logits, target)``.
- `LossTeacherCallback`: trains the teacher online by exact hypergradients through the
  student's updates, or applies a frozen (pretrained) one.
- `LossTeacherTrainModule`: the episodic protocol, a teacher trained across student runs.
"""

from lightning_automl.teaching.callback import LossTeacherCallback
from lightning_automl.teaching.mixin import LossTeacherMixin
from lightning_automl.teaching.parametric_loss import ParametricLoss, Reduction
from lightning_automl.teaching.replay import DevObjective, dev_objective
from lightning_automl.teaching.teacher import (
    TEACHER_FEATURES,
    Coefficients,
    LossTeacher,
    teacher_features,
)
from lightning_automl.teaching.train_module import LossTeacherTrainModule

__all__ = [
    "TEACHER_FEATURES",
    "Coefficients",
    "DevObjective",
    "LossTeacher",
    "LossTeacherCallback",
    "LossTeacherMixin",
    "LossTeacherTrainModule",
    "ParametricLoss",
    "Reduction",
    "dev_objective",
    "teacher_features",
]
