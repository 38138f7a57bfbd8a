"""Training: the plain loop with a ``loss_fn(model, batch) -> (loss, parts)`` seam, and folder training.

Explanation-guided training plugs a different ``loss_fn`` into :func:`fit` / :func:`train_on_folder`:
:class:`GuidedLoss` (see :mod:`medlrp.train.guided`) with the explanation losses of
:mod:`medlrp.train.guided_losses`, and :mod:`medlrp.train.guided_dist` for ``torchrun``.
"""

from medlrp.train.folder import (
    FolderSplits,
    TrainedModel,
    build_model,
    default_arch,
    load_splits,
    train_on_folder,
    train_on_splits,
)
from medlrp.train.guided import GuidedLoss
from medlrp.train.guided_losses import (
    BackgroundRelevanceLoss,
    GuidanceLoss,
    ReferenceLoss,
    RelevanceMassLoss,
    RelevanceOutsideLoss,
    masked_reference,
)
from medlrp.train.loop import EpochLog, History, TrainConfig, accuracy, fit, predict
from medlrp.train.losses import LossFn, cross_entropy_loss
from medlrp.train.tensors import batches_per_epoch, load_all, minibatches, subset

__all__ = [
    "BackgroundRelevanceLoss",
    "GuidanceLoss",
    "GuidedLoss",
    "ReferenceLoss",
    "RelevanceMassLoss",
    "RelevanceOutsideLoss",
    "EpochLog",
    "FolderSplits",
    "History",
    "LossFn",
    "TrainConfig",
    "TrainedModel",
    "accuracy",
    "build_model",
    "cross_entropy_loss",
    "default_arch",
    "fit",
    "load_all",
    "load_splits",
    "masked_reference",
    "minibatches",
    "batches_per_epoch",
    "predict",
    "subset",
    "train_on_folder",
    "train_on_splits",
]
