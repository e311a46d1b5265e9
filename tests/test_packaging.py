"""The built wheel is one `sonopacs` package that works from any folder, and its imports follow the table.

The wheel is built from this checkout and installed, without dependencies, into a fresh virtual
environment that sees this interpreter's site-packages (torch, pydicom, ... are not downloaded again).
The import contracts of pyproject.toml are checked on that installed layout, which is the one users
get: in the checkout the folders sit at the root and only the packaging maps them into `sonopacs.*`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding only the built wheel (dependencies come from the system site-packages)."""
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the tracked files: the build must not write into the checkout.
    src = base / "src"
    files = _run(["git", "ls-files", "-z"], ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(src)], base)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((base / "dist").glob("sonopacs-*.whl"))
    env_dir = base / "venv"
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], base)
    assert made.returncode == 0, made.stderr
    installed = _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], base)
    assert installed.returncode == 0, installed.stderr[-3000:]
    yield env_dir


def _site_packages(env_dir: Path) -> Path:
    purelib = sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})
    return Path(purelib)


def _clean_env(env_dir: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOPACS_") and k != "PYTHONPATH"}
    env["PATH"] = f"{env_dir / 'bin'}:{env['PATH']}"
    env["HOME"] = str(home)
    return env


def test_the_wheel_installs_exactly_one_top_level_package(venv: Path) -> None:
    site = _site_packages(venv)
    dist_info = next(site.glob("sonopacs-*.dist-info"))
    top_level = {line.split("/")[0] for line in (dist_info / "RECORD").read_text().splitlines()}
    top_level -= {dist_info.name, "..", ""}
    assert {t for t in top_level if not t.startswith("__")} == {"sonopacs"}
    assert (site / "sonopacs" / "py.typed").is_file()
    assert (site / "sonopacs" / "models" / "weights" / "model.pt").is_file()  # the shipped model travels


def test_commands_work_from_a_folder_that_holds_a_config_py(venv: Path, tmp_path: Path) -> None:
    """A user's own `config.py`, `models/` or `db.py` must not shadow ours."""
    (tmp_path / "config.py").write_text("raise SystemExit('the wrong config module was imported')\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise SystemExit('the wrong models package')\n")
    env = _clean_env(venv, tmp_path)
    shown = _run([str(venv / "bin" / "sonopacs"), "config", "show"], tmp_path, env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert '"ae_title": "SONOPACS"' in shown.stdout
    version = _run([str(venv / "bin" / "sonopacs"), "--version"], tmp_path, env)
    assert version.returncode == 0 and version.stdout.startswith("sonopacs ")
    as_module = _run([str(venv / "bin" / "python"), "-m", "sonopacs", "config", "show"], tmp_path, env)
    assert as_module.returncode == 0, as_module.stderr[-2000:]


def test_serving_dependencies_leave_out_what_only_training_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for lab_only in ("efficientnet-lite0", "efficientnet-lite2", "tqdm"):
        assert lab_only not in runtime
        assert any(lab_only in dep for dep in project["optional-dependencies"]["train"])


def test_imports_follow_the_architecture_table(venv: Path, tmp_path: Path) -> None:
    """import-linter's contracts (pyproject.toml) on the installed package: the table, and no cycles."""
    env = _clean_env(venv, tmp_path)
    # The venv's interpreter, so that `sonopacs` resolves to the installed wheel, not the checkout.
    lint = "import sys; from importlinter.cli import lint_imports_command as c; c.main(args=sys.argv[1:])"
    checked = _run([str(venv / "bin" / "python"), "-c", lint, str(ROOT / "pyproject.toml")], tmp_path, env)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert "BROKEN" not in checked.stdout and "KEPT" in checked.stdout
