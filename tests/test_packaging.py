"""A built wheel holds what an installed swift-gguf needs: the package data and a CLI that runs.

The wheel is built from a copy of the declared sources (not the working tree, where an editable
install and build leftovers could hide a missing file) and installed with `pip --target`, then
used by a Python whose working directory is elsewhere, so nothing comes from the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = "swift_gguf/data/bench.jsonl"


def pip(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   cwd=cwd, check=True, timeout=240)


def test_wheel_ships_package_data_and_a_working_cli(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "swift_gguf", src / "swift_gguf", ignore=shutil.ignore_patterns("__pycache__"))
    pip("wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(src), cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("swift_gguf-*.whl")
    assert DATA in zipfile.ZipFile(wheel).namelist()

    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(site))   # ahead of the editable install of the checkout
    where = tmp_path / "elsewhere"
    where.mkdir()

    def run(*args: str) -> str:
        return subprocess.run([sys.executable, *args], cwd=where, env=env, capture_output=True, text=True,
                              check=True, timeout=60).stdout

    out = run("-c", "import cli, swift_gguf; from importlib import resources; print(cli.__file__); "
                    "print(swift_gguf.__file__); print(len(resources.files('swift_gguf')"
                    ".joinpath('data', 'bench.jsonl').read_text().splitlines()))")   # as optimize reads it
    cli_file, package_file, n_prompts = out.split()
    assert Path(cli_file).parent == site and Path(package_file).parent == site / "swift_gguf"
    assert int(n_prompts) == len((ROOT / DATA).read_text().splitlines()) > 0
    help_text = run(str(site / "bin" / "swift-gguf"), "--help")
    assert "Usage: swift-gguf" in help_text and "generate" in help_text
