"""The tree is the architecture: layers and acyclicity are checked by import-linter (contracts in
pyproject.toml), every subpackage says what it owns and may import, and modules stay small."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support_tools import REPO

PACKAGE = REPO / "banger"
MAX_MODULE_LINES = 400


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the banger package found under root, with the repo's contracts."""
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                           "sys.argv = ['lint-imports', '--no-cache', '--config', sys.argv[1]]; c()",
                           str(REPO / "pyproject.toml")],
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)


def test_the_layer_and_cycle_contracts_hold():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_an_upward_import_and_a_new_cycle_break_the_contracts(tmp_path):
    copy = tmp_path / "banger"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "core" / "fsutil.py", "a") as f:  # the bottom layer reaching up to the CLI
        f.write("\nfrom banger.cli import common  # noqa\n")
    with open(copy / "kernel" / "bundle.py", "a") as f:  # bundle <-> sources
        f.write("\nfrom banger.kernel import sources  # noqa\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "banger.core.fsutil -> banger.cli.common" in proc.stdout
    assert "no import cycles, at any depth BROKEN" in proc.stdout
    assert "nothing but the entry point imports the CLI" in proc.stdout


def subpackages() -> list[Path]:
    return sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def test_every_subpackage_says_what_it_owns_and_may_import():
    names = [p.name for p in subpackages()]
    assert {"cli", "app", "steps", "engine", "oci", "rootfs", "kernel", "hypervisor", "devtools",
            "core"} <= set(names), names
    for pkg in subpackages():
        if pkg.name == "templates":
            continue
        doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text())) or ""
        assert "May import:" in doc, f"banger/{pkg.name}/__init__.py: its docstring must say what it may import"


@pytest.mark.parametrize("module", sorted(str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")))
def test_modules_stay_small(module):
    lines = (REPO / module).read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines; split it by concern (limit {MAX_MODULE_LINES})"
