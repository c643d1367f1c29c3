"""ttm-unlearning: unlearning, evaluation and training-data attribution for text-to-music models, on Lightning."""

from importlib.metadata import PackageNotFoundError, version


def _check_torch_pair() -> None:
    """torchaudio only loads with the torch release it was built for: say so before a cryptic import error."""
    try:
        torch_version, torchaudio_version = version("torch"), version("torchaudio")
    except PackageNotFoundError as err:
        raise ImportError(f"{err.name} is not installed: pip install -e . installs the matched pair.") from err

    def release(text: str) -> tuple[str, ...]:
        return tuple(text.split("+")[0].split(".")[:2])

    if release(torch_version) != release(torchaudio_version):
        raise ImportError(
            f"torch {torch_version} and torchaudio {torchaudio_version} are not a matched pair: torchaudio "
            f"{'.'.join(release(torchaudio_version))} needs torch {'.'.join(release(torchaudio_version))}. Install the "
            "pair pinned in pyproject.toml: pip install 'torch==2.11.*' 'torchaudio==2.11.*'"
        )


_check_torch_pair()
