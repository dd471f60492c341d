"""examples/tutorial.ipynb runs top to bottom with its small settings and shows the decomposition
log p(x) = ELBO + KL(q(z|x) || p(z|x)) in numbers; the committed copy holds a full-settings run."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "tutorial.ipynb"


def output_text(nb) -> str:
    """Every code cell's printed and displayed text, in order."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif out.get("output_type") in ("execute_result", "display_data"):
                parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def errors(nb) -> list[str]:
    """What went wrong in the notebook's outputs: every error, and whatever a cell wrote to stderr
    (a warning or a traceback a reader would see; the tutorial writes nothing there)."""
    found = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                found.append(f"cell {index}: {out.get('ename')}: {out.get('evalue')}")
            elif out.get("output_type") == "stream" and out.get("name") == "stderr":
                found.append(f"cell {index} wrote to stderr: {out.get('text', '')[:500]}")
    return found


def has_image(nb) -> bool:
    return any("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def number_after(label: str, text: str) -> float:
    found = re.findall(rf"^{re.escape(label)}\s*(\S+)\s*$", text, flags=re.MULTILINE)
    assert found, f"no line '{label} <number>' in the notebook's outputs"
    return float(found[-1])


def check_decomposition(text: str) -> None:
    for expected in ("log p(x)", "+ KL(q(z|x) || p(z|x))", "exact: quadrature", "importance sampled",
                     "= E_q[log p(x|z)]", "- KL(q(z|x) || p(z))", "max |z - (mu + sigma * eps)| = 0.0e+00",
                     "N(0, I)", "mixture of 10", "mixture minus N(0, I)"):
        assert expected in text, f"{expected!r} is not in the notebook's outputs"
    residual = number_after("identity residual:", text)
    assert math.isfinite(residual) and residual < 1e-3, f"log p(x) - (ELBO + KL) = {residual} on the grid"
    assert number_after("smallest KL(q(z|x) || p(z|x)):", text) >= -1e-4  # a KL is never negative


def test_tutorial_runs_with_small_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_TUTORIAL_SMOKE", "1")
    monkeypatch.delenv("PYRO_VAE_TUTORIAL_RUNS", raising=False)  # run folders under the working directory
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    assert not errors(nb), errors(nb)
    text = output_text(nb)
    assert "SMOKE = True" in text
    check_decomposition(text)
    assert has_image(nb), "the posterior picture is not displayed"
    assert (tmp_path / "runs" / "tutorial" / "standard-normal" / "checkpoint.pt").is_file()
    assert (tmp_path / "runs" / "tutorial" / "mixture" / "checkpoint.pt").is_file()


def test_committed_tutorial_holds_a_full_run():
    """The notebook in the repository shows live numbers of the full settings, not of the smoke run."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = output_text(nb)
    assert "SMOKE = False" in text, "examples/tutorial.ipynb should be saved with the outputs of a full run"
    assert not errors(nb), errors(nb)
    check_decomposition(text)
    assert has_image(nb)
