"""common/errors.py: the drawing of the hierarchy in its docstring is the hierarchy, and each
class's status and code are the ones drawn."""

from __future__ import annotations

import re

import common.errors as errors_module
from common.errors import TgcError

# "    │   ├── FloodWait                 429 FLOOD_WAIT ..." → (depth, name, status, code)
_ROW = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>[A-Z][A-Za-z]+)\s+(?P<rest>.*)$")


def drawn() -> list[tuple[int, str, str]]:
    """(depth, class name, what is drawn after it) of every row naming a class."""
    doc = errors_module.__doc__ or ""
    tree = doc.split("::", 1)[1]
    rows = []
    for line in tree.splitlines():
        if "── " not in line and not line.strip().startswith("TgcError"):
            continue
        m = _ROW.match(line.strip("\n")[4:])  # the block is indented by four spaces
        assert m is not None, line
        depth = 0 if m["name"] == "TgcError" else len(m["indent"]) // 4 + 1
        rows.append((depth, m["name"], m["rest"]))
    return rows


def test_the_drawing_is_the_hierarchy() -> None:
    parents: list[str] = []
    names = set()
    for depth, name, _ in drawn():
        cls = getattr(errors_module, name)
        del parents[depth:]
        if parents:
            assert cls.__bases__ == (getattr(errors_module, parents[-1]),), name
        parents.append(name)
        names.add(name)
    every = {
        name
        for name, value in vars(errors_module).items()
        if isinstance(value, type) and issubclass(value, TgcError)
    }
    assert names == every  # every class drawn, none drawn that is not there


def test_statuses_and_codes_are_the_ones_drawn() -> None:
    for _, name, rest in drawn():
        cls = getattr(errors_module, name)
        status, _, more = rest.partition(" ")
        if status.isdigit():
            assert cls.status == int(status), name
            code = more.split()[0] if more.strip() and more.split()[0].isupper() else None
            if code is not None:
                assert cls.code == code, name
