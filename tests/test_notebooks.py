"""Every teaching notebook runs top to bottom, failing on any error.

The suite runs the notebooks' shorter version (``SSL_ZOO_NOTEBOOK_QUICK=1``: fewer steps,
the same cells); the outputs committed under notebooks/ come from the full run.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_listed():
    # The list notebooks/README.md's table describes: a notebook added or renamed updates both.
    assert [p.name for p in NOTEBOOKS] == [
        "01_simclr_from_scratch.ipynb", "02_byol_without_negatives.ipynb",
        "03_clip_zero_shot.ipynb", "04_compare_methods.ipynb",
        "05_zero_shot_vs_few_shot_and_shift.ipynb", "06_dense_zero_shot.ipynb",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_ZOO_NOTEBOOK_QUICK", "1")
    notebook = nbformat.read(path, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, on the first error.
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any(o.output_type == "display_data" for o in outputs)  # it drew its plots
    assert not [o for o in outputs if o.output_type == "error"]
