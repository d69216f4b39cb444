"""The ``imbalens`` command line: one sub-command per module, found in a registry.

Each registered module exposes ``configure_parser(parser)`` (adds its flags) and
``cli(args) -> int`` (runs it). Adding a command is one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("imbalens.data.synth", "write the chest-radiograph phantom in NIH's layout"),
    "train": ("imbalens.training.train", "train one run from a YAML config"),
    "evaluate": ("imbalens.training.evaluate", "evaluate a trained run's best checkpoint"),
    "analyse": ("imbalens.explain.analyse", "performance, CAM alignment and concepts of a run"),
    "grid": ("imbalens.study.grid", "run a grid of notebooks with papermill"),
    "book": ("imbalens.study.book", "assemble executed notebooks into the Jupyter Book"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported to add its flags.

    Importing lazily keeps ``imbalens --help`` fast and lets one command run while another
    module cannot be imported (its error then shows only when that command is used).
    """
    parser = argparse.ArgumentParser(prog="imbalens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    except Exception as exc:  # a handled condition: one line naming the file, no traceback
        if f"{type(exc).__module__}.{type(exc).__qualname__}" not in HANDLED:
            raise
        logging.getLogger("imbalens").error("%s", exc)
        return 2


#: Errors whose message already names the file/key and the fix: shown without traceback.
HANDLED = frozenset(
    {
        "imbalens.config.ConfigError",
        "imbalens.data.nih.DataError",
        "imbalens.data.synth.ForeignFolder",
        "imbalens.runfolder.LockHeld",
        "imbalens.training.checkpoint.CorruptCheckpoint",
    }
)


if __name__ == "__main__":
    sys.exit(main())
