"""The Colab notebooks execute top to bottom on the tiny run's workdir and show their figures."""

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # not in the inner loop (tests/conftest.py)

COLAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colab")


def _execute(name: str, workdir: str, monkeypatch) -> list[dict]:
    """Run colab/<name> in a python3 kernel of this interpreter (the venv) with GANDL_WORKDIR set."""
    monkeypatch.setenv("GANDL_WORKDIR", workdir)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": COLAB}}).execute()
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _images(outputs: list[dict]) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs)


@pytest.mark.parametrize("name,min_images,texts", [
    ("inspect_training.ipynb", 5, ["step 20: 16 px", "g_loss"]),  # grid, loss plot, 3 interpolation strips
    ("analyze_embeddings.ipynb", 12, ["GAN-DL", "zero-shot cell type: accuracy", "Remdesivir"]),
])
def test_notebook_runs_and_shows_its_figures(name, min_images, texts, tiny_run, monkeypatch):
    outputs = _execute(name, str(tiny_run[1]), monkeypatch)
    assert not [out for out in outputs if out.output_type == "error"]
    assert _images(outputs) >= min_images
    text = "".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")) for out in outputs)
    for expected in texts:
        assert expected in text, expected
