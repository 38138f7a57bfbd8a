"""Architectures registered by name, checkpoints and model loading."""

from medlrp.models.checkpoint import LoadedModel, load_model, save_checkpoint
from medlrp.models.preprocessing import Preprocessing

__all__ = ["LoadedModel", "Preprocessing", "load_model", "save_checkpoint"]
