"""Where the project's own files live: the repository root, the notebook sources.

The package is installed editable from a checkout (``pip install -e .``), so the root is
the folder three levels above this file that holds ``pyproject.toml``. ``$IMBALENS_REPO``
overrides it (a book built from another checkout, tests in a temporary copy).
"""

from __future__ import annotations

import os
from pathlib import Path

#: the checkout this package was installed from
REPO: Path = Path(__file__).resolve().parents[2]
#: the notebook sources (jupytext percent ``.py``) and the book's pages
NOTEBOOK_DIR: Path = REPO / "book"


def repo_root() -> Path:
    """The repository root: ``$IMBALENS_REPO`` if set, else :data:`REPO` when it holds
    ``pyproject.toml``, else the current directory (an installed, non-editable copy)."""
    env = os.environ.get("IMBALENS_REPO")
    if env:
        return Path(env)
    return REPO if (REPO / "pyproject.toml").is_file() else Path.cwd()


def repo_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when absolute, else resolved against :func:`repo_root`."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p
