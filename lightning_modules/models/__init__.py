"""Text-to-music models behind one interface, `TextToMusicModel`, and their backends."""

from lightning_modules.models.base import PARAMETER_GROUPS, Batch, Prediction, TextToMusicModel
from lightning_modules.models.toy import ToyArchitecture, ToyTextToMusic

__all__ = ["PARAMETER_GROUPS", "Batch", "Prediction", "TextToMusicModel", "ToyArchitecture", "ToyTextToMusic"]
