"""The typed errors the ``training`` package raises (the CLI turns them into a message + exit code)."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of every error ``training`` raises on bad input or an unusable environment."""


class ConfigError(TrainingError):
    """A model config or recipe option is unknown, malformed or inconsistent."""


class DataError(TrainingError):
    """A pairs file, caption file or image is missing, malformed or empty after filtering."""


class EncoderLoadError(TrainingError):
    """An encoder spec cannot be resolved or loaded (missing folder, hub unreachable, bad weights)."""
