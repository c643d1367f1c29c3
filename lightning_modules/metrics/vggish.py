"""`VGGishEmbedder`: frame-level VGGish embeddings (one per 0.96 s), as the ``frechet-audio-distance`` package
computes them by default (FAD with ``model_name="vggish"``: no PCA, no final ReLU), from a local copy of the
``harritaylor/torchvggish`` torch.hub repository. Hershey et al., "CNN Architectures for Large-Scale Audio
Classification", ICASSP 2017."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_modules.metrics.embedder import AudioEmbedder
from lightning_modules.metrics.weights import load_checkpoint, require_file

VGGISH_REPO_DIR = "harritaylor_torchvggish_master"  # the folder torch.hub.load("harritaylor/torchvggish") fills
VGGISH_REPO_URL = "https://github.com/harritaylor/torchvggish/archive/refs/heads/master.zip"
VGGISH_CHECKPOINT = "vggish-10086976.pth"
VGGISH_URL = f"https://github.com/harritaylor/torchvggish/releases/download/v0.1/{VGGISH_CHECKPOINT}"
VGGISH_SAMPLE_RATE = 16000
VGGISH_DIM = 128
VGGISH_MIN_SAMPLES = 15600  # one 0.96 s example: 96 log-mel frames of 25 ms every 10 ms


class VGGishEmbedder(AudioEmbedder):
    """128-d VGGish embeddings of each 0.96 s of audio (no overlap): `(batch, frames, 128)` at 16 kHz.

    ``frechet-audio-distance`` loads ``torch.hub.load("harritaylor/torchvggish", "vggish")`` (with its torch.hub dir
    set to its ``ckpt_dir``), turns off the PCA postprocessing, drops the final ReLU, and feeds each clip as a numpy
    array to the model, which computes its log-mel examples itself. This does the same from the local copies
    torch.hub leaves in such a ``ckpt_dir``, without downloading and without touching torch.hub's global settings:
    the repository in ``<ckpt_dir>/harritaylor_torchvggish_master`` (loaded with ``source="local"``) and the weights
    in ``<ckpt_dir>/checkpoints/vggish-10086976.pth`` (the PCA parameters are not needed). Clips must last at least
    0.975 s.

    Args:
        ckpt_dir: the folder holding ``harritaylor_torchvggish_master/`` and ``checkpoints/vggish-10086976.pth``.

    Raises:
        FileNotFoundError: if the repository or the weights are missing (checked before anything is built).
    """

    def __init__(self, ckpt_dir: str | Path) -> None:
        super().__init__()
        ckpt_dir = Path(ckpt_dir)
        repo = require_file(ckpt_dir / VGGISH_REPO_DIR / "hubconf.py", "VGGish code (harritaylor/torchvggish)",
                            VGGISH_REPO_URL, note="Unpack the whole repository there, so that its hubconf.py is "
                                                  "at that place.").parent
        self.checkpoint = require_file(ckpt_dir / "checkpoints" / VGGISH_CHECKPOINT, "VGGish weights", VGGISH_URL)
        self.sample_rate: int = VGGISH_SAMPLE_RATE

        model = torch.hub.load(str(repo), "vggish", source="local", pretrained=False, postprocess=False,
                               device=torch.device("cpu"))
        model.load_state_dict(load_checkpoint(self.checkpoint))
        # frechet-audio-distance's defaults (use_pca=False, use_activation=False): no PCA, no ReLU after the last layer
        model.embeddings = nn.Sequential(*list(model.embeddings.children())[:-1])
        self.model = model.requires_grad_(False).eval()
        self.eval()

    @property
    def name(self) -> str:
        return f"vggish:{self.checkpoint.name}"

    @property
    def dim(self) -> int:
        return VGGISH_DIM

    def embed(self, waveform: Tensor) -> Tensor:
        if waveform.shape[-1] < VGGISH_MIN_SAMPLES:
            raise ValueError(f"VGGish needs clips of at least {VGGISH_MIN_SAMPLES} samples "
                             f"({VGGISH_MIN_SAMPLES / VGGISH_SAMPLE_RATE:.3f} s) at {VGGISH_SAMPLE_RATE} Hz, got "
                             f"{waveform.shape[-1]}.")
        self.model.device = self.device  # VGGish.forward moves its log-mel examples to this attribute
        # one clip at a time, as numpy (the model computes its log-mel examples in numpy), as frechet-audio-distance
        return torch.stack([self.model(clip, self.sample_rate) for clip in waveform.cpu().numpy()])
