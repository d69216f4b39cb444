"""The ``imbalens`` command line (imbalens.cli): version, registry, user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import imbalens
from imbalens.cli import COMMANDS, USER_ERRORS, build_parser, main, user_error_types

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imbalens.cli", *args], capture_output=True, text=True, check=False
    )


def test_cli_version_matches_pyproject() -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"imbalens {version}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("analyse", "/nonexistent"), "/nonexistent"),
        (("evaluate", "/nonexistent"), "/nonexistent"),
        (("train", "--config", "/nonexistent.yaml", "--out", "/tmp/x"), "/nonexistent.yaml"),
    ],
)
def test_cli_user_error_is_one_line_without_traceback(args: tuple[str, ...], needle: str) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"imbalens {args[0]}: error: "), lines
    assert needle in lines[0]


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"imbalens {imbalens.__version__}"


def test_unknown_subcommand_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    proc = _cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_every_registered_command_has_a_parser_and_a_cli() -> None:
    import importlib

    assert list(COMMANDS) == ["synth", "prepare", "train", "evaluate", "analyse", "grid", "book"]
    for module, _help in COMMANDS.values():
        mod = importlib.import_module(module)
        assert callable(mod.configure_parser) and callable(mod.cli), module
    args = build_parser("synth").parse_args(["synth", "--out", "/tmp/x", "--images", "12"])
    assert args.command == "synth" and args._module == "imbalens.data.synth"
    assert args.out == Path("/tmp/x") and args.images == 12


def test_user_error_types_are_the_imported_modules_errors() -> None:
    import imbalens.config

    found = user_error_types()
    assert found[:2] == (FileNotFoundError, NotADirectoryError)
    assert imbalens.config.ConfigError in found
    for module, names in USER_ERRORS.items():
        mod = sys.modules.get(module)
        for name in names:
            assert (getattr(mod, name) in found) == (mod is not None), (module, name)
