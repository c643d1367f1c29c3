"""The real backends as tiny random checkpoints in their native formats, for the tests that run every method and the
evaluation through each of them (`tiny_backend`, one saved folder per backend and module)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.lightning_modules.backends import BACKENDS


@pytest.fixture(scope="module", params=list(BACKENDS))
def tiny_backend(request, tmp_path_factory) -> tuple[str, Path, dict]:
    folder = tmp_path_factory.mktemp(request.param)
    importlib.import_module(f"tests.tiny.{request.param}").save_tiny(folder)
    class_path, kwargs = BACKENDS[request.param]
    return class_path, folder, kwargs
