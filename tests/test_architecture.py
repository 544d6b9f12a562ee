"""The architecture as code: the import contracts (pyproject's [tool.importlinter], run by ``make test`` as
``lint-imports``) hold and can fail, no module imports another's private name, and infra/prefect.yaml's entrypoints
load the flows they name."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from idtprior.config import STAGES
from idtprior.runtime.runs import flow_name

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "idtprior"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package found first on ``root`` (its pyproject's contracts)."""
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""},
                          timeout=120)


@pytest.fixture(scope="module")
def copy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("arch")
    shutil.copytree(PACKAGE, root / "idtprior", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def planted(root: Path, module: str, line: str):
    """A context that adds ``line`` at the end of ``module``'s file (a path under the package) and takes it out."""
    path = root / "idtprior" / module
    text = path.read_text()

    class Plant:
        def __enter__(self):
            path.write_text(text + "\n" + line + "\n")

        def __exit__(self, *exc):
            path.write_text(text)

    return Plant()


def test_the_package_keeps_its_contracts(copy_root):
    got = lint_imports(copy_root)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "3 kept, 0 broken" in got.stdout


@pytest.mark.parametrize("module, line, broken", [
    # a core that reaches for the orchestrator or the workspace
    ("encoding/sketch.py", "import prefect  # noqa", "The cores import none of Prefect, Dask or the workspace"),
    ("video/io.py", "from idtprior.storage import Workspace  # noqa",
     "The cores import none of Prefect, Dask or the workspace"),
    # a lower layer that imports a higher one (storage reading the config), and a cycle made that way
    ("storage/manifest.py", "from idtprior.config import STAGES  # noqa", "Layers"),
    ("runtime/runs.py", "def f():\n    from idtprior.flows import deployments  # noqa", "No import cycle"),
    # a stage that reads a later stage (the stages are layered in pipeline order), and the runtime reaching a stage
    ("stages/decode.py", "from idtprior.stages.encode import read_sketches  # noqa", "Layers"),
    ("runtime/worker.py", "from idtprior.stages.common import ALL  # noqa", "Layers"),
])
def test_a_planted_import_breaks_its_contract(copy_root, module, line, broken):
    with planted(copy_root, module, line):
        got = lint_imports(copy_root)
    assert got.returncode != 0, got.stdout
    report = got.stdout.split("Broken contracts", 1)[-1]
    assert broken in report, got.stdout
    assert module.replace("/", ".").removesuffix(".py") in report


def private_imports(root: Path) -> list[str]:
    """``from X import _name`` where X is another module of the package (the module's own package's ``__init__``
    included): a private name used across modules."""
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            if not source.startswith(root.name) or source == module:
                continue
            found += [f"{path.relative_to(root.parent)}:{node.lineno} imports {a.name} from {source}"
                      for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_name(copy_root):
    assert private_imports(PACKAGE) == []
    with planted(copy_root, "encoding/fisher.py", "from idtprior.encoding.gmm import _x  # noqa"):
        assert private_imports(copy_root / "idtprior") == [
            f"idtprior/encoding/fisher.py:{len((PACKAGE / 'encoding/fisher.py').read_text().splitlines()) + 2} "
            "imports _x from idtprior.encoding.gmm"]


def test_every_entrypoint_of_prefect_yaml_loads_the_flow_it_names():
    from prefect.flows import load_flow_from_entrypoint

    doc = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    entrypoints = sorted({d["entrypoint"] for d in doc["deployments"]})
    assert len(entrypoints) == 1 + len(STAGES)  # the pipeline's, and one per stage (on two pools each)
    for entrypoint in entrypoints:
        flow = load_flow_from_entrypoint(str(REPO / entrypoint))  # <file>:<stage>_ui is the stage's flow
        assert flow.name == flow_name(entrypoint.rsplit(":", 1)[1].removesuffix("_ui")), entrypoint
