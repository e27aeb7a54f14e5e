"""The layer rule of DESIGN.md, held by a test: imports point downward only.

faces (api/, web/, cli/)  ->  service/  ->  domain/, storage/, executors/
``domain/`` imports nothing else of jobmill; only ``storage/`` speaks SQL; executors take plain
values (no settings, no database); ``config`` reads the environment and nothing below it.
``factory`` wires everything and may import anything; ``api/app.py`` and the CLI's server
commands (``cli/server.py``) are the faces allowed to build the application through it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "jobmill"

# layer -> jobmill packages/modules it must not import (prefix match on the dotted name)
# fmt: off
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "domain": (
        "jobmill.storage",
        "jobmill.service",
        "jobmill.executors",
        "jobmill.api",
        "jobmill.cli",
        "jobmill.config",
        "jobmill.factory",
        "jobmill.client",
    ),
    "storage": ("jobmill.service", "jobmill.executors", "jobmill.api", "jobmill.cli",
                "jobmill.config", "jobmill.factory", "jobmill.client"),
    "executors": ("jobmill.storage", "jobmill.service", "jobmill.api", "jobmill.cli",
                  "jobmill.config", "jobmill.factory", "jobmill.client"),
    "service": ("jobmill.api", "jobmill.cli", "jobmill.factory", "jobmill.client"),
    "api": ("jobmill.storage", "jobmill.cli", "jobmill.client"),
    "web": ("jobmill.storage", "jobmill.cli", "jobmill.client", "jobmill.factory"),
    "cli": ("jobmill.storage", "jobmill.api", "jobmill.service.jobs"),
    "config": ("jobmill.storage", "jobmill.service", "jobmill.executors", "jobmill.api",
               "jobmill.cli", "jobmill.factory"),
    "paths": ("jobmill.",),
    "client": ("jobmill.storage", "jobmill.service", "jobmill.executors", "jobmill.api",
               "jobmill.cli", "jobmill.config", "jobmill.factory"),
}
# fmt: on
# Faces that build the application: only these may import the factory (and ``serve`` the app).
FACTORY_USERS = {"factory.py", "api/app.py", "cli/server.py", "cli/processes.py"}
ALLOWED = {("cli/server.py", "jobmill.api.app"), ("cli/processes.py", "jobmill.api.app")}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``jobmill`` module imported anywhere in the file (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("jobmill")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "jobmill":
                found += [(node.lineno, f"jobmill.{a.name}") for a in node.names]
            elif node.module.startswith("jobmill."):
                found += [(node.lineno, node.module)]
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _violations() -> list[str]:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("storage/migrations/"):
            continue
        forbidden = FORBIDDEN.get(_layer(path), ())
        for line, module in _imports(path):
            if any(rel == r and (module == m or module.startswith(m + ".")) for r, m in ALLOWED):
                continue
            if module.startswith("jobmill.factory") and rel not in FACTORY_USERS:
                problems.append(f"{rel}:{line} imports {module} (only {FACTORY_USERS})")
            elif any(module == f or module.startswith(f + ".") or (f.endswith(".") and
                     module.startswith(f)) for f in forbidden):  # fmt: skip
                problems.append(f"{rel}:{line} imports {module}")
    return sorted(set(problems))


def test_imports_point_downward() -> None:
    problems = _violations()
    assert not problems, "layer rule broken:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source,layer,expected",
    [
        ("from jobmill.storage.jobs import JobStore\n", "api", True),
        ("def f():\n    from jobmill.config import Settings\n", "executors", True),
        ("from jobmill.domain.errors import NotFound\n", "api", False),
        ("import jobmill.storage.db\n", "config", True),
    ],
)
def test_the_checker_catches_a_wrong_import(
    tmp_path: Path, source: str, layer: str, expected: bool
) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    modules = [m for _, m in _imports(path)]
    forbidden = FORBIDDEN[layer]
    assert any(m.startswith(f) for m in modules for f in forbidden) is expected
