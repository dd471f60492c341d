"""The longest functions and classes of the package: ``python benchmarks/longest.py [--top 10]``.

The house rule (CONTRIBUTING.md): no class over 300 lines and no function over 60, except where a
comment on the ``def``/``class`` line, ``# long: <why>``, says why one must be longer.
``tests/test_sizes.py`` holds the package to it; this script prints where it stands.
"""

from __future__ import annotations

import argparse
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pyro_vae"
LIMITS = {"function": 60, "class": 300}


def definitions(package: pathlib.Path = PACKAGE) -> list[dict]:
    """Every function and class of the package: kind, qualified name, file, first line, length in
    lines (decorators excluded, the docstring included), and the ``# long:`` reason if any."""
    out = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()

        def visit(node, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    header = lines[child.lineno - 1]
                    reason = header.split("# long:", 1)[1].strip() if "# long:" in header else ""
                    out.append({"kind": kind, "name": f"{prefix}{child.name}", "file": str(path.relative_to(package.parent)),
                                "line": child.lineno, "length": child.end_lineno - child.lineno + 1, "why": reason})
                    visit(child, f"{prefix}{child.name}.")

        visit(ast.parse(source), "")
    return out


def over_limit(defs: list[dict]) -> list[dict]:
    """The definitions over their kind's limit without a ``# long:`` reason."""
    return [d for d in defs if d["length"] > LIMITS[d["kind"]] and not d["why"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    defs = definitions()
    for kind in ("function", "class"):
        ranked = sorted((d for d in defs if d["kind"] == kind), key=lambda d: -d["length"])[: args.top]
        print(f"the {args.top} longest {kind}s (limit {LIMITS[kind]} lines):")
        for d in ranked:
            note = f"  # long: {d['why']}" if d["why"] else ("  OVER THE LIMIT" if d["length"] > LIMITS[kind] else "")
            print(f"  {d['length']:5d}  {d['name']}  ({d['file']}:{d['line']}){note}")
    print(f"{len(over_limit(defs))} over the limits without a reason")


if __name__ == "__main__":
    main()
