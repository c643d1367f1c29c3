"""Metrics (torchmetrics), the embedders they are given, and their pure maths in `functional`.

The embedders backed by frechet-audio-distance (`pann`, `vggish`, `laion_clap`, `encodec`) are imported from their
modules, so that package is loaded only when one of them is chosen.
"""

from lightning_modules.metrics.clap import ClapEmbedder
from lightning_modules.metrics.clap_score import CLAPScore
from lightning_modules.metrics.embedder import AudioEmbedder, AudioTagger, TextAudioEmbedder
from lightning_modules.metrics.fad import FrechetAudioDistance
from lightning_modules.metrics.feature_tagger import FeatureTagger
from lightning_modules.metrics.kad import KernelAudioDistance
from lightning_modules.metrics.kl import TagKLDivergence
from lightning_modules.metrics.memorization import Memorization
from lightning_modules.metrics.per_item import PerItemMetric
from lightning_modules.metrics.recognition import Recognition
from lightning_modules.metrics.zero_shot import ZeroShotTagger

__all__ = ["AudioEmbedder", "AudioTagger", "CLAPScore", "ClapEmbedder", "FeatureTagger", "FrechetAudioDistance",
           "KernelAudioDistance", "Memorization", "PerItemMetric", "Recognition", "TagKLDivergence",
           "TextAudioEmbedder", "ZeroShotTagger"]
