"""Metrics and embedders."""

from lightning_modules.metrics.clap import ClapEmbedder

__all__ = ["ClapEmbedder"]
