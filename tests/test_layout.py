"""The repository's layering: tests/ and benchmarks/ both depend on the package and never on each
other; benchmarks/ is a package run as `python -m benchmarks.X` from the repository root, without
sys.path edits, so each of its modules is loaded under one name."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported(path: Path) -> set[str]:
    """Top-level names of the modules a file imports (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_tests_and_benchmarks_never_import_each_other():
    for path in sorted((ROOT / "tests").glob("*.py")):
        assert "benchmarks" not in imported(path), path
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        assert "tests" not in imported(path), path
    for path in sorted((ROOT / "swift_gguf").glob("*.py")):
        assert not imported(path) & {"tests", "benchmarks"}, path


def test_benchmarks_edit_no_sys_path_and_load_each_module_once():
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        assert "sys.path" not in path.read_text(encoding="utf-8"), path
    code = ("import sys, benchmarks.policy_sim, benchmarks.specbench\n"
            "print(sorted(m for m in sys.modules if m.split('.')[-1] in ('specbench', 'policy_sim')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['benchmarks.policy_sim',", "'benchmarks.specbench']"]
