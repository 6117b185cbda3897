"""``olam-edit push`` / ``pull`` / ``apply <hub id>`` against FakeHub, in process and as a subprocess.

The in-process tests set what HF_ENDPOINT and HF_TOKEN set (``hf_env``); one subprocess test uses the
real environment variables, which huggingface_hub reads when it is imported.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from cli_exe import EXE
from hub_server import FakeHub
from test_hub import png_bytes, same, state, tiny_gen

import olam_edit as oe
from olam_edit.adapters import load_default
from olam_edit.cli import main
from olam_edit.edit.publish import pull_edit
from olam_edit.hub.stats import stats_path_in_repo

REPO = "test-user/face-edit"


@pytest.fixture(scope="module")
def face_edit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random rank-1 edit of the embedded face model's last layer, saved with a picture."""
    gen = load_default()
    h = gen.handle("main.12")
    g = torch.Generator().manual_seed(0)
    D = torch.linalg.qr(torch.randn(h.key_dim, 1, generator=g))[0].T.contiguous()
    lam = torch.randn(h.lam_of(h.effective_weight().detach(), D).shape, generator=g) * 0.01
    edit = oe.Edit.create(gen.model, {"main.12": oe.Delta(lam, D, h.layout)}, base_model=gen.name,
                          license=gen.license, rule="a faint tint")
    folder = edit.save(tmp_path_factory.mktemp("face") / "edit")
    (folder / "before_after.png").write_bytes(png_bytes())
    return folder


def _python_block(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def test_push_pull_apply_and_the_cards_code(hf_env: FakeHub, tmp_path: Path, face_edit_dir: Path, capsys) -> None:
    assert main(["push", str(face_edit_dir), REPO]) == 0
    assert "pushed to http://127.0.0.1" in capsys.readouterr().out
    files = hf_env.files(REPO)
    assert "before_after.png" in files  # picked up from the edit folder
    card = files["README.md"].decode()
    assert "DigiFace-1M" in card and "base_model: olam-edit/face-dcgan64" in card

    assert main(["pull", REPO, "--out", str(tmp_path / "pulled")]) == 0
    original = oe.Edit.load(face_edit_dir)
    assert oe.Edit.load(tmp_path / "pulled").fingerprint == original.fingerprint
    assert main(["apply", REPO, "--seeds", "0-1", "--grid", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()

    scope: dict = {}
    exec(_python_block(card), scope)  # the card's three lines, as a reader would paste them
    expected = load_default().model
    original.apply(expected)
    assert same(state(scope["gen"].model), state(expected))


def test_push_a_statistics_file(hf_env: FakeHub, tmp_path: Path) -> None:
    sm = tiny_gen().stats("3", samples=20, batch_size=10, cache_dir=tmp_path, progress=False)
    path = sm.save(tmp_path / "c.safetensors")
    assert main(["push", str(path), "test-user/stats"]) == 0
    assert stats_path_in_repo("3", sm.manifest["fingerprint"]) in hf_env.files("test-user/stats")


def test_errors_are_one_line_and_change_nothing(hf_env: FakeHub, tmp_path: Path, face_edit_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert main(["pull", "test-user/missing", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "olam-edit pull: error:" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()

    assert main(["apply", "test-user/missing", "--revision", "v2", "--grid", str(tmp_path / "g.png")]) == 2
    assert "test-user/missing" in capsys.readouterr().err and not (tmp_path / "g.png").exists()

    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(face_edit_dir), REPO]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and hf_env.repos == {}

    monkeypatch.setenv("HF_TOKEN", hf_env.token)
    assert main(["push", str(face_edit_dir), REPO]) == 0
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    assert main(["pull", REPO, "--out", str(tmp_path / "o")]) == 2
    assert "--overwrite" in capsys.readouterr().err and os.listdir(tmp_path / "o") == ["mine.txt"]


def test_environment_variables_in_a_subprocess(fake_hub: FakeHub, tmp_path: Path, face_edit_dir: Path) -> None:
    """HF_ENDPOINT and HF_TOKEN to push; HF_HUB_OFFLINE=1 serves a later pull from the standard cache."""
    home = tmp_path / "home"
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": fake_hub.endpoint, "HF_TOKEN": fake_hub.token}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
        env.pop(name, None)
    pushed = subprocess.run([EXE, "push", str(face_edit_dir), REPO], env=env, capture_output=True, text=True,
                            timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    assert "edit.safetensors" in fake_hub.files(REPO)

    pull_edit(REPO, tmp_path / "online", endpoint=fake_hub.endpoint, cache_dir=home / "hub")  # fills the cache
    seen = len(fake_hub.requests)
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_TOKEN": ""}
    pulled = subprocess.run([EXE, "pull", REPO, "--out", str(tmp_path / "offline")], env=offline,
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert len(fake_hub.requests) == seen  # nothing asked of the server
    assert oe.Edit.load(tmp_path / "offline").fingerprint == oe.Edit.load(face_edit_dir).fingerprint

