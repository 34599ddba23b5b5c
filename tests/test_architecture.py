"""The shape of the code, enforced: stages import only downward, functions stay short.

The layer of every module is stated once, in ``LAYERS`` (bottom first); docs/architecture.md draws the
same list. A module may import modules of its own package and of any lower layer; importing a higher
layer fails this test, whether the import is at the top of the file or inside a function. Command
modules (``*/cli.py``) are the top layer: they wire stages together and nothing imports them but the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "brainmri"

LAYERS: list[tuple[str, ...]] = [
    ("errors", "utils", "labels"),
    ("config", "cliargs"),
    ("layout",),
    ("io",),
    ("data",),
    ("preprocess",),
    ("models",),
    ("calibrate",),
    ("runs",),
    ("bundle",),
    ("infer",),
    ("serve",),
    ("train",),
    ("evaluate",),
    ("report",),
    ("workflow", "cli", "__init__", "__main__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
COMMAND_RANK = len(LAYERS) - 1

MAX_FUNCTION_LINES = 60
LONG_OK_MARKER = "long-function-ok:"  # a comment in the function saying why it may be longer


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts)


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if parts[-1] in ("cli", "__main__") and len(parts) > 2:
        return top, COMMAND_RANK
    if top not in RANK:
        raise AssertionError(f"{module}: package '{top}' has no layer in LAYERS (add it there and in docs)")
    return top, RANK[top]


def imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("brainmri")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = module.split(".")[: -node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("brainmri"):
                out.append((node.lineno, name))
    return out


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def upward_imports() -> list[str]:
    problems = []
    for path in source_files():
        module = module_name(path)
        pkg, rank = layer_of(module)
        for lineno, target in imported_modules(ast.parse(path.read_text()), module):
            if target == "brainmri":
                t_pkg, t_rank = "__init__", COMMAND_RANK
            else:
                t_pkg, t_rank = layer_of(target)
            if t_pkg != pkg and t_rank > rank:
                problems.append(f"{path.relative_to(SRC)}:{lineno} ({pkg}) imports {target} ({t_pkg}): upward")
    return problems


def test_every_package_has_a_layer():
    for path in source_files():
        layer_of(module_name(path))


def test_no_upward_imports():
    assert upward_imports() == []


def test_checker_catches_an_upward_import(tmp_path):
    tree = ast.parse("def f():\n    from brainmri.train.trainer import train_run\n")
    (lineno, target) = imported_modules(tree, "brainmri.infer.predictor")[0]
    assert (lineno, target) == (2, "brainmri.train.trainer")
    assert layer_of(target)[1] > layer_of("brainmri.infer.predictor")[1]


def long_functions() -> list[str]:
    out = []
    for path in source_files():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                body = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                if n > MAX_FUNCTION_LINES and LONG_OK_MARKER not in body:
                    out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_functions_are_short():
    assert long_functions() == []


@pytest.mark.parametrize(
    "module, expected",
    [
        ("brainmri.infer.cli", COMMAND_RANK),
        ("brainmri.calibrate.posthoc", RANK["calibrate"]),
        ("brainmri.runs", RANK["runs"]),
    ],
)
def test_layer_of(module, expected):
    assert layer_of(module)[1] == expected
