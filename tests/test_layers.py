"""The import arrows point one way: start.py → service/ → model/ → common/.

Every .py file under common/, model/, service/ and start.py itself is read with `ast`, and
every import in it (absolute or relative, at module level or inside a function, plus
`importlib.import_module("…")` / `__import__("…")` with a literal name) is checked:

- no layer imports a layer above it (common → model/service/start, model → service/start,
  service → start);
- no product code imports `tests`, except the demo in start.py, which runs the server
  against the emulator on purpose: `tests.fakedc` (and its modules) from inside a function
  of start.py, never at module level (a module-level import would make every start of the
  server load the emulator).

A failure names the file, the line and the import as written.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The layers, lowest first: a module may import its own layer and the ones below it.
LAYERS = {"common": 0, "model": 1, "service": 2, "start": 3}
# The one product → tests arrow: start.py's demo borrows the emulator.
DEMO_FILE = "start.py"
DEMO_IMPORT = "tests.fakedc"


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is and how it is written."""

    file: str  # relative to the root, with forward slashes
    line: int
    target: str  # the dotted module (or module.name) imported; "" when unresolvable
    text: str  # the statement as written (ast.unparse)
    in_function: bool


def product_files(root: Path) -> list[Path]:
    """The .py files the layering covers: common/, model/, service/ and start.py."""
    files = [p for layer in ("common", "model", "service") for p in (root / layer).rglob("*.py")]
    if (root / "start.py").exists():
        files.append(root / "start.py")
    return sorted(files)


def module_name(root: Path, path: Path) -> str:
    """The dotted module of a file: model/media.py → model.media, model/__init__.py → model."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute module a relative import names ("" if it climbs out of its top-level
    package, which Python refuses too: layers are top-level packages, so a relative import
    can't cross from one to another)."""
    if level == 0:
        return module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 >= len(package):
        return ""
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


class _Collector(ast.NodeVisitor):
    """Gathers every import of one file, knowing whether it sits inside a function."""

    def __init__(self, file: str, importer: str, is_package: bool) -> None:
        self.file, self.importer, self.is_package = file, importer, is_package
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, node: ast.AST, target: str, text: str) -> None:
        line = getattr(node, "lineno", 0)
        self.found.append(Import(self.file, line, target, text, self.depth > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # Decorators and defaults run at definition time (module level); the body does not.
        for outer in (*node.decorator_list, node.args, *([node.returns] if node.returns else [])):
            self.visit(outer)
        self.depth += 1
        for stmt in node.body:
            self.visit(stmt)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name, ast.unparse(node))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.importer, self.is_package, node.level, node.module)
        for alias in node.names:
            if not base and node.level:
                target = ""
            elif alias.name == "*":
                target = base
            else:
                # `from tests import fakedc` imports tests.fakedc (a module or a name in
                # tests: either way it reads from tests).
                target = f"{base}.{alias.name}" if base else alias.name
            self._add(node, target, ast.unparse(node))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self._add(node, first.value, ast.unparse(node))
        self.generic_visit(node)


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every import in one file, in the order written."""
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    collector = _Collector(rel, module_name(root, path), path.name == "__init__.py")
    collector.visit(tree)
    return collector.found


def _layer(module: str) -> str:
    return module.split(".", 1)[0]


def problem(imp: Import) -> str | None:
    """Why this import breaks the layering, or None if it is allowed."""
    where = f"{imp.file}:{imp.line}: {imp.text}"
    if not imp.target:
        return f"{where} (a relative import out of its top-level package)"
    importer = imp.file.split("/", 1)[0].removesuffix(".py")
    imported = _layer(imp.target)
    if imported == "tests":
        demo = imp.target == DEMO_IMPORT or imp.target.startswith(DEMO_IMPORT + ".")
        if imp.file == DEMO_FILE and demo and imp.in_function:
            return None
        if imp.file == DEMO_FILE and demo:
            return f"{where} (the demo's emulator import must stay inside its function)"
        return f"{where} (product code imports tests)"
    if imported in LAYERS and LAYERS[imported] > LAYERS[importer]:
        return f"{where} (upward: {importer} → {imported})"
    return None


def violations(root: Path) -> list[str]:
    """Every import under `root` that breaks the layering, as "file:line: import (why)"."""
    found = []
    for path in product_files(root):
        for imp in imports_of(root, path):
            why = problem(imp)
            if why is not None:
                found.append(why)
    return found


# --- the project ------------------------------------------------------------------------------


def test_the_import_arrows_point_one_way() -> None:
    files = product_files(ROOT)
    # The walk sees every layer (a moved tree would make the test pass vacuously).
    assert {_layer(module_name(ROOT, p)) for p in files} == set(LAYERS), files
    found = violations(ROOT)
    assert not found, "imports against the arrows:\n" + "\n".join(found)


# --- the walker itself, on a small tree of its own ---------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walker_finds_every_kind_of_wrong_arrow(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "common/__init__.py": "from . import base\nfrom .base import X\n",
            "common/base.py": "import os\nX = 1\n",
            "common/up.py": "import model.joinmap\n",
            "common/deep/__init__.py": "",
            "common/deep/rel.py": "from ...service import handler\n",
            "model/__init__.py": "",
            "model/ok.py": "from common.base import X\nfrom . import ok\n",
            "model/late.py": "def f():\n    from start import main\n",
            "model/dyn.py": "import importlib\nimportlib.import_module('service.queries')\n",
            "model/outside.py": "from .. import nowhere\n",
            "service/__init__.py": "",
            "service/ok.py": "from model.ok import X\nfrom .tested import Y\n",
            "service/tested.py": "from tests.fixtures.wait import wait_for\n",
            "service/helper.py": "class C:\n    def m(self):\n        import tests.fakedc\n",
            "start.py": (
                "from service.ok import X\n"
                "from tests.fakedc import cluster\n"
                "async def demo():\n"
                "    from tests.fakedc import demo_world as dw\n"
                "    from tests import fakedc\n"
                "    from tests.fixtures import api_server\n"
                "class Late:\n"
                "    import tests.fakedc.rpc\n"
            ),
        },
    )
    assert violations(tmp_path) == [
        "common/deep/rel.py:1: from ...service import handler"
        " (a relative import out of its top-level package)",
        "common/up.py:1: import model.joinmap (upward: common → model)",
        "model/dyn.py:2: importlib.import_module('service.queries') (upward: model → service)",
        "model/late.py:2: from start import main (upward: model → start)",
        "model/outside.py:1: from .. import nowhere"
        " (a relative import out of its top-level package)",
        "service/helper.py:3: import tests.fakedc (product code imports tests)",
        "service/tested.py:1: from tests.fixtures.wait import wait_for (product code imports tests)",
        "start.py:2: from tests.fakedc import cluster"
        " (the demo's emulator import must stay inside its function)",
        "start.py:6: from tests.fixtures import api_server (product code imports tests)",
        "start.py:8: import tests.fakedc.rpc"
        " (the demo's emulator import must stay inside its function)",
    ]


def test_relative_imports_resolve_against_their_package(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "model/__init__.py": "from .joinmap import JoinMap\n",
            "model/sub/__init__.py": "",
            "model/sub/leaf.py": "from .. import joinmap\nfrom ..joinmap import JoinMap\n",
        },
    )
    got = {
        (imp.file, imp.target) for p in product_files(tmp_path) for imp in imports_of(tmp_path, p)
    }
    assert got == {
        ("model/__init__.py", "model.joinmap.JoinMap"),
        ("model/sub/leaf.py", "model.joinmap"),
        ("model/sub/leaf.py", "model.joinmap.JoinMap"),
    }


@pytest.mark.parametrize("layer", ["common", "model", "service"])
def test_a_layer_may_import_itself_and_below(tmp_path: Path, layer: str) -> None:
    below = [name for name, rank in LAYERS.items() if rank <= LAYERS[layer]]
    _tree(tmp_path, {f"{layer}/m.py": "".join(f"import {b}.x\n" for b in below)})
    assert violations(tmp_path) == []
