"""A run folder's layout: the one place that names its files, stage markers and locks.

A run lives in ``runs/<grid>/<run-id>/`` (after davidbau/dissect's ``resfile`` / ``done``
habit): every stage writes its outputs there atomically (:mod:`imbalens.io`) and then a
marker, so a grid loop resumes and skips finished work. No other module spells a run
folder's file names; they use the constants below or :class:`RunFolder`.

Layout of a run folder::

    config.yaml               resolved config (the grid writes it; train re-writes it)
    grid-run.json             the grid's record: config hash, grid name, run id
    run.lock                  held (flock) while a process writes into the folder
    checkpoints/last.pt       rolling checkpoint (resume), checkpoints/best.pt
    history.csv               one row per epoch
    predictions_<split>.csv   per-image probabilities (val, test)
    metrics_val.json, metrics.json   validation / test metrics
    train.done                training finished (train writes it)
    alignment.csv, alignment_summary.csv   CAM vs boxes (alignment stage)
    alignment.done            the alignment stage finished (its summary)
    concepts.json, concepts_channels.csv   dissection (concepts stage)
    concepts_images.csv       per-image Disjoint/Unique terms (the concepts' bootstrap)
    concepts.done             the concepts stage finished (its summary)
    baselines.csv             untrained / re-randomised / map baselines (alignment stage)
    concepts_baselines.csv    untrained / re-randomised Disjoint, Unique (concepts stage)
    sensitivity.csv           metrics under other q / layer / CAM choices (sensitivity page)
    analysis.done             ``imbalens analyse`` finished (both stages)
    <stage>.ipynb             executed notebook of each stage
    <stage>.stage.done        the grid's marker: the config hash the stage ran with
    provenance.json           versions, git commit (dirty?), config hash, CPU/GPU
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# ------------------------------------------------------------------ run-folder file names
CONFIG = "config.yaml"
RECORD = "grid-run.json"
LOCK = "run.lock"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
HISTORY = "history.csv"
PREDICTIONS = "predictions_{split}.csv"
METRICS = "metrics.json"
METRICS_VAL = "metrics_val.json"
TRAIN_DONE = "train.done"
ALIGNMENT = "alignment.csv"
ALIGNMENT_SUMMARY = "alignment_summary.csv"
CONCEPTS = "concepts.json"
CONCEPTS_CHANNELS = "concepts_channels.csv"
CONCEPTS_IMAGES = "concepts_images.csv"
ANALYSIS_DONE = "analysis.done"
ALIGNMENT_DONE = "alignment.done"
CONCEPTS_DONE = "concepts.done"
BASELINES = "baselines.csv"
CONCEPTS_BASELINES = "concepts_baselines.csv"
SENSITIVITY = "sensitivity.csv"
NOTEBOOK = "{stage}.ipynb"
STAGE_MARKER = "{stage}.stage.done"
#: package versions, git commit, config hash, machine (:mod:`imbalens.provenance`)
PROVENANCE = "provenance.json"

# ------------------------------------------------------------------ grid-folder file names
GRID_JSON = "grid.json"
GRID_LOCK = "grid.lock"
PAGES_DIR = "_pages"
STALE_DIR = ".stale"
#: Baselines shared by a grid's runs that differ only in their loss (the untrained model)
SHARED_DIR = ".shared"
#: a phantom folder's manifest (written by :mod:`imbalens.data.synth`)
PHANTOM_MANIFEST = "phantom.json"
#: a phantom folder's exact lesion masks (:class:`imbalens.data.synth.LesionMasks`)
PHANTOM_MASKS = "lesion_masks.npz"


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder.

    Example:
        >>> rf = RunFolder(Path("runs/quick/t-densenet-bce-multilabel-s0"))
        >>> rf.metrics.name, rf.notebook("train").name, rf.marker("train").name
        ('metrics.json', 'train.ipynb', 'train.stage.done')
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def _p(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self._p(CONFIG)

    @property
    def record(self) -> Path:
        return self._p(RECORD)

    @property
    def checkpoints(self) -> Path:
        return self._p(CHECKPOINTS)

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def history(self) -> Path:
        return self._p(HISTORY)

    def predictions(self, split: str) -> Path:
        return self._p(PREDICTIONS.format(split=split))

    @property
    def metrics(self) -> Path:
        return self._p(METRICS)

    @property
    def metrics_val(self) -> Path:
        return self._p(METRICS_VAL)

    @property
    def train_done(self) -> Path:
        return self._p(TRAIN_DONE)

    @property
    def alignment(self) -> Path:
        return self._p(ALIGNMENT)

    @property
    def alignment_summary(self) -> Path:
        return self._p(ALIGNMENT_SUMMARY)

    @property
    def concepts(self) -> Path:
        return self._p(CONCEPTS)

    @property
    def concepts_channels(self) -> Path:
        return self._p(CONCEPTS_CHANNELS)

    @property
    def concepts_images(self) -> Path:
        return self._p(CONCEPTS_IMAGES)

    @property
    def baselines(self) -> Path:
        return self._p(BASELINES)

    @property
    def concepts_baselines(self) -> Path:
        return self._p(CONCEPTS_BASELINES)

    @property
    def analysis_done(self) -> Path:
        return self._p(ANALYSIS_DONE)

    @property
    def alignment_done(self) -> Path:
        return self._p(ALIGNMENT_DONE)

    @property
    def concepts_done(self) -> Path:
        return self._p(CONCEPTS_DONE)

    @property
    def provenance(self) -> Path:
        return self._p(PROVENANCE)

    @property
    def lock_file(self) -> Path:
        return self._p(LOCK)

    def notebook(self, stage: str) -> Path:
        return self._p(NOTEBOOK.format(stage=stage))

    def marker(self, stage: str) -> Path:
        return self._p(STAGE_MARKER.format(stage=stage))

    def lock(self, what: str = "run") -> contextlib.AbstractContextManager[Path]:
        """Hold this folder's lock (see :func:`hold_lock`)."""
        return hold_lock(self.lock_file, what=what)


class LockHeld(RuntimeError):
    """Another live process holds a run or grid lock; the message names it."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "an unknown process"
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
        f"(started {info.get('started', '?')}: {info.get('what', '?')})"
    )


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike[str], what: str = "run") -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on ``path`` for the ``with`` block.

    The lock file records its holder (pid, host, start time, ``what``) so that a second
    process is refused with a message naming it. The kernel releases a ``flock`` when its
    holder dies, kill -9 included, so a stale lock file never blocks: the next process
    takes the lock over and rewrites the holder. ``flock`` works across hosts on NFSv4
    and Lustre shared file systems (the Dask grid's workers).

    Raises:
        LockHeld: another live process holds the lock.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LockHeld(
                f"{p.parent} is in use by {_holder(p)}; wait for it to finish or stop it "
                f"(a lock left by a killed process is taken over automatically)"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "what": what,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield p
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
