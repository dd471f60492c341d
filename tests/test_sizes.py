"""The house's size rule (CONTRIBUTING.md): no function over 60 lines and no class over 300 in the
package, except where a ``# long: <why>`` comment on its ``def``/``class`` line says why it must be.
``python benchmarks/longest.py`` prints the ten longest of each."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("longest", ROOT / "benchmarks" / "longest.py")
longest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(longest)


def test_no_function_or_class_is_over_its_limit_without_saying_why():
    over = longest.over_limit(longest.definitions())
    assert not over, "split these, or say why on their def line (# long: ...): " + "; ".join(
        f"{d['name']} ({d['file']}:{d['line']}, {d['length']} lines)" for d in over)


def test_the_measure_sees_nested_definitions_and_the_reason(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (package / "mod.py").write_text(f"class A:\n    def f(self):\n{body.replace('    ', '        ')}\n\n"
                                    f"def g():  # long: a table that reads best whole\n{body}\n")
    defs = {d["name"]: d for d in longest.definitions(package)}
    assert defs["A.f"]["length"] == 71 and defs["g"]["why"] == "a table that reads best whole"
    assert [d["name"] for d in longest.over_limit(list(defs.values()))] == ["A.f"]
