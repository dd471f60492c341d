"""The reference in docs/ is generated from the code and builds (``python docs/build.py``)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def test_the_committed_reference_is_what_the_code_generates():
    assert build.stale() == [], "run python docs/build.py and commit docs/reference/"


def test_the_reference_lists_every_component_option_config_key_and_command():
    from pyro_vae.cli import build_parser
    from pyro_vae.config import REGISTRIES, Config

    pages = {path.name: text for path, text in build.pages().items()}
    for registry in REGISTRIES.values():
        for name in registry.names():
            assert f"### `{name}`" in pages["components.md"]
            for option in registry.get(name).option_specs():
                assert f"| `{option}` |" in pages["components.md"]
    for section, values in Config().to_dict().items():
        for key in values if isinstance(values, dict) and section != "data" else [None]:
            assert (f"| `{section}.{key}` |" if key else f"| `{section}` |") in pages["config.md"]
    commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices).choices
    assert all(f"## `pyro-vae {name}`" in pages["cli.md"] for name in commands)


def test_the_site_builds_with_no_warning(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "log_evidence" in api and "Trainer" in api  # rendered from the docstrings


def test_contributing_lists_the_layers_of_the_layering_test():
    import re

    from test_layering import LAYERS

    text = (ROOT / "CONTRIBUTING.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) == 3 and cells[0] in {name for name, _ in LAYERS}:
            rows[cells[0]] = {re.sub(r" \(.*\)$", "", m) for m in re.findall(r"`([^`]+)`", cells[1])}
    assert rows == {name: modules for name, modules in LAYERS}


def test_the_module_map_names_every_module_and_objective():
    from pyro_vae.config import OBJECTIVES

    from test_layering import MODULES

    text = (ROOT / "docs" / "guide" / "layout.md").read_text()
    for module in MODULES:
        assert f"{module.split('.')[-1]}.py" in text or module == "data", module
    for name in OBJECTIVES.names():
        assert name in text, name
