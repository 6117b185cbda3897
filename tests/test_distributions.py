"""What a pip install ships: the wheel and the sdist hold what the README promises, and the sdist's
tests collect from the unpacked folder (the way distributions rebuild packages)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEEL_MUST_HOLD = [
    "olam_edit/py.typed",
    "olam_edit/adapters/face_dcgan/weights/face_dcgan64.safetensors",
    "olam_edit/adapters/face_dcgan/weights/face_dcgan64.md",
    "olam_edit/adapters/diffusers/data/prompts.txt",
    "olam_edit/rules/spatial/examples/add_sunglasses.json",
    "olam_edit/rules/spatial/examples/close_mouth.json",
    "olam_edit/spaces_app/app.py",
    "olam_edit/cli/__init__.py",
]
SDIST_MUST_HOLD = [
    "pyproject.toml", "README.md", "olam_edit/LICENSE", ".ci/run", "spaces_app/app.py", "spaces_app/README.md",
    "tests/conftest.py", "tests/hub_server.py", "tests/tiny_models.py", "tests/tiny_diffusers.py",
    "adapters/face_dcgan/weights/face_dcgan64.safetensors",
]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


def test_wheel_holds_the_licence_data_and_the_space(dists: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    missing = [n for n in WHEEL_MUST_HOLD if n not in names]
    assert not missing, missing
    assert any(n.endswith(".dist-info/licenses/olam_edit/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "adapters/", "spaces_app/")) for n in names)  # only under olam_edit/
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(dists["wheel"]).read(metadata).decode()
    assert "License-Expression: MIT" in text and "License-File: olam_edit/LICENSE" in text


def test_readme_pictures_render_on_a_package_index(dists: dict[str, Path]) -> None:
    """A package index shows the README without the repository beside it: images need absolute URLs."""
    metadata = next(n for n in zipfile.ZipFile(dists["wheel"]).namelist() if n.endswith("METADATA"))
    text = zipfile.ZipFile(dists["wheel"]).read(metadata).decode()
    images = [line for line in text.splitlines() if line.startswith("![")]
    assert images, "the README shows pictures"
    assert all("](https://" in line for line in images), images
    for line in images:  # each URL names a file of this repository (at its path on the main branch)
        path = line.split("/main/", 1)[1].rstrip(")")
        assert (ROOT / path).is_file(), path


def test_sdist_holds_tests_space_and_licence(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = {n.removeprefix(f"{top}/") for n in tar.getnames()}
    missing = [n for n in SDIST_MUST_HOLD if n not in names]
    assert not missing, missing
    ours = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*.py")}
    assert ours <= names, sorted(ours - names)


def test_sdist_tests_collect_from_the_unpacked_folder(dists: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = next(tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    collected = int(done.stdout.strip().splitlines()[-1].split()[0])
    here = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert collected == int(here.stdout.strip().splitlines()[-1].split()[0])
