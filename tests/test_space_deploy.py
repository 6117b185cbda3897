"""``olam-edit space deploy``: a Gradio Space on the local Hub-compatible server that, downloaded into a
fresh folder and a fresh venv, installs offline from the files it holds and serves the app.

The new venv sees this interpreter's third-party packages (torch, Gradio, ...) through a ``.pth`` line
naming a folder of links to them, olam-edit's own files left out: installing them again would take
minutes, and olam-edit must come from the Space's wheel. pip runs with ``--no-index``: nothing comes
from the network (the Space's wheel URL is the local server's).
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from test_wheel import _free_port as free_port
from test_wheel import _run
from test_wheel import _stop as stop

from olam_edit.cli import main
from olam_edit.hub.space_deploy import MODEL_VARIABLE, requirements_text

ROOT = Path(__file__).resolve().parent.parent
TITLE = "olam-edit: rewrite a generative model"
START_TIMEOUT_S = 180.0
SPACE = "test-user/olam-space"


def deploy(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["space", "deploy", *args])
    out, err = capsys.readouterr()
    return code, out, err


def third_party_view(dest: Path) -> Path:
    """A folder of links to every entry of this interpreter's site-packages except olam-edit's own (its
    files, its metadata, its editable finder)."""
    dest.mkdir()
    for folder in (Path(p) for p in site.getsitepackages() if Path(p).name in ("site-packages", "dist-packages")):
        for entry in folder.iterdir():
            if not entry.name.lower().replace("-", "_").startswith(("olam_edit", "__editable__")) \
                    and not (dest / entry.name).exists():
                (dest / entry.name).symlink_to(entry)
    return dest


def fresh_venv(work: Path) -> Path:
    """A venv without pip whose only view of third-party packages is :func:`third_party_view`."""
    env_dir = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir])
    python = env_dir / "bin" / "python"
    (purelib,) = json.loads(_run([python, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
                                 env=clean_env(env_dir), cwd=work).stdout)
    Path(purelib, "third_party.pth").write_text(str(third_party_view(work / "third-party")) + "\n")
    return env_dir


def clean_env(env_dir: Path, **extra: str) -> dict[str, str]:
    """A process of the new venv: nothing pointing back at the checkout or this venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")
           and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "OLAM_EDIT_SPACE_APP", "HF_TOKEN")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "PIP_CONFIG_FILE": os.devnull, **extra}  # this machine's pip settings (indexes, links) stay out


def wait_for_page(port: int, proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"app.py exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.status, r.read().decode()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing answered on port {port}:\n{log.read_text()[-3000:]}")


def test_a_deployed_space_installs_offline_from_its_files_and_serves_the_app(hf_env, tmp_path, capsys) -> None:
    from huggingface_hub import HfApi, snapshot_download

    code, out, err = deploy(capsys, SPACE, "--model", "default", "--hardware", "cpu-upgrade")
    assert code == 0, err
    assert f"/spaces/{SPACE}" in out and "OLAM_EDIT_MODEL=default" in out
    api = HfApi(endpoint=hf_env.endpoint, token=hf_env.token)
    assert api.space_info(SPACE).sdk == "gradio"
    variables = {k: v.value for k, v in api.get_space_variables(SPACE).items()}
    assert variables == {MODEL_VARIABLE: "default"}
    assert api.get_space_runtime(SPACE).requested_hardware == "cpu-upgrade"

    space = Path(snapshot_download(SPACE, repo_type="space", local_dir=tmp_path / "space",
                                   endpoint=hf_env.endpoint, token=hf_env.token))
    (wheel,) = space.glob("olam_edit-*-py3-none-any.whl")
    names = {p.name for p in space.iterdir()}
    assert {"app.py", "README.md", "requirements.txt", "screenshot.png", wheel.name} <= names
    assert (space / "app.py").read_bytes() == (ROOT / "spaces_app" / "app.py").read_bytes()
    readme = (space / "README.md").read_text()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme and "suggested_hardware: cpu-upgrade" in readme
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert "--find-links ." in requirements and "olam-edit==0.1.0" in requirements
    assert f"--find-links {hf_env.endpoint}/spaces/{SPACE}/resolve/main/{wheel.name}" in requirements

    venv, cache = fresh_venv(tmp_path), tmp_path / "wheel-cache"
    cache.mkdir()  # empty: every third-party package is seen through the .pth, so pip fetches nothing
    installed = _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-v",
                      "--no-index", "--find-links", space, "--find-links", cache, "-r", space / "requirements.txt"],
                     cwd=tmp_path, env=clean_env(venv))
    assert re.search(rf"Processing \S*space/{re.escape(wheel.name)}", installed.stdout), installed.stdout[-3000:]
    assert f"{space}/." in installed.stdout and "Downloading" not in installed.stdout  # the file's own link too
    where = _run([venv / "bin" / "python", "-c", "import olam_edit; print(olam_edit.__file__)"],
                 cwd=space, env=clean_env(venv)).stdout.strip()
    assert venv.resolve() in Path(where).resolve().parents and ROOT not in Path(where).resolve().parents
    repack = f"from pathlib import Path; from olam_edit.hub.space_deploy import build_wheel; " \
             f"print(build_wheel(Path({str(tmp_path / 'repacked')!r})))"
    repacked = _run([venv / "bin" / "python", "-c", repack], cwd=tmp_path, env=clean_env(venv)).stdout.strip()
    assert same_wheel(Path(repacked), wheel)  # an installed wheel packs itself again, file for file

    port, log = free_port(), tmp_path / "app.log"
    env = clean_env(venv, GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                    GRADIO_TEMP_DIR=str(tmp_path / "gradio"), PYTHONPATH=str(space), **variables)  # as the Hub runs it
    with open(log, "wb") as sink:
        proc = subprocess.Popen([venv / "bin" / "python", "app.py"], cwd=space, env=env, stdout=sink,
                                stderr=subprocess.STDOUT)
    try:
        status, page = wait_for_page(port, proc, log)
        assert status == 200 and TITLE in page
    finally:
        stop(proc)


def same_wheel(a: Path, b: Path) -> bool:
    """Whether two wheels hold the same files with the same bytes (RECORD aside)."""
    def files(path: Path) -> dict[str, bytes]:
        with zipfile.ZipFile(path) as zf:
            return {n: zf.read(n) for n in zf.namelist() if not n.endswith(("/RECORD", "/"))}
    return files(a) == files(b)


def tiny_wheel(folder: Path, version: str = "0.1.0") -> Path:
    """A file named like olam-edit's wheel (deploy uploads it; nothing installs it here)."""
    folder.mkdir(exist_ok=True)
    path = folder / f"olam_edit-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("olam_edit/__init__.py", f"__version__ = {version!r}\n")
    return path


def test_an_existing_space_is_refused_unless_exist_ok_which_updates_it(hf_env, tmp_path, capsys) -> None:
    from huggingface_hub import HfApi

    old = tiny_wheel(tmp_path / "old", "0.0.9")
    assert deploy(capsys, SPACE, "--wheel", str(old))[0] == 0
    code, out, err = deploy(capsys, SPACE, "--wheel", str(tiny_wheel(tmp_path / "new")), "--model", "someone/gan")
    assert code == 2 and err.count("\n") == 1
    assert f"the Space {SPACE} already exists" in err and "--exist-ok" in err
    code, _, err = deploy(capsys, SPACE, "--exist-ok", "--wheel", str(tiny_wheel(tmp_path / "new")),
                          "--model", "someone/gan", "--hardware", "zero-a10g")
    assert code == 0, err
    api = HfApi(endpoint=hf_env.endpoint, token=hf_env.token)
    files = hf_env.files(SPACE, repo_type="space")
    assert "olam_edit-0.1.0-py3-none-any.whl" in files and old.name not in files  # the old wheel is gone
    assert "models:\n- someone/gan" in files["README.md"].decode()
    assert api.get_space_variables(SPACE)[MODEL_VARIABLE].value == "someone/gan"
    assert api.get_space_runtime(SPACE).requested_hardware == "zero-a10g"


@pytest.mark.parametrize(("args", "words"), [
    (["not a repo!"], ["not a valid Hub repo id"]),
    ([SPACE, "--model", "./my-model"], ["'default' or a Hub repo id", "push the model to the Hub"]),
    ([SPACE, "--hardware", "h100-free"], ["unknown Space hardware", "zero-a10g"]),
    ([SPACE, "--wheel", "missing.whl"], ["not an olam-edit wheel file"]),
])
def test_bad_input_is_one_line_before_anything_is_built_or_sent(hf_env, capsys, args, words) -> None:
    code, _, err = deploy(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("olam-edit space: error:"), err
    assert all(w in err for w in words), err
    assert not hf_env.calls("POST")  # nothing was created


def test_without_a_token_deploy_says_how_to_log_in(fake_hub, tmp_path, capsys, monkeypatch) -> None:
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "ENDPOINT", fake_hub.endpoint)
    code, _, err = deploy(capsys, SPACE, "--wheel", str(tiny_wheel(tmp_path)))
    assert code == 2 and err.count("\n") == 1 and "HF_TOKEN" in err and "hf auth login" in err, err
    assert not fake_hub.calls("POST")


def test_the_requirements_keep_every_pin_and_replace_only_olam_edit() -> None:
    template = "# pins\ntorch==2.13.0\nolam-edit @ git+https://example.org/x\nnumpy==2.4.6\n"
    text = requirements_text(template, "olam_edit-0.2.0-py3-none-any.whl", "https://hub/w.whl", "0.2.0")
    lines = text.splitlines()
    assert lines[:2] == ["# pins", "torch==2.13.0"] and lines[-1] == "numpy==2.4.6"
    order = [lines.index(x) for x in ("--find-links .", "--find-links https://hub/w.whl", "olam-edit==0.2.0")]
    assert order == sorted(order)
    assert "git+" not in text
    assert "olam-edit==0.2.0" in requirements_text("torch==2.13.0\n", "olam_edit-0.2.0-py3-none-any.whl", "u", "0.2.0")


def test_the_local_hub_answers_the_space_settings_api_as_the_hub_does(hf_env) -> None:
    import httpx2 as httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    auth = {"Authorization": f"Bearer {hf_env.token}"}
    bare = httpx.post(f"{hf_env.endpoint}/api/repos/create", json={"name": "no-sdk", "type": "space"}, headers=auth)
    assert bare.status_code == 400 and "sdk" in bare.text  # a Space needs its SDK
    api = HfApi(endpoint=hf_env.endpoint, token=hf_env.token)
    api.create_repo("test-user/s", repo_type="space", space_sdk="docker", space_secrets=[{"key": "K", "value": "v"}])
    assert api.get_space_variables("test-user/s") == {}  # secrets are never shown
    api.add_space_variable("test-user/s", "A_1", "x", description="d")
    assert api.get_space_variables("test-user/s")["A_1"].description == "d"
    api.delete_space_variable("test-user/s", "A_1")
    assert api.get_space_variables("test-user/s") == {}
    assert api.request_space_hardware("test-user/s", "t4-small").requested_hardware == "t4-small"
    assert api.get_space_runtime("test-user/s").stage == "BUILDING"
    with pytest.raises(HfHubHTTPError):
        api.add_space_variable("test-user/s", "bad key", "x")
    api.create_repo("test-user/m")
    with pytest.raises(HfHubHTTPError):  # only Spaces have variables
        api.get_space_variables("test-user/m")


def test_a_private_space_is_private_and_the_command_says_what_its_build_needs(hf_env, tmp_path, capsys) -> None:
    code, out, err = deploy(capsys, "olam-private", "--private", "--wheel", str(tiny_wheel(tmp_path)))
    assert code == 0, err
    assert hf_env.repo("test-user/olam-private", repo_type="space").private  # a bare name: the token's user
    assert "private Space refuses" in out and "/spaces/test-user/olam-private" in out
