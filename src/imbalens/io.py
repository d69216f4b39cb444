"""Atomic file writes: nothing half-written ever carries its final name.

Every result file of a run (configs, metrics, tables, checkpoints, executed notebooks) is
written through :func:`atomic_path`: the bytes go to a temporary file in the same folder,
which is renamed over the target (``os.replace``, atomic on POSIX) only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, rename it over ``path``.

    Nothing half-written ever carries the final name: an exception (or a kill) leaves
    the previous file, if any, untouched. The new file gets the usual permissions of a
    newly created file (0o666 minus the umask), not ``mkstemp``'s private 0o600, so
    results stay readable by collaborators on shared clusters.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Write a dict as indented JSON with a final newline (NaN kept as ``NaN``),
    atomically (see :func:`atomic_path`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(
    path: str | os.PathLike[str], frame: pd.DataFrame, float_format: str | None = None
) -> None:
    """Write a data frame as CSV without its index, atomically (see :func:`atomic_path`)."""
    atomic_write_text(path, frame.to_csv(index=False, float_format=float_format))
