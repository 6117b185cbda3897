"""The Space in the wheel: build olam-edit's wheel, install it (not editable) into a fresh venv, and run
``olam-edit demo`` from a folder outside the checkout.

Installing torch and Gradio again would take minutes, so the new venv gets the wheel alone
(``--no-deps``) and finds its dependencies in this interpreter's site-packages through a ``.pth``
line. A path line in a ``.pth`` file only extends ``sys.path``: the ``.pth`` files inside that folder
do not run, so the checkout's editable install (its finder) stays out of the new venv.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "olam_edit", "adapters", "spaces_app")  # what the wheel is built from
START_TIMEOUT_S = 120.0


def _run(cmd: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _build_wheel(work: Path) -> Path:
    """The wheel of a copy of the checkout (building in place would leave build/ in the checkout)."""
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copyfile(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", work / "dist", src])
    (wheel,) = (work / "dist").glob("olam_edit-*.whl")
    return wheel


def _dependency_paths() -> list[str]:
    """This interpreter's site-packages (torch, Gradio, ...), never a source folder of the checkout.

    CI's virtual environment lives inside the checkout (``.venv/``), so only a site-packages folder
    is accepted: the checkout's own ``olam_edit/`` or ``adapters/`` never are one.
    """
    return [p for p in site.getsitepackages() if Path(p).is_dir() and Path(p).name in ("site-packages",
                                                                                      "dist-packages")]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the built wheel, non-editable, with this interpreter's dependencies visible."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(work)
    env_dir = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    (purelib,) = json.loads(_run([python, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
                                 env=_clean_env(env_dir), cwd=work).stdout)
    Path(purelib, "olam_edit_test_dependencies.pth").write_text("\n".join(_dependency_paths()) + "\n")
    return env_dir


def _clean_env(env_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a process of the new venv: nothing pointing back at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "OLAM_EDIT_SPACE_APP")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def _outside_checkout(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    assert ROOT not in folder.resolve().parents
    return folder


def test_the_installed_package_is_the_wheel_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    code = ("import importlib.metadata as md, json, sys, olam_edit, olam_edit.spaces_app.app as app; "
            "print(json.dumps({'core': olam_edit.__file__, 'space': app.__file__, "
            "'dist': str(md.distribution('olam-edit').locate_file('olam_edit')), "
            "'finders': [type(f).__name__ for f in sys.meta_path] + [getattr(f, '__name__', '') "
            "for f in sys.meta_path]}))")
    where = json.loads(_run([venv / "bin" / "python", "-c", code], cwd=_outside_checkout(tmp_path),
                            env=_clean_env(venv)).stdout)
    for key in ("core", "space", "dist"):
        path = Path(where[key]).resolve()
        assert venv.resolve() in path.parents, (key, path)
        assert ROOT not in path.parents, (key, path)
    assert not any("Editable" in name or "editable" in name for name in where["finders"]), where["finders"]
    assert (venv / "bin" / "olam-edit").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def _wait_for_config(port: int, proc: subprocess.Popen, log: Path) -> str:
    """The server's /config once it answers (within START_TIMEOUT_S), failing early if it exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"olam-edit demo exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        try:
            return _get(f"http://127.0.0.1:{port}/config")[1]
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered on port {port} in {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_olam_edit_demo_from_the_wheel_serves_the_space(venv: Path, tmp_path: Path) -> None:
    """``olam-edit demo --port P`` of the installed wheel, started in a folder outside the checkout."""
    cwd, port, log = _outside_checkout(tmp_path), _free_port(), tmp_path / "demo.log"
    env = _clean_env(venv, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", OLAM_EDIT_STATS_SAMPLES="50",
                     OLAM_EDIT_CACHE=str(tmp_path / "cache"), GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    with open(log, "wb") as out:
        proc = subprocess.Popen([venv / "bin" / "olam-edit", "demo", "--port", str(port)], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        config = _wait_for_config(port, proc, log)
        assert "Rewrite" in config and "olam-edit" in config
        status, page = _get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "<html" in page.lower()
        api = json.loads(_get(f"http://127.0.0.1:{port}/gradio_api/info")[1])
        assert {"/rewrite", "/open", "/download", "/upload", "/load_model"} <= set(api["named_endpoints"])
    finally:
        _stop(proc)
    assert "olam-edit demo: loading 'default'" in log.read_text()
