"""Text-to-music models behind one interface, `TextToMusicModel`, and their backends: the built-in toy model, the
diffusers AudioLDM, MusicLDM, AudioLDM2 and Stable Audio Open, and transformers' MusicGen."""

from lightning_modules.models.audioldm import AudioLDM
from lightning_modules.models.audioldm2 import AudioLDM2
from lightning_modules.models.base import PARAMETER_GROUPS, Batch, Prediction, TextToMusicModel
from lightning_modules.models.musicgen import MusicGen
from lightning_modules.models.musicldm import MusicLDM
from lightning_modules.models.stable_audio import StableAudioOpen
from lightning_modules.models.toy import ToyArchitecture, ToyTextToMusic
from lightning_modules.models.toy_musicgen import ToyMusicGen

__all__ = ["PARAMETER_GROUPS", "AudioLDM", "AudioLDM2", "Batch", "MusicGen", "MusicLDM", "Prediction",
           "StableAudioOpen", "TextToMusicModel", "ToyArchitecture", "ToyMusicGen",
           "ToyTextToMusic"]
