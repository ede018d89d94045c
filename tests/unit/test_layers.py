"""The source roots are layers: the wire kernel and models import neither side, the server never imports the
client and the client never imports the server; only tools (bench, evaluation) use both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Package directory -> the segstream packages its modules must never import.
FORBIDDEN = {
    "protos/segstream/wire": ("segstream.client", "segstream.server", "segstream.bench", "segstream.evaluation"),
    "models/segstream/models": ("segstream.client", "segstream.server", "segstream.bench", "segstream.evaluation"),
    "server/segstream/server": ("segstream.client", "segstream.ros2", "segstream.bench", "segstream.evaluation"),
    "client/segstream/client": ("segstream.server", "segstream.bench", "segstream.evaluation", "segstream.models"),
    "client/segstream/ros2": ("segstream.server", "segstream.bench", "segstream.evaluation", "segstream.models"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in `path` names, lazy imports inside functions included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            # `from segstream import client` imports the package segstream.client.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """`file: module` for each forbidden import under `package`."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == bad or module.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(ROOT)}: {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_lies_below_it(package: str) -> None:
    assert (ROOT / package).is_dir()
    assert violations(package, FORBIDDEN[package]) == []


def test_the_scan_sees_every_import_form(tmp_path: Path) -> None:
    # A rule that silently matched nothing would pass forever; this pins that it finds each form.
    (tmp_path / "m.py").write_text(
        "import segstream.client.cli\nfrom segstream import client\n"
        "def f():\n    from segstream.client._frames import FrameInput\n"
    )
    assert imported_modules(tmp_path / "m.py") >= {
        "segstream.client.cli",
        "segstream.client",
        "segstream.client._frames",
    }
