"""DataModules, manifests, audio loading and the toy corpus."""

import lightning_modules  # noqa: F401  (checks the torch / torchaudio pair before torchaudio loads)
from datamodules.audio_text import AudioTextDataModule
from datamodules.forget_retain import ForgetRetainDataModule
from datamodules.manifest import ManifestItem, read_manifest, write_manifest
from datamodules.source import DataSource
from datamodules.toy_corpus import ToyCorpus

__all__ = ["AudioTextDataModule", "DataSource", "ForgetRetainDataModule", "ManifestItem", "ToyCorpus",
           "read_manifest", "write_manifest"]
