"""The metrics split over two processes (gloo, CPU) equal the single-process value: every state is a float64 sum, so
only the order of additions differs.

One spawn of two workers runs every scenario (spawning costs an import of torch and transformers per process); each
rank writes its results to a JSON file and the tests compare them with the same metrics run in this process. The
dataset has 11 items, split unevenly (7 on rank 0, 4 on rank 1) to catch padding in the gathers."""

from __future__ import annotations

import datetime
import json
import socket
import zlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lightning_modules.metrics import (
    AudioTagger,
    CLAPScore,
    FrechetAudioDistance,
    Memorization,
    Recognition,
    TagKLDivergence,
    TextAudioEmbedder,
)

pytestmark = pytest.mark.ddp  # every test here runs processes: DDP or the CLI in a subprocess

RATE = 8000
WINDOW = 64
DIM = 8
ITEMS = 11
SPLITS = ((0, 7), (7, 11))  # rank 0 and rank 1
LABELS = ["a", "b", "c"]


class HashClap(TextAudioEmbedder):
    """Test CLAP in float64: audio is a fixed random projection of the first WINDOW samples, text a random vector
    seeded by the text's CRC32; both L2-normalised. Deterministic across processes and batch sizes."""

    sample_rate = RATE

    def __init__(self):
        super().__init__()
        weight = torch.randn(WINDOW, DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.weight = nn.Parameter(weight, requires_grad=False)

    @property
    def name(self):
        return "hash-clap"

    @property
    def dim(self):
        return DIM

    def embed(self, waveform):
        return F.normalize(waveform[:, :WINDOW].double() @ self.weight, dim=-1)

    def embed_text(self, texts):
        vectors = [torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(text.encode())),
                               dtype=torch.float64) for text in texts]
        return F.normalize(torch.stack(vectors), dim=-1)


class ProjectionTagger(AudioTagger):
    """Test tagger: logits over LABELS, a fixed random projection of the first WINDOW samples."""

    sample_rate = RATE
    labels = LABELS

    def __init__(self):
        super().__init__()
        weight = torch.randn(WINDOW, len(LABELS), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        self.weight = nn.Parameter(weight, requires_grad=False)

    @property
    def name(self):
        return "projection-tagger"

    def embed(self, waveform):
        return waveform[:, :WINDOW].double() @ self.weight


def dataset():
    """The fixed dataset: real and generated clips, reference clips for KL, prompts and target labels."""
    generator = torch.Generator().manual_seed(0)
    real = 0.3 * torch.randn(ITEMS, 256, generator=generator)
    generated = 0.3 * torch.randn(ITEMS, 256, generator=generator) + 0.1
    generated[2], generated[8] = real[1], real[3]  # copies of reference tracks, one on each rank
    return {
        "real": real,
        "generated": generated,
        "reference": 0.3 * torch.randn(ITEMS, 256, generator=generator),
        "prompts": [f"prompt {i % 4}" for i in range(ITEMS)],
        "targets": [LABELS[i % 3] for i in range(ITEMS)],
    }


def part(data, start, stop):
    return {key: value[start:stop] for key, value in data.items()}


def run_metrics(parts):
    """Every metric updated with each of `parts` (slices of the dataset) in turn, then computed."""
    clap, tagger = HashClap(), ProjectionTagger()
    fad, score = FrechetAudioDistance(clap), CLAPScore(clap)
    recognition, kl = Recognition(tagger), TagKLDivergence(tagger)
    memorization = Memorization(clap, threshold=0.9)
    memorization.set_reference(clap(dataset()["real"][:4], RATE))  # the same tracks on every process
    for items in parts:
        fad.update(items["real"], RATE, real=True)
        fad.update(items["generated"], RATE)
        score.update(items["generated"], RATE, items["prompts"])
        recognition.update(items["generated"], RATE, items["targets"])
        kl.update(items["generated"], items["reference"], RATE)
        memorization.update(items["generated"], RATE)
    memorized = memorization.compute()
    return {
        "fad": fad.compute().item(),
        "clap_score": score.compute().item(),
        "recognition": recognition.compute().item(),
        "per_label": recognition.per_label(),
        "kl": kl.compute().item(),
        "max_similarity": memorized["max_similarity"].item(),
        "copies": memorized["copies"].item(),
    }


def run_frozen_reference(parts):
    """The reference frozen from real audio (gathered over processes), reset, then generated audio added."""
    fad = FrechetAudioDistance(HashClap())
    for items in parts:
        fad.update(items["real"], RATE, real=True)
    stats = fad.freeze_reference()
    fad.reset()
    for items in parts:
        fad.update(items["generated"], RATE)
    return {"count": stats["count"].item(), "sum": stats["sum"].tolist(), "fad": fad.compute().item()}


def run_loaded_reference(parts, path):
    fad = FrechetAudioDistance(HashClap())
    fad.load_reference(path)
    for items in parts:
        fad.update(items["generated"], RATE)
    return {"fad": fad.compute().item()}


def run_infinity(parts):
    fad = FrechetAudioDistance(HashClap())
    for items in parts:
        fad.update(items["real"], RATE, real=True)
        fad.update(items["generated"], RATE)
    try:
        intercept, r2 = fad.compute_infinity(num_points=5, min_samples=4)
    except Exception as error:  # recorded, so that the other scenarios' results still come back
        return {"error": repr(error)}
    return {"fad_infinity": intercept.item(), "r2": r2.item()}


def worker(rank, port, out_dir, reference_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        parts = [part(dataset(), *SPLITS[rank])]
        results = {
            "metrics": run_metrics(parts),
            "frozen": run_frozen_reference(parts),
            "loaded": run_loaded_reference(parts, reference_path),
            "infinity": run_infinity(parts),  # last: a failure inside a sync leaves the metric synced
        }
        with open(f"{out_dir}/rank{rank}.json", "w") as file:
            json.dump(results, file)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_parts(batched):
    """The dataset in this process: in the two ranks' batches (`batched`) or in one batch."""
    data = dataset()
    return [part(data, *split) for split in SPLITS] if batched else [data]


def save_reference(path):
    fad = FrechetAudioDistance(HashClap())
    fad.update(dataset()["real"], RATE, real=True)
    fad.freeze_reference()
    fad.save_reference(path)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    reference_path = folder / "reference.pt"
    save_reference(reference_path)
    mp.start_processes(worker, args=(free_port(), str(folder), str(reference_path)), nprocs=2, join=True,
                       start_method="spawn")
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


def assert_same(distributed, single):
    assert distributed.keys() == single.keys()
    for key, value in single.items():
        if isinstance(value, dict):
            assert_same(distributed[key], value)
        else:
            assert distributed[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_metrics_over_two_processes_equal_one_process(ddp_results):
    single = run_metrics(single_process_parts(batched=False))
    assert 0 < single["copies"] < 1 and 0 < single["recognition"] < 1 and single["kl"] > 0  # not degenerate
    assert single["copies"] == pytest.approx(2 / ITEMS)
    for rank in range(2):
        assert_same(ddp_results[rank]["metrics"], single)


def test_metrics_over_two_processes_are_exact_for_the_same_batches(ddp_results):
    """Updated with the ranks' two batches in turn, one process adds the same two float64 partial sums as the gather
    (``0 + a + b`` and ``a + b`` are the same float), from bitwise equal float64 embeddings: the values are equal."""
    single = run_metrics(single_process_parts(batched=True))
    for rank in range(2):
        assert ddp_results[rank]["metrics"] == single


def test_frozen_reference_gathers_every_process(ddp_results):
    data = dataset()
    full_sum = HashClap()(data["real"], RATE).sum(0)
    single = run_frozen_reference(single_process_parts(batched=False))
    for rank in range(2):
        frozen = ddp_results[rank]["frozen"]
        assert frozen["count"] == ITEMS
        torch.testing.assert_close(torch.tensor(frozen["sum"], dtype=torch.float64), full_sum, rtol=1e-12,
                                   atol=1e-12)
        assert frozen["fad"] == pytest.approx(single["fad"], rel=1e-12)


def test_loaded_reference_is_not_double_counted(ddp_results, tmp_path):
    path = tmp_path / "reference.pt"
    save_reference(path)
    single = run_loaded_reference(single_process_parts(batched=False), path)
    # the value a reference summed over both processes would give: it differs, so the comparison below can fail
    stats = torch.load(path, weights_only=True)
    doubled = FrechetAudioDistance(HashClap())
    doubled.set_reference({name: 2 * stats[name] for name in ("sum", "outer_sum", "count")})
    doubled.update(dataset()["generated"], RATE)
    assert doubled.compute().item() != pytest.approx(single["fad"], rel=1e-6)
    for rank in range(2):
        assert ddp_results[rank]["loaded"]["fad"] == pytest.approx(single["fad"], rel=1e-12)


def test_fad_infinity_over_two_processes(ddp_results):
    """compute_infinity gathers the kept embeddings (in rank order, i.e. the dataset's order) and the reference.

    Subsets of 4 to 8 embeddings in 8 dimensions have singular covariances, whose zero eigenvalues come out as ±1e-16
    rounding noise; the square root turns that into ~1e-8, so a one-batch run agrees to ~1e-7 only. With the ranks'
    batches the statistics are bitwise equal and so are the results."""
    for batched, rel in ((True, 1e-12), (False, 1e-6)):
        single = run_infinity(single_process_parts(batched))
        assert "error" not in single and 0 <= single["r2"] <= 1
        for rank in range(2):
            assert ddp_results[rank]["infinity"] == pytest.approx(single, rel=rel)
