"""imbalens.study.notebooks: reading a jupytext source, tagging and checking executed cells."""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
import pytest

from imbalens.study.notebooks import (
    INJECTED_TAG,
    KERNEL_NAME,
    PARAMETERS_TAG,
    error_outputs,
    read_source,
    record_paths,
    tag_cells,
)

SOURCE = textwrap.dedent(
    """\
    # ---
    # jupyter:
    #   jupytext:
    #     formats: ipynb,py:percent
    # ---

    # %% [markdown]
    # # A page

    # %% tags=["parameters"]
    run_dir = "runs/smoke/x"

    # %%
    print(run_dir)
    """
)


def test_read_source_finds_the_parameters_cell_and_sets_the_kernel(tmp_path: Path) -> None:
    p = tmp_path / "page.py"
    p.write_text(SOURCE)
    nb = read_source(p)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code", "code"]
    assert nb.cells[1].metadata["tags"] == [PARAMETERS_TAG]
    assert nb.cells[1].source == 'run_dir = "runs/smoke/x"'
    assert nb.metadata["kernelspec"]["name"] == KERNEL_NAME
    assert "jupytext" not in nb.metadata  # no pairing metadata in executed copies


def test_read_source_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.py"):
        read_source(tmp_path / "missing.py")
    p = tmp_path / "bare.py"
    p.write_text("# %%\nx = 1\n")
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        read_source(p)


def test_tag_cells_adds_tags_by_existing_tags_once() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("a = 1", metadata={"tags": [INJECTED_TAG]}),
        nbformat.v4.new_code_cell("b = 2", metadata={"tags": [PARAMETERS_TAG, "remove-cell"]}),
        nbformat.v4.new_code_cell("c = 3"),
    ]
    rules = {INJECTED_TAG: ("remove-cell",), PARAMETERS_TAG: ("remove-cell",)}
    assert tag_cells(nb, rules) == 1  # the second cell already has the tag
    assert nb.cells[0].metadata["tags"] == [INJECTED_TAG, "remove-cell"]
    assert nb.cells[1].metadata["tags"] == [PARAMETERS_TAG, "remove-cell"]
    assert "tags" not in nb.cells[2].metadata
    assert tag_cells(nb, rules) == 0  # idempotent


def test_error_outputs_lists_ename_and_evalue() -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell(
            "1/0",
            outputs=[
                nbformat.v4.new_output("stream", name="stdout", text="hi"),
                nbformat.v4.new_output(
                    "error", ename="ZeroDivisionError", evalue="division by zero", traceback=[]
                ),
            ],
        ),
    ]
    assert error_outputs(nb) == ["ZeroDivisionError: division by zero"]
    nb.cells.pop()
    assert error_outputs(nb) == []


def test_record_paths_names_the_real_source_and_output(tmp_path: Path) -> None:
    partial = tmp_path / ".train.ipynb.partial"
    nbformat.write(nbformat.v4.new_notebook(), partial)
    record_paths(partial, tmp_path / "book" / "train.py", tmp_path / "run" / "train.ipynb")
    meta = nbformat.read(partial, as_version=4).metadata["papermill"]
    assert meta == {
        "input_path": str((tmp_path / "book" / "train.py").resolve()),
        "output_path": str((tmp_path / "run" / "train.ipynb").resolve()),
    }


def test_source_without_parameters_cell_is_an_error(tmp_path: Path) -> None:
    from imbalens.study.notebooks import read_source

    p = tmp_path / "x.py"
    p.write_text(textwrap.dedent("# %%\nx = 1\n"))
    with pytest.raises(ValueError, match="parameters"):
        read_source(p)


def test_kernel_manager_ipc_and_no_sigint_before_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from jupyter_client.manager import AsyncKernelManager

    from imbalens.study.notebooks import kernel_manager_class

    cls = kernel_manager_class()
    assert cls is not None  # POSIX with a short runtime path
    km = cls(kernel_name="python3")
    assert km.transport == "ipc"
    calls: list[int] = []

    async def interrupt(self: AsyncKernelManager) -> None:
        calls.append(1)

    monkeypatch.setattr(AsyncKernelManager, "_async_interrupt_kernel", interrupt)
    km.shutting_down = True  # what shutdown_kernel sets before it interrupts
    asyncio.run(km._async_interrupt_kernel())
    assert calls == []
    km.shutting_down = False  # an interrupt asked for while running still goes through
    asyncio.run(km._async_interrupt_kernel())
    assert calls == [1]
