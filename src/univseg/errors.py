"""Errors caused by user input, with one common base and structured fields.

Every problem a user can fix (a config key, a file, a checkpoint, a dataset name) raises a
:class:`UnivsegError`. The command line catches the base class and prints the message without a
traceback (exit 2); tools such as ``univseg data check`` read the fields instead of parsing text.

Fields (all optional): ``path`` (the file or folder concerned), ``key`` (the dotted config key),
``values`` (the offending values, e.g. ``{raw label value: pixel count}``) and ``hint`` (what to
do). The message is complete on its own; the fields repeat its parts in machine-readable form.

This module imports nothing from univseg, so every layer (data, models, losses, engine, config)
can raise these errors without importing each other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


class UnivsegError(Exception):
    """A problem with the user's input; ``str(e)`` is the message a user sees."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        key: str | None = None,
        values: Any = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.key = key
        self.values = values
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(UnivsegError, ValueError):
    """A configuration problem; ``key`` is the dotted path of the offending key."""


class UnknownNameError(UnivsegError, KeyError):
    """A registry lookup missed; the message lists close and available names."""


class DataError(UnivsegError, RuntimeError):
    """A dataset problem (missing, unreadable or inconsistent files); ``path`` names the file."""


class MissingFileError(DataError):
    """A file or folder the data needs does not exist (a root, a split, a label)."""


class MissingLabelError(MissingFileError):
    """An image whose label file is missing; ``path`` is the expected label file."""


class UnreadableFileError(DataError):
    """A file exists but cannot be decoded (corrupt, truncated, wrong format or mode)."""


class LabelValueError(DataError):
    """A label holds values outside its label space; ``values`` maps raw value -> pixel count."""


class SizeMismatchError(DataError):
    """An image and its label differ in size; ``values`` is ``{"image": (h, w), "label": (h, w)}``."""


class CheckpointError(UnivsegError, RuntimeError):
    """An unreadable or incompatible checkpoint; ``path`` is the file."""


class WriteError(UnivsegError, OSError):
    """An output file (checkpoint, prediction, result) could not be written, e.g. the disk is full;
    ``path`` is the file, which is left as it was before the write."""


class WorkDirError(UnivsegError, RuntimeError):
    """A training work dir that holds another run or is in use by another process; ``path`` is the folder."""


class TrainingDivergedError(UnivsegError, FloatingPointError):
    """The loss stayed non-finite for ``train.max_bad_steps`` steps in a row; ``values`` names the terms."""


#: exit status of a run stopped by SIGTERM / SIGINT after writing its checkpoint (EX_TEMPFAIL: retry it)
EXIT_STOPPED = 75


class TrainingStopped(UnivsegError):
    """A run stopped on request (a signal) after checkpointing ``iteration``; it continues with --resume."""

    def __init__(self, message: str, iteration: int, signal_name: str, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.iteration = iteration
        self.signal_name = signal_name


class StopRequested(Exception):
    """Raised between the batches of a long pass (evaluation, the centroid pass) when a stop signal
    has arrived; the trainer checkpoints the last finished step and raises :class:`TrainingStopped`.
    Control flow inside training, not a user error."""


class DownloadError(UnivsegError, RuntimeError):
    """A dataset download or extraction failed."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its published checksum."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the target folder (or is a link/device)."""


class GatedDatasetError(DownloadError):
    """The dataset needs a registration; the message says where and which files go where."""
