"""`LaionClapEmbedder`: audio and text embeddings of LAION-CLAP from its original checkpoints (``laion_clap``
package), as the ``frechet-audio-distance`` package builds it (FAD with ``model_name="clap"``). For LAION-CLAP
checkpoints converted to transformers, see `ClapEmbedder`. Wu et al., "Large-scale Contrastive Language-Audio
Pretraining with Feature Fusion and Keyword-to-Caption Augmentation", ICASSP 2023."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.metrics.embedder import TextAudioEmbedder
from lightning_modules.metrics.weights import require_file

LAION_CLAP_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/{}"
# checkpoint -> (audio encoder, fusion), as frechet-audio-distance pairs them (its submodel_name and enable_fusion)
LAION_CLAP_CHECKPOINTS: dict[str, tuple[str, bool]] = {
    "630k-best.pt": ("HTSAT-tiny", False),
    "630k-fusion-best.pt": ("HTSAT-tiny", True),
    "630k-audioset-best.pt": ("HTSAT-tiny", False),
    "630k-audioset-fusion-best.pt": ("HTSAT-tiny", True),
    "music_audioset_epoch_15_esc_90.14.pt": ("HTSAT-base", False),
    "music_speech_epoch_15_esc_89.25.pt": ("HTSAT-base", False),
    "music_speech_audioset_epoch_15_esc_89.98.pt": ("HTSAT-base", False),
}
TEXT_MODEL = "roberta-base"  # laion_clap's text tower and tokenizer, loaded from the Hugging Face hub
TEXT_MODEL_FILES = ("config.json", "vocab.json", "merges.txt")
TEXT_MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
CLIP_SAMPLES = 480000  # 10 s at 48 kHz: laion_clap repeats shorter clips and crops longer ones to this


def _require_text_model() -> None:
    """Offline, raise `FileNotFoundError` unless ``roberta-base`` is in the Hugging Face cache.

    Offline and absent, transformers does not fail: it builds an empty tokenizer (5 special tokens), which would
    silently turn every caption into unknown tokens.
    """
    import huggingface_hub
    from huggingface_hub import constants

    if not huggingface_hub.is_offline_mode():
        return  # transformers fetches it
    cached = {name: huggingface_hub.try_to_load_from_cache(TEXT_MODEL, name) for name in
              TEXT_MODEL_FILES + TEXT_MODEL_WEIGHTS}
    missing = [name for name in TEXT_MODEL_FILES if not isinstance(cached[name], str)]
    if not any(isinstance(cached[name], str) for name in TEXT_MODEL_WEIGHTS):
        missing.append(" or ".join(TEXT_MODEL_WEIGHTS))
    if missing:
        raise FileNotFoundError(
            f"LAION-CLAP needs the Hugging Face model {TEXT_MODEL} (its text tower and tokenizer), and the hub is "
            f"offline (HF_HUB_OFFLINE=1) with {', '.join(missing)} missing from the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}): run `hf download {TEXT_MODEL}` where the hub is reachable "
            f"and copy that cache here, or go online.")


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block, then restore its state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class LaionClapEmbedder(TextAudioEmbedder):
    """L2-normalised 512-d LAION-CLAP embeddings of audio (48 kHz) and text.

    Built as in ``frechet-audio-distance``: ``laion_clap.CLAP_Module`` with HTSAT-base for the ``music_*``
    checkpoints and HTSAT-tiny for the ``630k*`` ones, then ``load_ckpt``. Audio goes through the preprocessing of
    ``CLAP_Module.get_audio_embedding_from_data(x, use_tensor=True)`` (no int16 quantisation; clips shorter than
    10 s are repeated and zero-padded to 10 s, longer ones cropped to a random 10 s window, or, with fusion, also
    summarised by three random 10 s chunks), with two differences: a whole batch goes through the network at once,
    and the random draws for a long clip are seeded (numpy seed 0, for each clip, restoring numpy's state after), so
    an embedding does not change from one call or batch to the next.

    Args:
        ckpt_dir: the folder holding the checkpoint.
        checkpoint: the checkpoint's file name, one of those of ``huggingface.co/lukewys/laion_clap``.
        enable_fusion: whether the checkpoint is a fusion one (``*fusion*``); must match it.

    Raises:
        ValueError: for an unknown checkpoint, or ``enable_fusion`` not matching it.
        FileNotFoundError: if the checkpoint is missing, or offline, ``roberta-base`` is not in the Hugging Face
            cache (both checked before ``laion_clap`` is imported).
    """

    def __init__(self, ckpt_dir: str | Path, checkpoint: str = "music_audioset_epoch_15_esc_90.14.pt",
                 enable_fusion: bool = False) -> None:
        super().__init__()
        if checkpoint not in LAION_CLAP_CHECKPOINTS:
            raise ValueError(f"Unknown LAION-CLAP checkpoint {checkpoint!r}; choose one of "
                             f"{sorted(LAION_CLAP_CHECKPOINTS)}.")
        amodel, fusion = LAION_CLAP_CHECKPOINTS[checkpoint]
        if enable_fusion != fusion:
            raise ValueError(f"enable_fusion={enable_fusion} does not match the LAION-CLAP checkpoint {checkpoint!r}, "
                             f"which is {'a' if fusion else 'a non-'}fusion model: pass enable_fusion={fusion}.")
        self.checkpoint = require_file(Path(ckpt_dir) / checkpoint, "LAION-CLAP weights",
                                       LAION_CLAP_URL.format(checkpoint))
        _require_text_model()
        self.amodel = amodel
        self.enable_fusion = enable_fusion
        self.sample_rate: int = 48000

        import laion_clap  # slow: imports librosa and loads three hub tokenizers
        from laion_clap.training.data import get_audio_features

        self._get_audio_features = get_audio_features
        self.clap = laion_clap.CLAP_Module(enable_fusion=enable_fusion, device="cpu", amodel=amodel)
        vocab_size = self.clap.tokenize.vocab_size
        if vocab_size < 50000:  # roberta-base has 50265 tokens
            raise RuntimeError(f"laion_clap loaded a {TEXT_MODEL} tokenizer of {vocab_size} tokens only; its files "
                               f"are missing from the Hugging Face cache.")
        self.clap.load_ckpt(str(self.checkpoint), verbose=False)
        self.clap.requires_grad_(False)
        self.eval()

    @property
    def name(self) -> str:
        return f"laion-clap-{self.amodel.lower()}:{self.checkpoint.name}"

    @property
    def dim(self) -> int:
        return self.clap.model.joint_embed_shape

    @property
    def logit_scale(self) -> float:
        return self.clap.model.logit_scale_a.exp().item()

    def embed(self, waveform: Tensor) -> Tensor:
        audio_cfg = self.clap.model_cfg["audio_cfg"]
        features = []
        for clip in waveform:
            with _numpy_seed(0):
                features.append(self._get_audio_features(
                    {}, clip, CLIP_SAMPLES, data_truncating="fusion" if self.enable_fusion else "rand_trunc",
                    data_filling="repeatpad", audio_cfg=audio_cfg, require_grad=clip.requires_grad))
        return F.normalize(self.clap.model.get_audio_embedding(features), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        return F.normalize(self.clap.get_text_embedding(list(texts), use_tensor=True), dim=-1)
