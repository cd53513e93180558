"""The teaching notebooks: committed executed (outputs and figures), and still running.

Each notebook is re-executed with nbclient in quick mode (`KERASRNN_NOTEBOOK_QUICK=1`: the
bundled sample, a few hundred digits, one epoch), in memory: the committed file is never
written. The committed outputs come from a full run (see each notebook's first cell).
"""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks"
)
NOTEBOOKS = ("01_rnn_from_scratch.ipynb", "02_train_and_tune.ipynb", "03_deploy_to_edge.ipynb")


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def _code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _outputs(notebook):
    for cell in _code_cells(notebook):
        yield from cell.outputs


def _has_png(notebook) -> bool:
    return any("image/png" in output.get("data", {}) for output in _outputs(notebook))


def test_notebooks_folder_holds_exactly_the_three_notebooks():
    found = sorted(name for name in os.listdir(NOTEBOOK_DIR) if name.endswith(".ipynb"))
    assert found == list(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_was_executed_top_to_bottom(name):
    cells = _code_cells(_read(name))
    assert cells, f"{name} has no code cells"
    for number, cell in enumerate(cells, start=1):
        first_line = cell.source.splitlines()[0] if cell.source else ""
        assert cell.execution_count == number, (
            f"{name}: code cell {number} ({first_line!r}) has execution count "
            f"{cell.execution_count}: execute the whole notebook in one kernel before committing"
        )
        assert cell.outputs, f"{name}: code cell {number} ({first_line!r}) has no output"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_holds_a_png_figure(name):
    assert _has_png(_read(name)), f"{name} holds no image/png output"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_shows_no_error_stderr_or_temporary_path(name):
    for output in _outputs(_read(name)):
        assert output.output_type != "error", f"{name}: {output.ename}: {output.evalue}"
        if output.output_type == "stream":
            assert output.name == "stdout", f"{name} shows stderr: {output.text[:300]!r}"
            assert "/tmp/" not in output.text, f"{name} prints a temporary path"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_in_quick_mode_and_leaves_no_files(name, monkeypatch):
    monkeypatch.setenv("KERASRNN_NOTEBOOK_QUICK", "1")
    before = sorted(os.listdir(NOTEBOOK_DIR))
    notebook = _read(name)  # executed in memory; the committed file is never written
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": NOTEBOOK_DIR}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    assert all(cell.execution_count for cell in _code_cells(notebook))
    assert _has_png(notebook), f"{name} drew no figure in quick mode"
    assert sorted(os.listdir(NOTEBOOK_DIR)) == before, f"{name} left files in notebooks/"
