"""Shared plumbing of the readers and writers: the error type and atomic writes."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class FormatError(ValueError):
    """A file or folder that cannot be read as the format it claims to be.

    The message names the file and the problem.
    """


def as_path(path: str | os.PathLike, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _temporary_sibling(path: Path, suffix: str) -> Path:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the parent folder {path.parent} does not exist")
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial{suffix}"


@contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, else delete it.

    Args:
        path: the final file.
        suffix: ending the temporary name must keep (e.g. ".nii.gz", so that a
            library choosing the format by extension writes the right one).
    """
    temporary = _temporary_sibling(path, suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, else it is removed.

    Args:
        path: the final folder.
        overwrite: replace an existing `path`; without it an existing path is an error.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    temporary = _temporary_sibling(path, "")
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            retired = _temporary_sibling(path, ".old")
            os.replace(path, retired)
            os.replace(temporary, path)
            if retired.is_dir():
                shutil.rmtree(retired)
            else:
                retired.unlink()
        else:
            os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def save_npy(array: np.ndarray, path: Path) -> None:
    """np.save without numpy appending ".npy" to the name (temporary files keep theirs)."""
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def load_npy(path: Path, what: str) -> np.ndarray:
    """np.load of a plain (non-pickled) array, with errors that name the file.

    Args:
        path: the .npy file.
        what: what the file should hold, for the messages (e.g. "projection").
    """
    if not path.is_file():
        raise FormatError(f"{path}: {what} file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise FormatError(f"{path}: cannot read the {what} .npy file ({error})") from error
    if not isinstance(array, np.ndarray):
        raise FormatError(f"{path}: expected a single .npy array for the {what}, got an archive")
    return array


def check_array(array: np.ndarray, shape: tuple, where: str, what: str) -> np.ndarray:
    """Check shape, real numeric dtype and finiteness; return it as float32.

    Args:
        array: what was read.
        shape: the expected shape.
        where: the file (for the message).
        what: what the array is (for the message).
    """
    if tuple(array.shape) != tuple(shape):
        raise FormatError(
            f"{where}: {what} has shape {tuple(array.shape)}, expected {tuple(shape)}"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise FormatError(f"{where}: {what} has dtype {array.dtype}, expected real numbers")
    if not np.all(np.isfinite(array)):
        raise FormatError(f"{where}: {what} contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)
