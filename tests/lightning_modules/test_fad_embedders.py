"""The embedders backed by frechet-audio-distance's networks (PANN, EnCodec, VGGish, LAION-CLAP).

PANN and EnCodec are checked end to end offline: the real networks are built with seeded random weights, saved under
the checkpoint names and formats the embedders expect, and loaded back through the embedders' constructors. LAION-CLAP
is checked the same way (slow), with a one-layer stand-in for the hub model roberta-base it also needs. VGGish's code
(the torchvggish torch.hub repository) is not installed, so offline only its missing-file errors are checked. The
`network` tests compare all four with `FrechetAudioDistance.get_embeddings` on the released weights.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from torch import nn

from lightning_modules.metrics.embedder import AudioEmbedder, AudioTagger
from lightning_modules.metrics.encodec import EncodecEmbedder
from lightning_modules.metrics.laion_clap import LaionClapEmbedder
from lightning_modules.metrics.pann import PANNEmbedder, PANNTagger, cnn14_networks
from lightning_modules.metrics.vggish import VGGishEmbedder

pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")  # encodec

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("frechet_audio_distance", "laion_clap", "encodec")
INPUT_RATE = 22050  # none of the networks' rates: every embedder resamples

# frechet_audio_distance/fad.py's PANN networks, constructor arguments and checkpoint names, written out again here
FAD_PANN = {
    8000: ("Cnn14_8k", "Cnn14_8k_mAP%3D0.416.pth", dict(window_size=256, hop_size=80, fmax=4000)),
    16000: ("Cnn14_16k", "Cnn14_16k_mAP%3D0.438.pth", dict(window_size=512, hop_size=160, fmax=8000)),
    32000: ("Cnn14", "Cnn14_mAP%3D0.431.pth", dict(window_size=1024, hop_size=320, fmax=16000)),
}
ENCODEC_FILES = {24000: "encodec_24khz-d7cc33bc.th", 48000: "encodec_48khz-7e698e3e.th"}


def make_audio(seed: int, batch: int = 2, seconds: float = 1.0, sample_rate: int = INPUT_RATE) -> torch.Tensor:
    """Seeded test clips: a tone (a different pitch per clip) under noise, `(batch, samples)` in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 220.0 * (1 + torch.arange(batch).unsqueeze(1) + torch.rand(batch, 1, generator=generator))
    noise = torch.randn(batch, t.numel(), generator=generator)
    return 0.5 * torch.sin(2 * torch.pi * pitch * t) + 0.1 * noise


def randomise_batch_norm(network: nn.Module) -> None:
    """Random running statistics, so that batch norm in eval mode is not the identity."""
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)


def check_frozen_eval(embedder: AudioEmbedder) -> None:
    assert embedder.train() is embedder
    assert not any(module.training for module in embedder.modules())
    assert sum(parameter.numel() for parameter in embedder.parameters()) > 0
    assert not any(parameter.requires_grad for parameter in embedder.parameters())


# --- PANN ---------------------------------------------------------------------------------------------------------


def build_pann_checkpoint(folder: Path, sample_rate: int) -> nn.Module:
    """A seeded random Cnn14 for `sample_rate`, saved in `folder` as a training checkpoint: the state dict under
    "model", next to numpy sampler state, as PANN's released checkpoints may hold. The network class is the
    package's own file (`test_cnn14_networks_are_the_packages_own_file`), loaded without the package's 10 s import."""
    network_name, file_name, kwargs = FAD_PANN[sample_rate]
    torch.manual_seed(sample_rate)
    network = getattr(cnn14_networks(), network_name)(sample_rate=sample_rate, mel_bins=64, fmin=50, classes_num=527,
                                                      **kwargs)
    randomise_batch_norm(network)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict(), "iteration": 0,
                "sampler": {"indexes": np.arange(10), "random_state": np.random.RandomState(0).get_state()}},
               folder / file_name)
    return network.eval()


def test_cnn14_networks_are_the_packages_own_file() -> None:
    package = Path(importlib.util.find_spec("frechet_audio_distance").origin).parent
    networks = cnn14_networks()
    assert Path(networks.__file__) == package / "models" / "pann.py"
    assert cnn14_networks() is networks  # loaded once
    assert {"Cnn14", "Cnn14_8k", "Cnn14_16k"} <= set(vars(networks))


@pytest.fixture(scope="module")
def pann_8k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    folder = tmp_path_factory.mktemp("pann")
    return folder, build_pann_checkpoint(folder, 8000)


@pytest.fixture(scope="module")
def pann_embedder(pann_8k: tuple[Path, nn.Module]) -> PANNEmbedder:
    return PANNEmbedder(pann_8k[0], sample_rate=8000)


def test_pann_embedder_matches_cnn14_on_resampled_audio(pann_8k: tuple[Path, nn.Module],
                                                        pann_embedder: PANNEmbedder) -> None:
    audio = make_audio(seed=0)
    embedding = pann_embedder(audio, INPUT_RATE)
    assert embedding.shape == (2, pann_embedder.dim) == (2, 2048)
    assert pann_embedder.name == "pann-cnn14-8k:Cnn14_8k_mAP%3D0.416.pth"
    with torch.no_grad():
        expected = pann_8k[1](torchaudio.functional.resample(audio, INPUT_RATE, 8000), None)["embedding"]
    torch.testing.assert_close(embedding, expected)
    assert torch.equal(pann_embedder(audio, INPUT_RATE), embedding)  # deterministic
    assert not torch.allclose(embedding[0], embedding[1])  # different clips, different embeddings
    assert not torch.allclose(pann_embedder(make_audio(seed=1), INPUT_RATE), embedding)


def test_pann_embedder_is_frozen_and_rejects_short_clips(pann_embedder: PANNEmbedder) -> None:
    check_frozen_eval(pann_embedder)
    assert pann_embedder(make_audio(seed=0), INPUT_RATE).shape == (2, 2048)  # still works after .train()
    assert pann_embedder(torch.zeros(1, 31 * 80), 8000).shape == (1, 2048)  # the shortest clip Cnn14 takes
    with pytest.raises(ValueError, match="at least 2480 samples"):
        pann_embedder(torch.zeros(1, 31 * 80 - 1), 8000)


def test_pann_tagger_logits_are_cnn14_clipwise_output(pann_8k: tuple[Path, nn.Module]) -> None:
    tagger = PANNTagger(pann_8k[0], sample_rate=8000)
    audio = make_audio(seed=2)
    logits = tagger(audio, INPUT_RATE)
    assert logits.shape == (2, tagger.dim) == (2, 527)
    assert isinstance(tagger, AudioTagger)
    with torch.no_grad():
        expected = pann_8k[1](torchaudio.functional.resample(audio, INPUT_RATE, 8000), None)["clipwise_output"]
    torch.testing.assert_close(torch.sigmoid(logits), expected)
    assert logits.min() < 0 < logits.max()  # logits, not probabilities
    assert tagger.multi_label is True
    assert len(tagger.labels) == len(set(tagger.labels)) == 527
    assert (tagger.labels[0], tagger.labels[137], tagger.labels[500]) == ("Speech", "Music", "Silence")
    assert tagger.name == "pann-tagger-cnn14-8k:Cnn14_8k_mAP%3D0.416.pth"
    check_frozen_eval(tagger)


@pytest.mark.slow
@pytest.mark.parametrize("sample_rate", [16000, 32000])
def test_pann_embedder_at_16k_and_32k(tmp_path: Path, sample_rate: int) -> None:
    network = build_pann_checkpoint(tmp_path, sample_rate)
    embedder = PANNEmbedder(tmp_path, sample_rate=sample_rate)
    assert embedder.name == f"pann-cnn14-{sample_rate // 1000}k:{FAD_PANN[sample_rate][1]}"
    audio = make_audio(seed=3)
    with torch.no_grad():
        expected = network(torchaudio.functional.resample(audio, INPUT_RATE, sample_rate), None)["embedding"]
    torch.testing.assert_close(embedder(audio, INPUT_RATE), expected)


def test_pann_rejects_unknown_sample_rate_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sample_rate=22050.*\[8000, 16000, 32000\]"):
        PANNEmbedder(tmp_path, sample_rate=22050)
    with pytest.raises(FileNotFoundError, match="Cnn14_16k_mAP%3D0.438.pth") as error:
        PANNTagger(tmp_path)
    assert f"https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth) in {tmp_path}" in str(error.value)


# --- EnCodec ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[24000, 48000])
def encodec_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                       ) -> tuple[int, Path, nn.Module]:
    """A seeded random EnCodec model, its state dict saved under the name encodec's constructor loads."""
    from encodec import EncodecModel

    sample_rate = request.param
    torch.manual_seed(sample_rate)
    factory = EncodecModel.encodec_model_24khz if sample_rate == 24000 else EncodecModel.encodec_model_48khz
    model = factory(pretrained=False)
    folder = tmp_path_factory.mktemp(f"encodec{sample_rate}")
    torch.save(model.state_dict(), folder / ENCODEC_FILES[sample_rate])
    return sample_rate, folder, model.eval()


@pytest.fixture(scope="module")
def encodec_embedder(encodec_checkpoint: tuple[int, Path, nn.Module]) -> tuple[EncodecEmbedder, list]:
    """The embedder loaded through encodec's constructor, with its sha256 check recorded instead of enforced (the
    random file cannot match the released checksum; `test_encodec_enforces_the_checksum` checks that it is)."""
    import encodec.model

    sample_rate, folder, _ = encodec_checkpoint
    checks: list[tuple[Path, str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encodec.model, "_check_checksum", lambda path, checksum: checks.append((path, checksum)))
        embedder = EncodecEmbedder(folder, sample_rate=sample_rate)
    return embedder, checks


def test_encodec_embedder_matches_encoder_on_resampled_audio(encodec_checkpoint: tuple[int, Path, nn.Module],
                                                             encodec_embedder: tuple[EncodecEmbedder, list]) -> None:
    sample_rate, folder, model = encodec_checkpoint
    embedder, checks = encodec_embedder
    file_name = ENCODEC_FILES[sample_rate]
    assert checks == [(folder / file_name, file_name.split("-")[1].removesuffix(".th"))]
    assert embedder.name == f"encodec-{sample_rate // 1000}khz:{file_name}"
    assert embedder.model.bandwidth == 24.0
    audio = make_audio(seed=0, seconds=0.2)  # short: the encoder is slow on this CPU
    embedding = embedder(audio, INPUT_RATE)
    frames = {24000: 15, 48000: 30}[sample_rate]  # one frame per 320 samples
    assert embedding.shape == (2, frames, embedder.dim) == (2, frames, 128)
    resampled = torchaudio.functional.resample(audio, INPUT_RATE, sample_rate).unsqueeze(1)
    if sample_rate == 48000:
        resampled = resampled.expand(-1, 2, -1)  # the 48 kHz model is stereo: mono on both channels
    with torch.no_grad():
        expected = model.encoder(resampled).transpose(1, 2)
    torch.testing.assert_close(embedding, expected)
    assert torch.equal(embedder(audio, INPUT_RATE), embedding)
    assert not torch.allclose(embedding[0], embedding[1])
    assert not torch.allclose(embedder(make_audio(seed=1, seconds=0.2), INPUT_RATE), embedding)
    check_frozen_eval(embedder)
    assert torch.equal(embedder(audio, INPUT_RATE), embedding)  # eval mode kept after .train()


def test_encodec_enforces_the_checksum(encodec_checkpoint: tuple[int, Path, nn.Module]) -> None:
    sample_rate, folder, _ = encodec_checkpoint
    with pytest.raises(RuntimeError, match="Invalid checksum"):
        EncodecEmbedder(folder, sample_rate=sample_rate)


def test_encodec_rejects_unknown_sample_rate_and_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"sample_rate=32000.*\[24000, 48000\]"):
        EncodecEmbedder(tmp_path, sample_rate=32000)
    with pytest.raises(FileNotFoundError, match="encodec_48khz-7e698e3e.th") as error:
        EncodecEmbedder(tmp_path, sample_rate=48000)
    assert "https://dl.fbaipublicfiles.com/encodec/v0/encodec_48khz-7e698e3e.th" in str(error.value)


# --- VGGish and LAION-CLAP: errors only (offline) -----------------------------------------------------------------


def test_vggish_names_the_missing_repository_then_the_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="hubconf.py") as error:
        VGGishEmbedder(tmp_path)
    assert str(tmp_path / "harritaylor_torchvggish_master") in str(error.value)
    assert "github.com/harritaylor/torchvggish" in str(error.value)
    (tmp_path / "harritaylor_torchvggish_master").mkdir()
    (tmp_path / "harritaylor_torchvggish_master" / "hubconf.py").write_text("raise AssertionError('imported')\n")
    with pytest.raises(FileNotFoundError, match="vggish-10086976.pth") as error:
        VGGishEmbedder(tmp_path)  # checked before the repository's hubconf.py is imported
    assert f"releases/download/v0.1/vggish-10086976.pth) in {tmp_path / 'checkpoints'}" in str(error.value)


def test_laion_clap_checks_its_arguments_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="Unknown LAION-CLAP checkpoint 'clap.pt'"):
        LaionClapEmbedder(tmp_path, checkpoint="clap.pt")
    with pytest.raises(ValueError, match="pass enable_fusion=False"):
        LaionClapEmbedder(tmp_path, enable_fusion=True)
    with pytest.raises(ValueError, match="pass enable_fusion=True"):
        LaionClapEmbedder(tmp_path, checkpoint="630k-audioset-fusion-best.pt")
    with pytest.raises(FileNotFoundError, match="music_audioset_epoch_15_esc_90.14.pt") as error:
        LaionClapEmbedder(tmp_path)
    assert "huggingface.co/lukewys/laion_clap/resolve/main/music_audioset_epoch_15_esc_90.14.pt" in str(error.value)

    import huggingface_hub.constants

    (tmp_path / "630k-audioset-best.pt").write_bytes(b"")  # the checkpoint is there, the text model is not
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="roberta-base"):
        LaionClapEmbedder(tmp_path, checkpoint="630k-audioset-best.pt")


CLAP_PROBE = """
import json, sys
from pathlib import Path
import numpy as np, torch, torchaudio
import laion_clap
from lightning_modules.metrics.laion_clap import LaionClapEmbedder
ckpt = Path(sys.argv[1])
torch.manual_seed(0)
reference = laion_clap.CLAP_Module(enable_fusion=False, device="cpu", amodel="HTSAT-tiny")
state = reference.model.state_dict()
state["text_branch.embeddings.position_ids"] = torch.arange(514)[None]  # the released checkpoints hold it
torch.save({"state_dict": {"module." + key: value for key, value in state.items()}}, ckpt / "630k-audioset-best.pt")
embedder = LaionClapEmbedder(ckpt, checkpoint="630k-audioset-best.pt")
generator = torch.Generator().manual_seed(0)
short = 0.3 * torch.randn(2, 3 * 22050, generator=generator)
audio = embedder(short, 22050)
with torch.no_grad():
    expected = reference.get_audio_embedding_from_data(torchaudio.functional.resample(short, 22050, 48000),
                                                       use_tensor=True)
long = 0.3 * torch.randn(2, 12 * 48000, generator=generator)
np.random.seed(123)
numpy_state = np.random.get_state()[1].copy()
long_embedding = embedder(long, 48000)
numpy_restored = bool(np.array_equal(np.random.get_state()[1], numpy_state))
texts = ["a piece by someone", "drums and bass"]
text = embedder.embed_text(texts)
with torch.no_grad():
    expected_text = reference.get_text_embedding(texts, use_tensor=True)
embedder.train()
print(json.dumps({
    "name": embedder.name, "dim": embedder.dim, "logit_scale": embedder.logit_scale,
    "audio_shape": list(audio.shape), "audio_norms": audio.norm(dim=-1).tolist(),
    "audio_vs_laion_clap": (audio - expected).abs().max().item(),
    "clips_differ": not torch.allclose(audio[0], audio[1]),
    "long_repeatable": torch.equal(embedder(long, 48000), long_embedding),
    "long_batch_independent": torch.allclose(embedder(long[1:], 48000), long_embedding[1:], atol=1e-5),
    "numpy_restored": numpy_restored,
    "text_shape": list(text.shape), "text_vs_laion_clap": (text - expected_text).abs().max().item(),
    "eval": not any(module.training for module in embedder.modules()),
    "frozen": not any(parameter.requires_grad for parameter in embedder.parameters()),
}))
"""


def make_stand_in_roberta(cache: Path) -> None:
    """A one-layer stand-in for the hub model ``roberta-base`` (same width, vocabulary size and special tokens, random
    weights, a character-level vocabulary) in a Hugging Face cache, for laion_clap's text tower and tokenizer."""
    from transformers import RobertaConfig, RobertaModel

    repo = cache / "models--roberta-base"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "\u0120"] + [chr(code) for code in range(33, 127)]
    tokens += [f"filler{index}" for index in range(len(tokens), 50264)] + ["<mask>"]
    (snapshot / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (snapshot / "merges.txt").write_text("#version: 0.2\n")
    config = RobertaConfig(vocab_size=len(tokens), hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                           intermediate_size=256, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(snapshot)


@pytest.mark.slow
def test_laion_clap_embedder_on_a_random_clap(tmp_path: Path) -> None:
    """LAION-CLAP (HTSAT-tiny) with random weights, saved as a released checkpoint and loaded by the embedder, with a
    stand-in roberta-base; compared with laion_clap's own `get_audio_embedding_from_data` and `get_text_embedding`."""
    make_stand_in_roberta(tmp_path / "hf")
    (tmp_path / "ckpt").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", CLAP_PROBE, str(tmp_path / "ckpt")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["name"] == "laion-clap-htsat-tiny:630k-audioset-best.pt"
    assert report["dim"] == 512 and report["audio_shape"] == [2, 512] and report["text_shape"] == [2, 512]
    assert report["logit_scale"] == pytest.approx(1 / 0.07)  # laion_clap's initial value, kept by the checkpoint
    assert report["audio_norms"] == pytest.approx([1.0, 1.0])
    assert report["audio_vs_laion_clap"] < 1e-6 and report["text_vs_laion_clap"] < 1e-6
    assert report["clips_differ"]
    assert report["long_repeatable"] and report["long_batch_independent"] and report["numpy_restored"]
    assert report["eval"] and report["frozen"]


# --- nothing heavy is imported before it is needed ----------------------------------------------------------------

IMPORT_PROBE = """
import json, sys
from pathlib import Path
HEAVY = {heavy!r}
import lightning_modules.metrics
from lightning_modules.metrics.encodec import EncodecEmbedder
from lightning_modules.metrics.laion_clap import LaionClapEmbedder
from lightning_modules.metrics.pann import PANNEmbedder, PANNTagger, cnn14_networks
from lightning_modules.metrics.vggish import VGGishEmbedder
report = {{"import": sorted(name for name in HEAVY if name in sys.modules)}}
empty, clap = Path(sys.argv[1]), Path(sys.argv[2])
cases = {{
    "pann": lambda: PANNEmbedder(empty),
    "pann-tagger": lambda: PANNTagger(empty, sample_rate=32000),
    "encodec-24k": lambda: EncodecEmbedder(empty),
    "encodec-48k": lambda: EncodecEmbedder(empty, sample_rate=48000),
    "vggish": lambda: VGGishEmbedder(empty),
    "laion-clap": lambda: LaionClapEmbedder(empty),
    "laion-clap-text-model": lambda: LaionClapEmbedder(clap, checkpoint="630k-best.pt"),
}}
for case, build in cases.items():
    try:
        build()
        report[case] = "built"
    except Exception as error:
        report[case] = f"{{type(error).__name__}}: {{error}}"
    report[case + ":imported"] = sorted(name for name in HEAVY if name in sys.modules)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def import_probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Import the modules and build every embedder with missing files, in a fresh interpreter (offline, with an
    empty Hugging Face cache); report what raised and which heavy packages got imported."""
    root = tmp_path_factory.mktemp("probe")
    (root / "empty").mkdir()
    (root / "clap").mkdir()
    (root / "clap" / "630k-best.pt").write_bytes(b"")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "hf")}
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(heavy=HEAVY), str(root / "empty"),
                             str(root / "clap")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.ddp
def test_importing_the_embedder_modules_imports_no_heavy_package(import_probe: dict) -> None:
    assert import_probe["import"] == []


@pytest.mark.parametrize(("case", "expected"), [
    ("pann", "Cnn14_16k_mAP%3D0.438.pth"),
    ("pann-tagger", "Cnn14_mAP%3D0.431.pth"),
    ("encodec-24k", "encodec_24khz-d7cc33bc.th"),
    ("encodec-48k", "encodec_48khz-7e698e3e.th"),
    ("vggish", "hubconf.py"),
    ("laion-clap", "music_audioset_epoch_15_esc_90.14.pt"),
    ("laion-clap-text-model", "roberta-base"),
])
@pytest.mark.ddp
def test_missing_weights_raise_before_any_heavy_import(import_probe: dict, case: str, expected: str) -> None:
    assert import_probe[case].startswith("FileNotFoundError: ")
    assert expected in import_probe[case]
    assert import_probe[case + ":imported"] == []


# --- real weights, against frechet-audio-distance itself ----------------------------------------------------------


def _fad_embeddings(ckpt_dir: Path, audio: np.ndarray, sample_rate: int, **kwargs: object) -> np.ndarray:
    from frechet_audio_distance import FrechetAudioDistance

    hub_dir = torch.hub.get_dir()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "trusted_list").write_text("harritaylor_torchvggish\n")  # else torch.hub asks on stdin
    try:  # FrechetAudioDistance downloads its weights into ckpt_dir, and points torch.hub there for good
        fad = FrechetAudioDistance(ckpt_dir=str(ckpt_dir), sample_rate=sample_rate, **kwargs)
    finally:
        torch.hub.set_dir(hub_dir)
    fad.device = torch.device("cpu")  # compare on the CPU, where the embedders are built
    fad.model.to(fad.device)
    if isinstance(getattr(fad.model, "device", None), (str, torch.device)):
        fad.model.device = fad.device  # VGGish moves its inputs to this attribute
    return fad.get_embeddings([audio], sr=sample_rate)


NETWORK_CASES: dict[str, tuple[dict, int, Callable[[Path], AudioEmbedder]]] = {
    "pann": (dict(model_name="pann"), 16000, lambda ckpt: PANNEmbedder(ckpt)),
    "vggish": (dict(model_name="vggish"), 16000, lambda ckpt: VGGishEmbedder(ckpt)),
    "encodec": (dict(model_name="encodec"), 24000, lambda ckpt: EncodecEmbedder(ckpt / "checkpoints")),
    "laion-clap": (dict(model_name="clap", submodel_name="music_audioset"), 48000,
                   lambda ckpt: LaionClapEmbedder(ckpt)),
}


@pytest.mark.network
@pytest.mark.parametrize("case", sorted(NETWORK_CASES))
def test_embeddings_match_frechet_audio_distance(tmp_path: Path, case: str) -> None:
    fad_kwargs, sample_rate, build = NETWORK_CASES[case]
    audio = make_audio(seed=0, batch=1, seconds=2.0, sample_rate=sample_rate)[0].numpy().astype(np.float32)
    expected = _fad_embeddings(tmp_path, audio, sample_rate, **fad_kwargs)
    embedder = build(tmp_path)  # from the files FrechetAudioDistance downloaded
    ours = embedder(torch.from_numpy(audio)[None], sample_rate)[0].numpy()
    np.testing.assert_allclose(ours.reshape(expected.shape), expected, rtol=1e-3, atol=1e-4)
