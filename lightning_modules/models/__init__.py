"""Text-to-music models behind one interface, `TextToMusicModel`, and their backends."""

from lightning_modules.models.base import PARAMETER_GROUPS, Batch, TextToMusicModel
from lightning_modules.models.toy import ToyArchitecture, ToyTextToMusic

__all__ = ["PARAMETER_GROUPS", "Batch", "TextToMusicModel", "ToyArchitecture", "ToyTextToMusic"]
