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

# lowest first; a module may import its own layer (without circles) and the layers below it. A
# package's modules are named with dots ("data.checks"); the package itself by its __init__ ("data").
LAYERS = [
    ("foundations", {"errors", "files", "numerics", "distributed", "config", "distributions", "data.checks"}),
    ("data and networks", {"data", "data.storage", "data.datasets", "data.dsprites", "data.user_files",
                           "data.counts", "data.stream", "data.order", "data.prepare", "networks"}),
    ("components", {"priors", "guides", "likelihoods"}),
    ("model programs", {"vae", "gmvae", "labelled", "quadrants", "single_cell", "terms", "labels", "programs"}),
    ("estimators", {"objectives", "metrics", "scores", "topics", "disentanglement"}),
    ("evaluation", {"exact", "evaluation"}),
    ("pictures", {"plots"}),
    ("runs and training", {"runs", "callbacks", "preflight", "training", "trained", "compare"}),
    ("entry points", {"cli", "__main__", "__init__"}),
]
LAYER = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: pathlib.Path) -> str:
    """"config" for pyro_vae/config.py, "data.checks" for pyro_vae/data/checks.py, "data" for its __init__."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if len(parts) > 1 and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known(dotted: str) -> str | None:
    """The package module ``dotted`` ("data.checks.x" -> "data.checks") names, or None."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in MODULES:
            return name
    return None


def imports_of(path: pathlib.Path) -> set[str]:
    """The package modules ``path`` imports (see the module docstring for what counts)."""
    found: set[str] = set()
    here = module_name(path).split(".") if path.is_relative_to(PACKAGE) else [path.stem]
    package = here if path.name == "__init__.py" and path.is_relative_to(PACKAGE) and len(here) and here != ["__init__"] \
        else here[:-1]

    def add(dotted: str, names) -> None:
        module = _known(dotted) if dotted else None
        for alias in names:  # from X import Y: Y may be a module of X
            sub = _known(f"{dotted}.{alias.name}" if dotted else alias.name)
            if sub is not None and sub != module:
                found.add(sub)
            elif module is not None:
                found.add(module)

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_FunctionDef(self, node):
            if node.name != "__getattr__":
                self.generic_visit(node)

        def visit_ImportFrom(self, node):
            if node.level >= 1:  # from .x import y, from ..x import y, from . import x
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                add(".".join([*base, *([node.module] if node.module else [])]), node.names)
            elif node.module and node.module.split(".")[0] == "pyro_vae":
                add(".".join(node.module.split(".")[1:]), node.names)

        def visit_Import(self, node):
            for a in node.names:
                if a.name.startswith("pyro_vae."):
                    module = _known(a.name.split(".", 1)[1])
                    if module is not None:
                        found.add(module)

    Visitor().visit(ast.parse(path.read_text()))
    found.discard(module_name(path) if path.is_relative_to(PACKAGE) else path.stem)
    return found


FILES = sorted(p for p in PACKAGE.rglob("*.py") if "assets" not in p.parts)
MODULES = {module_name(p) for p in FILES}
GRAPH = {module_name(path): imports_of(path) for path in FILES}


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


def test_the_checker_names_the_modules_of_a_package():
    assert imports_of(PACKAGE / "likelihoods.py") >= {"data.checks"}  # from .data.checks import ...
    assert "data" not in imports_of(PACKAGE / "likelihoods.py")  # the checks alone, not the package's upper modules
    assert imports_of(PACKAGE / "data" / "storage.py") == {"errors"}  # from ..errors import ...
    assert {"data.datasets", "data.storage"} <= imports_of(PACKAGE / "data" / "user_files.py")  # from .x import ...
    assert {"data.checks", "data.prepare"} <= imports_of(PACKAGE / "data" / "__init__.py")
