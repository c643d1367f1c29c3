"""The real backends whose tiny random checkpoints (`tests.tiny`) the cross-backend tests load: name -> (class path,
extra constructor arguments)."""

from __future__ import annotations

import importlib

BACKENDS = {  # name: (class path, extra constructor arguments)
    "audioldm": ("lightning_modules.models.AudioLDM", {}),
    "musicldm": ("lightning_modules.models.MusicLDM", {}),
    "audioldm2": ("lightning_modules.models.AudioLDM2", {}),
    "stable_audio": ("lightning_modules.models.StableAudioOpen", {}),
    "musicgen": ("lightning_modules.models.MusicGen", {"duration": 0.25}),
}


def backend_class(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)
