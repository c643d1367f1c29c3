"""Importing the package checks that torch and torchaudio are a matched pair."""

from __future__ import annotations

import pytest

import lightning_modules


def test_mismatched_torch_and_torchaudio_raise_a_clear_error(monkeypatch):
    versions = {"torch": "2.13.0+cpu", "torchaudio": "2.11.0"}
    monkeypatch.setattr(lightning_modules, "version", versions.__getitem__)
    with pytest.raises(ImportError, match=r"torch 2\.13\.0\+cpu and torchaudio 2\.11\.0 are not a matched pair.*"
                                          r"torchaudio 2\.11 needs torch 2\.11"):
        lightning_modules._check_torch_pair()


def test_matched_pair_passes(monkeypatch):
    versions = {"torch": "2.11.0+cu130", "torchaudio": "2.11.0"}
    monkeypatch.setattr(lightning_modules, "version", versions.__getitem__)
    lightning_modules._check_torch_pair()
