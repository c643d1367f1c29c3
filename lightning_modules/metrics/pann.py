"""`PANNEmbedder` and `PANNTagger`: the AudioSet-trained Cnn14 of PANNs, as the ``frechet-audio-distance`` package
builds and uses it, as a clip-level audio embedder (2048-d, FAD with ``model_name="pann"``) and as an AudioSet tagger
(527 logits). Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio Pattern Recognition",
IEEE/ACM Transactions on Audio, Speech, and Language Processing 28, 2020."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
from torch import Tensor

from lightning_modules.metrics.embedder import AudioEmbedder, AudioTagger
from lightning_modules.metrics.weights import config_for_rate, load_checkpoint, require_file

PANN_URL = "https://zenodo.org/record/3987831/files/{}"
AUDIOSET_CLASSES = 527
CNN14_EMBEDDING_DIM = 2048


class _Cnn14Config(NamedTuple):
    network: str  # class name in frechet_audio_distance.models.pann (`cnn14_networks`)
    checkpoint: str  # file name, as frechet_audio_distance saves it (URL-encoded "=")
    window_size: int
    hop_size: int
    fmax: int


# sample rate -> network, checkpoint and STFT settings, exactly as `FrechetAudioDistance.__get_model` builds them
# (all with mel_bins=64, fmin=50, classes_num=527).
CNN14_CONFIGS: dict[int, _Cnn14Config] = {
    8000: _Cnn14Config("Cnn14_8k", "Cnn14_8k_mAP%3D0.416.pth", 256, 80, 4000),
    16000: _Cnn14Config("Cnn14_16k", "Cnn14_16k_mAP%3D0.438.pth", 512, 160, 8000),
    32000: _Cnn14Config("Cnn14", "Cnn14_mAP%3D0.431.pth", 1024, 320, 16000),
}


def cnn14_networks() -> ModuleType:
    """``frechet_audio_distance.models.pann`` (the Cnn14 classes), loaded without the package's ``__init__``, which
    imports laion_clap, encodec and its FAD code: 10 s on a CPU for two network definitions. The module is loaded
    once, under the private package name ``_fad_models`` (its relative import of ``pytorch_utils`` included); an
    import of ``frechet_audio_distance`` elsewhere is unaffected.

    Raises:
        FileNotFoundError: if ``frechet-audio-distance`` is not installed.
    """
    if "_fad_models.pann" in sys.modules:
        return sys.modules["_fad_models.pann"]
    spec = importlib.util.find_spec("frechet_audio_distance")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PANN's Cnn14 comes from the frechet-audio-distance package, which is not installed "
                                "(pip install frechet-audio-distance).")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    package = importlib.util.spec_from_file_location("_fad_models", folder / "__init__.py",
                                                     submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(package)
    sys.modules["_fad_models"] = module
    package.loader.exec_module(module)
    return importlib.import_module("_fad_models.pann")


def audioset_labels() -> list[str]:
    """The 527 AudioSet class names in the order of PANN's outputs (AudioSet's ``class_labels_indices.csv``).

    Read from the copy ``laion_clap`` (a dependency of ``frechet-audio-distance``) ships as
    ``laion_clap/training/audioset_textmap.npy``, without importing ``laion_clap``.

    Raises:
        FileNotFoundError: if ``laion_clap`` or that file is not installed.
    """
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("AudioSet class names are read from the laion_clap package, which is not installed "
                                "(pip install frechet-audio-distance).")
    path = Path(next(iter(spec.submodule_search_locations))) / "training" / "audioset_textmap.npy"
    if not path.is_file():
        raise FileNotFoundError(f"AudioSet class names not found: {path} is missing from the laion_clap package.")
    labels = [str(label) for label in np.load(path)]
    if len(labels) != AUDIOSET_CLASSES:
        raise ValueError(f"{path} holds {len(labels)} AudioSet class names, expected {AUDIOSET_CLASSES}.")
    return labels


class PANNEmbedder(AudioEmbedder):
    """2048-d clip embeddings of PANN's Cnn14 (its ``embedding`` output), as ``frechet-audio-distance`` computes them.

    The network and checkpoint follow the sample rate as in ``FrechetAudioDistance(model_name="pann")``: Cnn14_8k,
    Cnn14_16k or Cnn14 (32 kHz). Clips must last at least 31 STFT hops (about 0.31 s), so that Cnn14's five 2x
    poolings leave one frame.

    Args:
        ckpt_dir: the folder holding the checkpoint under ``frechet-audio-distance``'s file name, e.g.
            ``Cnn14_16k_mAP%3D0.438.pth`` (a ``ckpt_dir`` that package downloaded into works as is).
        sample_rate: 8000, 16000 or 32000; picks the network and its checkpoint.

    Raises:
        ValueError: for another sample rate.
        FileNotFoundError: if the checkpoint is missing (checked before anything heavy is imported).
    """

    def __init__(self, ckpt_dir: str | Path, sample_rate: int = 16000) -> None:
        super().__init__()
        config = config_for_rate(CNN14_CONFIGS, sample_rate, "PANN Cnn14")
        self.checkpoint = require_file(Path(ckpt_dir) / config.checkpoint, "PANN weights",
                                       PANN_URL.format(config.checkpoint))
        self.sample_rate: int = sample_rate
        self.hop_size = config.hop_size

        network = getattr(cnn14_networks(), config.network)(sample_rate=sample_rate, window_size=config.window_size,
                                                hop_size=config.hop_size, mel_bins=64, fmin=50, fmax=config.fmax,
                                                classes_num=AUDIOSET_CLASSES)
        network.load_state_dict(load_checkpoint(self.checkpoint)["model"])
        self.model = network.requires_grad_(False).eval()
        self.eval()

    @property
    def name(self) -> str:
        return f"pann-cnn14-{self.sample_rate // 1000}k:{self.checkpoint.name}"

    @property
    def dim(self) -> int:
        return CNN14_EMBEDDING_DIM

    @property
    def min_samples(self) -> int:
        """The shortest clip Cnn14 takes at `self.sample_rate`: 32 STFT frames (centred STFT, so 31 hops)."""
        return 31 * self.hop_size

    def _network_output(self, waveform: Tensor) -> dict[str, Tensor]:
        if waveform.shape[-1] < self.min_samples:
            raise ValueError(f"PANN Cnn14 needs clips of at least {self.min_samples} samples "
                             f"({self.min_samples / self.sample_rate:.2f} s) at {self.sample_rate} Hz, got "
                             f"{waveform.shape[-1]}.")
        return self.model(waveform, None)

    def embed(self, waveform: Tensor) -> Tensor:
        return self._network_output(waveform)["embedding"]


class PANNTagger(PANNEmbedder, AudioTagger):
    """AudioSet tagger: Cnn14's 527 logits per clip, whose sigmoids are PANN's ``clipwise_output``.

    `labels` names the 527 outputs in order (AudioSet's class names, see `audioset_labels`). The classes are not
    exclusive (`multi_label`): PANN's class probabilities are the sigmoids of these logits, not their softmax.

    Args:
        ckpt_dir: the folder holding the checkpoint (see `PANNEmbedder`).
        sample_rate: 8000, 16000 or 32000; picks the network and its checkpoint.
    """

    multi_label = True

    def __init__(self, ckpt_dir: str | Path, sample_rate: int = 16000) -> None:
        super().__init__(ckpt_dir, sample_rate)
        self.labels: list[str] = audioset_labels()

    @property
    def name(self) -> str:
        return f"pann-tagger-cnn14-{self.sample_rate // 1000}k:{self.checkpoint.name}"

    @property
    def dim(self) -> int:
        return len(self.labels)  # AudioTagger's, ahead of PANNEmbedder's embedding width

    def embed(self, waveform: Tensor) -> Tensor:
        """Mono audio `(batch, samples)` at `self.sample_rate` -> AudioSet logits `(batch, 527)`."""
        # in eval mode Cnn14's clipwise_output is sigmoid(fc_audioset(embedding)): return the pre-sigmoid values
        return self.model.fc_audioset(self._network_output(waveform)["embedding"])
