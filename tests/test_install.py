"""Installing: `pip wheel .` builds a wheel that installs into a fresh environment and runs
there, and a machine without a C compiler is told what to install.

Both build from a copy of the sources (no compiled files), so the worktree is left alone. The
wheel build compiles the kernels: a minute or two.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_schema import check_report

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "README.md", "csrc", "streamfusion")
BUILD_TIMEOUT = 900  # seconds: three optimised C extensions on a busy 2-core machine


def copy_sources(dest: Path) -> Path:
    """The sources as a fresh checkout has them: no built kernels, no generated C."""
    junk = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.c", "build", "*.egg-info")
    dest.mkdir()
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=junk)
        else:
            shutil.copy2(src, dest / name)
    return dest


def pip_wheel(src: Path, out: Path, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    # no build isolation: the build requirements are those of this environment (no download)
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "-w", str(out)], capture_output=True, text=True, cwd=src, env=env,
        timeout=BUILD_TIMEOUT)


def need_bdist_wheel() -> None:
    """setuptools before 70.1 builds wheels with the `wheel` package only."""
    try:
        import wheel  # noqa: F401
    except ImportError:
        import setuptools

        if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (70, 1):
            pytest.skip("building a wheel without isolation needs `pip install wheel` here")


def test_a_machine_without_a_c_compiler_is_told_what_to_install(tmp_path):
    need_bdist_wheel()
    src = copy_sources(tmp_path / "src")
    empty = tmp_path / "bin"  # a PATH with no compiler on it
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "LDSHARED")}
    proc = pip_wheel(src, tmp_path / "wheels", {**env, "PATH": str(empty)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "streamfusion cannot build its compiled kernels: no C compiler found" in out, out
    assert "apt-get install build-essential python3-dev" in out
    assert "Traceback" not in out and not list((tmp_path / "src").rglob("*.so"))


@pytest.mark.slow
def test_the_wheel_installs_and_runs_in_a_fresh_environment(tmp_path):
    need_bdist_wheel()
    src = copy_sources(tmp_path / "src")
    proc = pip_wheel(src, tmp_path / "wheels")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheels").glob("streamfusion-*.whl")

    # a venv that sees this environment's dependencies (no download), not its streamfusion
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    python, command = venv / "bin" / "python", venv / "bin" / "streamfusion"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--ignore-installed", str(wheel)], check=True, timeout=300)
    work = tmp_path / "work"  # outside the repository: nothing to import from the cwd
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # the default stream is generated there

    def ask(code: str) -> str:
        return subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                              cwd=work, env=env, check=True).stdout.strip()

    where = Path(ask("import streamfusion; print(streamfusion.__file__)"))
    site = Path(ask("import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    assert where.parent == site / "streamfusion"  # the wheel's copy, not an editable one

    run = subprocess.run([str(command), "replay", "--rows", "2000", "--quiet", "--report",
                          str(work / "r.json")], capture_output=True, text=True, cwd=work,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads((work / "r.json").read_text())
    check_report(report)
    assert report["rows"] == 2000 and report["progressive"]["rows"] > 0
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                             cwd=work, env=env, timeout=60)
    assert version.stdout.startswith("streamfusion ")
