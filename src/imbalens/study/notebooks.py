"""Executing the book's jupytext notebooks with papermill, atomically.

The notebooks in ``book/`` are jupytext percent-format ``.py`` files (the source). They
are read into an in-memory notebook, given a ``python3`` kernelspec, and executed by
papermill with the parameters injected after the cell tagged ``parameters``. Papermill
saves after every cell, so it writes to a hidden temporary name in the destination
folder; only a notebook that ran to the end is renamed to its final name, a failed one
is kept as ``<name>.failed.ipynb`` for reading, and an interrupted one is removed. The
source ``.py`` is never written back (no ``jupytext --sync`` after papermill).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jupytext
import nbformat

from imbalens.io import atomic_path

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"
#: Cell tags that the book hides (papermill adds ``injected-parameters``).
INJECTED_TAG = "injected-parameters"
PARAMETERS_TAG = "parameters"


class NotebookFailed(RuntimeError):
    """A notebook raised in one of its cells; ``failed_path`` holds the executed copy."""

    def __init__(self, message: str, failed_path: Path | None) -> None:
        super().__init__(message)
        self.failed_path = failed_path


@dataclass(frozen=True)
class Execution:
    """The outcome of one notebook execution."""

    output: Path
    seconds: float


def read_source(path: str | os.PathLike[str]) -> nbformat.NotebookNode:
    """Read a jupytext ``.py`` (or an ``.ipynb``) into a notebook with a python3 kernelspec.

    Raises:
        FileNotFoundError: naming the missing notebook source.
        ValueError: when the notebook has no cell tagged ``parameters``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"notebook source {p} does not exist")
    nb = jupytext.read(p)
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nb.metadata.setdefault("language_info", {"name": "python"})
    nb.metadata.pop("jupytext", None)
    if not any(PARAMETERS_TAG in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        raise ValueError(
            f"notebook {p} has no cell tagged 'parameters' (add `# %% tags=[\"parameters\"]`)"
        )
    return nb


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (``PR_SET_PDEATHSIG``).

    Used by the grid's pool workers and, through the kernel manager below, by every
    notebook kernel: a kill -9 of the grid then leaves no orphan writing into run folders.
    ``parent``: the expected parent pid; if it is already gone, this process exits now.
    Returns False where ``prctl`` is unavailable (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before prctl took effect
    return True


def _kernel_preexec() -> None:  # runs in the forked kernel, before exec
    die_with_parent()


#: Longest IPC socket path used (Unix sockets allow ~107 bytes; the kernel adds "-<n>").
_IPC_PATH_MAX = 96


@functools.cache
def kernel_manager_class() -> type | None:
    """The kernel manager for papermill: local IPC sockets instead of TCP ports.

    Built once per process (the grid executes many notebooks).

    Kernels started this way listen on no network port, and ipykernel (>= 7) prints no
    "Kernel is running over TCP without encryption" warning for each of the grid's
    notebooks. Returns ``None`` (jupyter_client's default, TCP) where IPC sockets are
    unavailable (Windows) or the runtime folder's path is too long for a Unix socket.
    """
    if os.name != "posix":
        return None
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    longest = os.path.join(jupyter_runtime_dir(), "kernel-" + "x" * 36 + "-ipc-99")
    if len(longest.encode()) > _IPC_PATH_MAX:
        return None

    class IPCKernelManager(AsyncKernelManager):
        """``AsyncKernelManager`` with ``transport = "ipc"`` by default.

        Its kernels die with the process that started them (``PR_SET_PDEATHSIG``, see
        :func:`die_with_parent`). It also sends no SIGINT ahead of the shutdown request: papermill shuts a kernel
        down once every cell has run, and the interrupt then only made the kernel log
        "KeyboardInterrupt caught in kernel" now and then. A busy kernel still gets
        SIGTERM and SIGKILL (``shutdown_wait_time``).
        """

        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            kw.setdefault("preexec_fn", _kernel_preexec)  # the kernel dies with us
            await super()._async_launch_kernel(kernel_cmd, **kw)

        async def _async_interrupt_kernel(self) -> None:
            if getattr(self, "shutting_down", False):
                return
            await super()._async_interrupt_kernel()

    return IPCKernelManager


def remove_dead_kernel_sockets() -> list[Path]:
    """Delete the IPC socket files (``kernel-*-ipc-*``) of kernels that no longer run.

    A killed kernel leaves its sockets in Jupyter's runtime folder. A socket nobody
    listens on refuses a connection (``ECONNREFUSED``), so only those are removed; a live
    kernel's sockets accept and are kept. Returns the removed paths.
    """
    import socket
    import stat

    from jupyter_core.paths import jupyter_runtime_dir

    gone: list[Path] = []
    for path in Path(jupyter_runtime_dir()).glob("kernel-*-ipc-*"):
        try:
            if not stat.S_ISSOCK(path.lstat().st_mode):
                continue
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
            gone.append(path)
        except OSError:
            continue
    if gone:
        log.info("removed %d socket file(s) of killed kernels", len(gone))
    return gone


def _is_interrupt(exc: BaseException) -> bool:
    """True when a papermill failure was a KeyboardInterrupt inside the kernel."""
    return getattr(exc, "ename", None) == "KeyboardInterrupt"


def execute(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    cwd: str | os.PathLike[str] | None = None,
    start_timeout: int = 120,
) -> Execution:
    """Execute the notebook ``source`` with ``parameters`` into ``output``, atomically.

    The executed notebook is first written to ``.<stem>.partial.ipynb`` beside ``output``;
    on success it is renamed to ``output``; on a cell error it is renamed to
    ``<stem>.failed.ipynb`` and :class:`NotebookFailed` is raised; on an interrupt
    (``KeyboardInterrupt`` here or in the kernel) the partial file is removed and
    ``KeyboardInterrupt`` is raised. A previous ``<stem>.failed.ipynb`` is removed
    when the notebook succeeds.
    """
    import papermill

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial.ipynb")
    failed = out.with_name(f"{out.stem}.failed.ipynb")
    nb = read_source(source)
    manager = kernel_manager_class()
    extra: dict[str, Any] = {"kernel_manager_class": manager} if manager is not None else {}
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            nb,
            str(partial),
            parameters=dict(parameters),
            kernel_name=KERNEL_NAME,
            progress_bar=False,
            cwd=str(cwd) if cwd is not None else None,
            start_timeout=start_timeout,
            **extra,
        )
    except KeyboardInterrupt:
        partial.unlink(missing_ok=True)
        raise
    except Exception as exc:
        if _is_interrupt(exc):
            partial.unlink(missing_ok=True)
            raise KeyboardInterrupt from exc
        kept: Path | None = None
        if partial.exists():
            record_paths(partial, source, failed)
            os.replace(partial, failed)
            kept = failed
        first = str(exc).strip().splitlines()
        reason = next((line for line in reversed(first) if line.strip()), type(exc).__name__)
        raise NotebookFailed(f"{Path(source).name}: {reason}", kept) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    record_paths(partial, source, out)
    os.replace(partial, out)
    failed.unlink(missing_ok=True)
    return Execution(out, time.perf_counter() - t0)


def record_paths(
    notebook: str | os.PathLike[str],
    source: str | os.PathLike[str],
    final: str | os.PathLike[str],
) -> None:
    """Set ``metadata.papermill.input_path``/``output_path`` to the real source and name.

    Papermill records what it was given: the in-memory notebook read from the jupytext
    source (a whole notebook dict) and the hidden ``.partial`` name it saved to.
    """
    p = Path(notebook)
    try:
        nb = nbformat.read(p, as_version=4)
    except (OSError, ValueError) as exc:  # an unreadable partial is reported by the caller
        log.debug("record_paths: %s unreadable (%s)", p, exc)
        return
    pm = nb.metadata.setdefault("papermill", {})
    pm["input_path"] = str(Path(source).resolve())
    pm["output_path"] = str(Path(final).resolve())
    with atomic_path(p) as tmp:
        nbformat.write(nb, str(tmp))


def tag_cells(nb: nbformat.NotebookNode, rules: Mapping[str, tuple[str, ...]]) -> int:
    """Add tags to cells by their existing tags (e.g. ``{"injected-parameters": ("remove-cell",)}``).

    Returns the number of cells changed.
    """
    changed = 0
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        extra = [t for src, add in rules.items() if src in tags for t in add if t not in tags]
        if extra:
            cell.setdefault("metadata", {})["tags"] = tags + list(dict.fromkeys(extra))
            changed += 1
    return changed


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """The ``ename: evalue`` of every error output in an executed notebook."""
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb.cells
        if c.get("cell_type") == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
