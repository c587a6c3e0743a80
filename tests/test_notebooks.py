"""Every notebook in notebooks/ runs top to bottom without a cell error, and is stored without outputs.

Execution uses nbclient with a kernel on this interpreter: a ``python3`` kernel spec pointing at
``sys.executable`` is written into a temporary folder, and only that folder is searched, so no
kernel is registered anywhere and a ``python3`` spec of another environment cannot be picked up.
"""

import json
import sys
import time

import pytest

from tests.conftest import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
NOTEBOOK_STEPS = 40  # training steps in the notebooks under test (300 when a person runs them)


def test_notebooks_are_stored_without_outputs():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, (
                    f"{path.name}: code cell {i} holds outputs; clear them before committing "
                    f"(jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)})"
                )


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A folder holding one kernel spec, ``python3``, that runs ``sys.executable -m ipykernel_launcher``."""
    pytest.importorskip("ipykernel", reason="ipykernel is not installed: pip install -e '.[dev]' to run the notebooks")
    from ipykernel.kernelspec import write_kernel_spec

    path = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(path / "python3", overrides={"display_name": "kpflow test kernel"})
    spec = json.loads((path / "python3" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable, spec["argv"]
    return path


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed: pip install -e '.[dev]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed: pip install -e '.[dev]'")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    # A smoke test: every cell runs; the trainings are shortened (the kernel inherits this environment).
    monkeypatch.setenv("KPFLOW_NOTEBOOK_STEPS", str(NOTEBOOK_STEPS))
    nb = nbformat.read(path, as_version=4)
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    start = time.perf_counter()
    try:
        client.execute(cleanup_kc=True)  # shut the kernel down: the client does not own km
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed:\n{e}", pytrace=False)
    except nbclient.exceptions.CellTimeoutError as e:
        pytest.fail(f"{path.name}: a cell ran past {CELL_TIMEOUT_S} s: {e}", pytrace=False)
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs {[e.get('ename') for e in errors]}"
