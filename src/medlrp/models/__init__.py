"""Architectures registered by name, checkpoints and model loading."""

from medlrp.models import cnn as _cnn  # noqa: F401  (registers cnn1d, cnn2d, cnn3d)
from medlrp.models import recurrent as _recurrent  # noqa: F401  (registers lstm1d)
from medlrp.models import unet as _unet  # noqa: F401  (registers unet2d, unet3d)
from medlrp.models import vit as _vit  # noqa: F401  (registers vit2d, vit3d)
from medlrp.models.checkpoint import LoadedModel, load_model, save_checkpoint
from medlrp.models.preprocessing import Preprocessing

__all__ = ["LoadedModel", "Preprocessing", "load_model", "save_checkpoint"]
