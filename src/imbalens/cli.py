"""The ``imbalens`` command line: one sub-command per module, found in a registry.

Each registered module exposes ``configure_parser(parser)`` (adds its flags) and
``cli(args) -> int`` (runs it). Adding a command is one line in :data:`COMMANDS`.
A user error (a missing folder, a bad config value, a held lock; :data:`USER_ERRORS`)
prints one line, ``imbalens <command>: error: <message>``, and exits 2; ``-v`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from imbalens import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("imbalens.data.synth", "write the chest-radiograph phantom in NIH's layout"),
    "prepare": ("imbalens.data.prepared", "decode and resize a data set once into uint8 shards"),
    "train": ("imbalens.training.train", "train one run from a YAML config"),
    "evaluate": ("imbalens.training.evaluate", "evaluate a trained run's best checkpoint"),
    "analyse": ("imbalens.explain.analyse", "performance, CAM alignment and concepts of a run"),
    "grid": ("imbalens.study.grid", "run a grid of notebooks with papermill"),
    "book": ("imbalens.study.book", "assemble executed notebooks into the Jupyter Book"),
}


#: the project's user-facing error types, by module; a module not imported yet cannot
#: have raised its error, so only imported ones are consulted (keeps the CLI light)
USER_ERRORS: dict[str, tuple[str, ...]] = {
    "imbalens.config": ("ConfigError",),
    "imbalens.data.nih": ("DataError",),
    "imbalens.data.synth": ("ForeignFolder",),
    "imbalens.data.prepared": ("StaleCache",),
    "imbalens.runfolder": ("LockHeld",),
    "imbalens.training.checkpoint": ("CorruptCheckpoint",),
    "imbalens.study.book": ("BookError",),
    "imbalens.study.notebooks": ("NotebookFailed",),
}


def user_error_types() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS` resolved in the imported modules, plus missing files."""
    found: list[type[BaseException]] = [FileNotFoundError, NotADirectoryError]
    for module, names in USER_ERRORS.items():
        mod = sys.modules.get(module)
        found += [getattr(mod, n) for n in names if mod is not None and hasattr(mod, n)]
    return tuple(found)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported to add its flags.

    Importing lazily keeps ``imbalens --help`` fast and lets one command run while another
    module cannot be imported (its error then shows only when that command is used).
    """
    parser = argparse.ArgumentParser(prog="imbalens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"imbalens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).configure_parser(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imbalens`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(importlib.import_module(args._module).cli(args) or 0)
    except Exception as exc:  # a handled condition: its message names the file/key and the fix
        if args.verbose or not isinstance(exc, user_error_types()):
            raise
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        sys.stderr.write(f"imbalens {args.command}: error: " + "\n  ".join(lines) + "\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
