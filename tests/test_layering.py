"""The package's layering (CONTRIBUTING.md): no module imports one of a higher layer, and no circles.

Every import counts, at module level or inside a function (a lazy import is still a dependency),
except two kinds that run no code of the module named at import time: imports under
``if TYPE_CHECKING:`` (annotations only) and those inside a module's ``__getattr__`` (the
deprecation path of a name that moved, resolved only when someone asks for the old name).
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pyro_vae"

# lowest first; a module may import its own layer (without circles) and the layers below it
LAYERS = [
    ("foundations", {"errors", "files", "numerics", "distributed", "config", "distributions"}),
    ("data and networks", {"data", "networks"}),
    ("components", {"priors", "guides", "likelihoods"}),
    ("model programs", {"vae", "gmvae", "labelled", "completion", "terms", "programs"}),
    ("estimators", {"objectives", "metrics"}),
    ("evaluation", {"exact", "evaluation"}),
    ("pictures", {"plots"}),
    ("runs and training", {"runs", "callbacks", "training", "compare"}),
    ("entry points", {"cli", "__main__", "__init__"}),
]
LAYER = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def imports_of(path: pathlib.Path) -> set[str]:
    """The package modules ``path`` imports (see the module docstring for what counts)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_FunctionDef(self, node):
            if node.name != "__getattr__":
                self.generic_visit(node)

        def visit_ImportFrom(self, node):
            if node.level == 1:  # from .x import y / from . import x
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.level == 0 and node.module and node.module.split(".")[0] == "pyro_vae":
                parts = node.module.split(".")
                found.update(parts[1:2] if len(parts) > 1 else [a.name for a in node.names])

        def visit_Import(self, node):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pyro_vae."))

    Visitor().visit(ast.parse(path.read_text()))
    return {m for m in found if (PACKAGE / f"{m}.py").is_file()}  # (names such as __version__ are not modules)


GRAPH = {path.stem: imports_of(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer():
    unplaced = sorted(set(GRAPH) - set(LAYER))
    assert not unplaced, f"place {unplaced} in a layer of tests/test_layering.py and CONTRIBUTING.md"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_upward(module):
    upward = sorted(m for m in GRAPH[module] if LAYER[m] > LAYER[module])
    assert not upward, f"{module} ({LAYERS[LAYER[module]][0]}) imports {upward} from a higher layer"


def test_no_import_circles():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_lazy_imports_and_skips_type_only_ones(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nfrom . import errors\nif TYPE_CHECKING:\n    from .cli import x\n"
                     "def later():\n    from .runs import load_run\n"
                     "def __getattr__(name):\n    from . import training\n")
    assert imports_of(probe) == {"errors", "runs"}
