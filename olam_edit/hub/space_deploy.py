"""Deploy the Space to the Hub in one call: a Gradio Space repo holding the app, its README (Space front
matter), a ``requirements.txt`` and olam-edit's own wheel, so the Space runs before any olam-edit
release is on a package index.

What the Space repo holds: ``app.py`` and ``screenshot.png`` from the app folder as they are (``app.py``
imports the Space's modules from the installed package, ``olam_edit.spaces_app``), ``README.md`` (the
folder's README with ``models`` and ``suggested_hardware`` added to its front matter when given), the
wheel, and ``requirements.txt``: the folder's pinned requirements with the ``olam-edit`` line replaced
by the wheel (see :func:`requirements_text`). The generator the Space runs (``--model``) is the Space
variable ``OLAM_EDIT_MODEL``, which the Hub sets in the Space's environment and the app reads.

The wheel is built from the checkout olam-edit was imported from (``pip wheel``, no dependencies, no
build isolation: nothing is downloaded), or repacked from the installed distribution's files when
olam-edit was installed from a wheel (:func:`build_wheel`).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olam_edit.errors import OlamEditError, RequestError, explain
from olam_edit.hub.errors import hub_errors
from olam_edit.hub.repo import check_repo_id, looks_like_repo_id, write_token

MODEL_VARIABLE = "OLAM_EDIT_MODEL"  # the Space variable (an environment variable of the Space) app.py reads
COPIED = ("app.py", "screenshot.png")  # files of the app folder uploaded as they are
WHEEL_SOURCES = ("pyproject.toml", "README.md", "olam_edit", "adapters", "spaces_app")  # what the wheel is built from
WHEEL_NAME = re.compile(r"olam_edit-(?P<version>[0-9][0-9A-Za-z.+!]*)-py3-none-any\.whl")
BUILD_TIMEOUT_S = 600
REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class Deployment:
    """What :func:`deploy_space` made: the Space's id and page, the commit, the wheel and the variables set."""

    repo_id: str
    url: str
    commit_url: str
    wheel: str
    variables: dict[str, str]


def deploy_space(repo_id: str, app_dir: str | Path, *, model: str | None = None, private: bool = False,
                 hardware: str | None = None, exist_ok: bool = False, wheel: str | Path | None = None,
                 token: str | None = None, endpoint: str | None = None) -> Deployment:
    """Create the Gradio Space ``repo_id`` and upload the app of ``app_dir`` with olam-edit's wheel.

    ``model`` ('default' or a Hub id) becomes the Space variable OLAM_EDIT_MODEL, ``hardware`` (a
    ``huggingface_hub.SpaceHardware`` value, e.g. ``cpu-upgrade`` or ``zero-a10g``) is requested for it,
    ``private`` makes a new Space private. An existing Space is refused unless ``exist_ok``: then its
    files are replaced (older wheels removed), and the variable and hardware are set when given.
    ``wheel``: upload this olam-edit wheel instead of building one. Everything is checked before
    anything is built or sent (RequestError, HubAuthError without a token).
    """
    from huggingface_hub import HfApi

    check_deploy_inputs(repo_id, model, hardware, wheel)
    api = HfApi(endpoint=endpoint, token=write_token(token))
    if not exist_ok:
        with hub_errors("look up the Space", repo_id):
            full_id = repo_id if "/" in repo_id else f"{api.whoami()['name']}/{repo_id}"
            if api.repo_exists(full_id, repo_type="space"):
                raise _exists_error(full_id)  # before the wheel is built
    with tempfile.TemporaryDirectory(prefix="olam-edit-space-") as tmp:
        built = Path(wheel) if wheel is not None else build_wheel(Path(tmp) / "dist")
        full_id = _create_space(api, repo_id, model=model, private=private, hardware=hardware, exist_ok=exist_ok)
        folder = lay_out_space(Path(app_dir), built, Path(tmp) / "space", wheel_url=_wheel_url(api, full_id, built),
                               model=model, hardware=hardware)
        with hub_errors("upload the Space to", full_id):
            commit = api.upload_folder(folder_path=folder, repo_id=full_id, repo_type="space",
                                       commit_message=f"Deploy olam-edit's Space ({built.name})",
                                       delete_patterns=["*.whl"])  # an older wheel goes; this commit's stays
    return Deployment(full_id, f"{api.endpoint}/spaces/{full_id}", str(commit), built.name,
                      {MODEL_VARIABLE: model} if model else {})


def check_deploy_inputs(repo_id: str, model: str | None, hardware: str | None, wheel: str | Path | None) -> None:
    """RequestError naming the first bad input: the repo id, the model, the hardware or the wheel file."""
    from huggingface_hub import SpaceHardware

    check_repo_id(repo_id)
    if model is not None and model != "default" and ("/" not in model or not looks_like_repo_id(model)):
        raise RequestError(explain("the Space's model must be 'default' or a Hub repo id", got=repr(model),
                                   expected="'default' or 'namespace/name'",
                                   fix="A local path cannot be read by the Space: push the model to the Hub first."))
    flavors = [h.value for h in SpaceHardware]
    if hardware is not None and hardware not in flavors:
        raise RequestError(explain("unknown Space hardware", got=repr(hardware), expected=", ".join(flavors)))
    if wheel is not None and (not Path(wheel).is_file() or not WHEEL_NAME.fullmatch(Path(wheel).name)):
        raise RequestError(explain("not an olam-edit wheel file", got=str(wheel),
                                   expected="an existing olam_edit-<version>-py3-none-any.whl",
                                   fix="Build one with `python -m build --wheel`, or leave --wheel out."))


def _create_space(api: Any, repo_id: str, *, model: str | None, private: bool, hardware: str | None,
                  exist_ok: bool) -> str:
    """Create the Space (its variable and hardware with it) and return its full id; an existing one is
    refused unless ``exist_ok``, and then gets the variable and hardware set when given."""
    from huggingface_hub.errors import HfHubHTTPError

    variables = [{"key": MODEL_VARIABLE, "value": model, "description": "the generator the Space runs"}] if model \
        else None
    with hub_errors("create the Space", repo_id):
        try:
            return str(api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private,
                                       space_hardware=hardware, space_variables=variables).repo_id)
        except HfHubHTTPError as e:
            if getattr(e.response, "status_code", None) != 409:  # 409: it exists
                raise
        full_id = repo_id if "/" in repo_id else f"{api.whoami()['name']}/{repo_id}"
    if not exist_ok:
        raise _exists_error(full_id)
    with hub_errors("update the settings of the Space", full_id):
        if model:
            api.add_space_variable(full_id, MODEL_VARIABLE, model, description="the generator the Space runs")
        if hardware:
            api.request_space_hardware(full_id, hardware)
    return full_id


def _exists_error(full_id: str) -> RequestError:
    return RequestError(explain(f"the Space {full_id} already exists",
                                fix=f"Pass --exist-ok to update it (olam-edit space deploy {full_id} --exist-ok), "
                                    "or choose another name."))


def _wheel_url(api: Any, repo_id: str, wheel: Path) -> str:
    """Where the Space serves the wheel once uploaded (its ``resolve`` URL on the main branch)."""
    return f"{api.endpoint}/spaces/{repo_id}/resolve/main/{wheel.name}"


def lay_out_space(app_dir: Path, wheel: Path, dest: Path, *, wheel_url: str, model: str | None = None,
                  hardware: str | None = None) -> Path:
    """The Space repo's files in ``dest`` (created): see the module docstring. Returns ``dest``."""
    missing = [name for name in ("app.py", "README.md", "requirements.txt") if not (app_dir / name).is_file()]
    if missing:
        raise RequestError(explain("the app folder lacks the Space's files", got=f"{app_dir} without {missing}",
                                   expected="app.py, README.md and requirements.txt"))
    dest.mkdir(parents=True)
    for name in COPIED:
        if (app_dir / name).is_file():
            shutil.copyfile(app_dir / name, dest / name)
    shutil.copyfile(wheel, dest / wheel.name)
    version = wheel_version(wheel)
    template = (app_dir / "requirements.txt").read_text(encoding="utf-8")
    (dest / "requirements.txt").write_text(requirements_text(template, wheel.name, wheel_url, version),
                                           encoding="utf-8")
    readme = (app_dir / "README.md").read_text(encoding="utf-8")
    (dest / "README.md").write_text(readme_text(readme, model=model, hardware=hardware), encoding="utf-8")
    return dest


def wheel_version(wheel: Path) -> str:
    match = WHEEL_NAME.fullmatch(wheel.name)
    if match is None:
        raise RequestError(explain("not an olam-edit wheel file name", got=wheel.name,
                                   expected="olam_edit-<version>-py3-none-any.whl"))
    return match.group("version")


def requirements_text(template: str, wheel_name: str, wheel_url: str, version: str) -> str:
    """``template`` (pinned requirements) with its ``olam-edit`` line replaced by the uploaded wheel.

    The Hub's Space build installs ``requirements.txt`` before it copies the repository in (only that
    file is there), so pip finds the wheel at the Space's own URL (``--find-links <url of the wheel>``);
    ``pip install -r requirements.txt`` in a clone of the Space finds it beside the file
    (``--find-links .``, relative to the requirements file). Either way ``olam-edit==<version>`` is the
    wheel's version; the find-links come first, so a file there wins a tie with an index.
    """
    block = ["# olam-edit itself: the wheel uploaded with this Space (no package index serves it yet). The Hub's",
             "# Space build reads this file before the repository is copied in, so it finds the wheel at the",
             "# Space's URL; `pip install -r requirements.txt` in a clone finds it beside this file.",
             "--find-links .", f"--find-links {wheel_url}", f"olam-edit=={version}"]
    lines = template.splitlines()
    at = next((i for i, line in enumerate(lines) if _requirement_name(line) == "olam-edit"), None)
    lines = [*lines, *block] if at is None else [*lines[:at], *block, *lines[at + 1:]]
    return "\n".join(lines) + "\n"


def _requirement_name(line: str) -> str | None:
    if line.lstrip().startswith(("#", "-")):
        return None
    match = REQUIREMENT_NAME.match(line)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def readme_text(readme: str, *, model: str | None = None, hardware: str | None = None) -> str:
    """The Space's README: ``readme`` with ``models: [model]`` (a Hub id) and ``suggested_hardware`` in its
    front matter when given; the front matter must say ``sdk: gradio``."""
    from huggingface_hub import SpaceCard

    card = SpaceCard(readme)
    data: Any = card.data  # SpaceCardData (typed as the base CardData)
    if data.sdk != "gradio":
        raise RequestError(explain("the app's README front matter must say sdk: gradio", got=data.sdk))
    if model and model != "default":
        data.models = [model]
    if hardware:
        data.suggested_hardware = hardware
    return str(card)


# ------------------------------------------------------------------------------------------------ the wheel
def build_wheel(out: Path) -> Path:
    """olam-edit's wheel in ``out``: built from the checkout it was imported from, else repacked from the
    installed distribution (a wheel install). Nothing is downloaded."""
    out.mkdir(parents=True, exist_ok=True)
    root = checkout_root()
    return wheel_from_checkout(root, out) if root is not None else wheel_from_installed(out)


def checkout_root() -> Path | None:
    """The source checkout olam-edit was imported from (its ``pyproject.toml`` names olam-edit), else None."""
    root = Path(__file__).resolve().parents[2]  # olam_edit/hub/space_deploy.py -> the folder holding olam_edit/
    project = root / "pyproject.toml"
    if not project.is_file() or not all((root / name).exists() for name in WHEEL_SOURCES):
        return None
    return root if re.search(r'(?m)^name\s*=\s*"olam-edit"', project.read_text(encoding="utf-8")) else None


def wheel_from_checkout(root: Path, out: Path) -> Path:
    """``pip wheel`` of a copy of ``root``'s sources (building in place would leave build/ behind)."""
    with tempfile.TemporaryDirectory(prefix="olam-edit-wheel-") as tmp:
        src = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        for name in WHEEL_SOURCES:
            if (root / name).is_dir():
                shutil.copytree(root / name, src / name, ignore=ignore)
            else:
                src.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / name, src / name)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
               "-w", str(out), str(src)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise OlamEditError(explain("building olam-edit's wheel failed", got=last[0][:300],
                                    fix="pip install setuptools setuptools-scm (the build needs them), or pass "
                                        "a wheel with --wheel."))
    return _one_wheel(out)


def _one_wheel(out: Path) -> Path:
    wheels = sorted(p for p in out.glob("olam_edit-*.whl") if WHEEL_NAME.fullmatch(p.name))
    if len(wheels) != 1:
        raise OlamEditError(explain("expected one olam-edit wheel after the build", got=[p.name for p in wheels]))
    return wheels[0]


def wheel_from_installed(out: Path) -> Path:
    """A wheel of the installed (not editable) distribution: its package files and metadata as RECORD
    lists them, compiled files and the installer's own files left out, RECORD written anew."""
    dist = importlib.metadata.distribution("olam-edit")
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        raise OlamEditError(explain("olam-edit is installed in editable mode, but its checkout is not found",
                                    fix="Pass a wheel with --wheel."))
    skip = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}
    files = [f for f in dist.files or [] if not str(f).startswith("..") and f.suffix != ".pyc"
             and "__pycache__" not in f.parts and not (f.parts[0].endswith(".dist-info") and f.name in skip)]
    info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info is None or not files:
        raise OlamEditError(explain("the installed olam-edit lists no files to pack", fix="Pass a wheel with --wheel."))
    wheel = out / f"olam_edit-{dist.version}-py3-none-any.whl"
    _write_wheel(wheel, {f.as_posix(): Path(str(dist.locate_file(f))).read_bytes() for f in files}, info)
    return wheel


def _write_wheel(path: Path, files: dict[str, bytes], info: str) -> None:
    """A wheel zip of ``files`` (archive path -> bytes) with ``<info>/RECORD`` listing their hashes."""
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([name, f"sha256={digest}", len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record.getvalue())
