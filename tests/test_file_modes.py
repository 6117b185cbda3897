"""Every file the project writes gets the mode the umask gives (0644 under 022), and so does every folder.

``mkstemp``/``mkdtemp`` make private files (0600) and folders (0700), and safetensors' ``save_file``
replaces the file it writes (resetting a mode set before): each output below would fail without the
one atomic writer of :mod:`olam_edit.files.atomic`.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub
from PIL import Image
from tiny_models import tiny_dcgan, tiny_mlp

import olam_edit as oe
from olam_edit.adapters import stylegan2 as S
from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.edit.lora import to_lora
from olam_edit.edit.publish import pull_edit
from olam_edit.files.atomic import atomic_write_bytes, current_umask, umask_mode
from olam_edit.memory.collect import collect_stats
from olam_edit.memory.delta import Delta

ROOT = Path(__file__).resolve().parent.parent
REPO = "test-user/mode-edit"


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Set the process umask (0o022 unless parametrized) for the test, and restore it after."""
    mask = getattr(request, "param", 0o022)
    old = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of the folder ``root`` and of everything under it, by relative path (folders end in /)."""
    found = {"/": stat.S_IMODE(root.stat().st_mode)}
    for p in sorted(root.rglob("*")):
        found[f"{p.relative_to(root)}/" if p.is_dir() else str(p.relative_to(root))] = stat.S_IMODE(p.stat().st_mode)
    return found


def assert_modes(root: Path, file_mode: int = 0o644, dir_mode: int = 0o755, at_least: int = 1) -> None:
    """Every file under ``root`` has ``file_mode``, every folder ``dir_mode``; and there are files."""
    found = modes(root)
    files = {k: v for k, v in found.items() if not k.endswith("/")}
    assert len(files) >= at_least, found
    want = {k: dir_mode if k.endswith("/") else file_mode for k in found}
    assert {k: oct(v) for k, v in found.items()} == {k: oct(v) for k, v in want.items()}
    assert not [k for k in found if Path(k).name.startswith(".")]  # no temporary file or folder left behind


def linear_edit(seed: int = 0) -> tuple[torch.nn.Module, oe.Edit]:
    """A rank-2 edit of layer '0' (Linear 6 -> 12) of the tiny MLP, with orthonormal directions."""
    model = tiny_mlp(seed=seed)
    g = torch.Generator().manual_seed(seed + 11)
    D = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0].T.contiguous()  # [2, 6]
    lam = 0.3 * torch.randn(12, 2, generator=g, dtype=torch.float64)  # [12, 2]
    return model, oe.Edit.create(model, {"0": Delta(lam, D, "linear")}, base_model="test-user/tiny-mlp")


def tiny_stylegan2() -> StyleGAN2Generator:
    """A 16 px StyleGAN2 with random weights (enough to write and read a checkpoint)."""
    torch.manual_seed(0)
    config = StyleGAN2Config(size=16, style_dim=32, n_mlp=2, channels={4: 16, 8: 12, 16: 8})
    return StyleGAN2Generator(config).eval().requires_grad_(False)


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


def space_zip_edit():
    """The Space's download-zip builder ``zip_edit`` (spaces_app/uploads.py).

    Imported as the wheel ships it (``olam_edit.spaces_app.uploads``) where that is installed, else
    loaded from the checkout's ``spaces_app/uploads.py`` (it imports only ``olam_edit``).
    """
    try:
        return importlib.import_module("olam_edit.spaces_app.uploads").zip_edit
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location("_space_uploads_for_modes", ROOT / "spaces_app" / "uploads.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.zip_edit


# ------------------------------------------------------------------------------------------ umask


def test_the_umask_is_read_without_changing_it(umask: int) -> None:
    assert current_umask() == 0o022 and os.umask(0o022) == 0o022  # unchanged by reading it
    assert umask_mode() == 0o644 and umask_mode(directory=True) == 0o755


@pytest.mark.parametrize("umask", [0o077], indirect=True)
def test_modes_follow_the_umask(umask: int, tmp_path: Path) -> None:
    assert umask_mode() == 0o600
    _, edit = linear_edit()
    assert_modes(edit.save(tmp_path / "edit"), 0o600, 0o700, at_least=2)
    path = atomic_write_bytes(tmp_path / "plain" / "x.bin", b"abc")
    assert path.read_bytes() == b"abc"
    assert_modes(tmp_path / "plain", 0o600, 0o700)


def test_an_existing_file_is_replaced_with_the_umask_mode(umask: int, tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ------------------------------------------------------------------------------------------ outputs


def test_edit_folder(umask: int, tmp_path: Path) -> None:
    _, edit = linear_edit()
    out = edit.save(tmp_path / "edit")
    assert {p.name for p in out.iterdir()} == {"edit.safetensors", "edit_config.json"}
    assert_modes(out, at_least=2)
    assert oe.Edit.load(out).layers == ["0"]


def test_stylegan2_conversion(umask: int, tmp_path: Path) -> None:
    model = tiny_stylegan2()
    torch.save(S.rosinality_checkpoint(model), tmp_path / "g.pt")
    converted = S.convert_stylegan2(tmp_path / "g.pt", tmp_path / "converted")
    assert {p.name for p in converted.iterdir()} == {"model.safetensors", "config.json"}
    assert_modes(converted, at_least=2)
    saved = S.save_stylegan2(model, tmp_path / "saved")
    assert_modes(saved, at_least=2)
    assert S.load_stylegan2(saved).config == model.config


def test_statistics_file_and_cache(umask: int, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    sm = oe.SecondMoment(6).add(torch.randn(40, 6, generator=g, dtype=torch.float64))  # [40, 6]
    assert_modes(sm.save(tmp_path / "one" / "stats.safetensors").parent)
    model = tiny_mlp()
    batches = [torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(3)]  # 3 x [8, 6]
    cache = tmp_path / "cache"
    got = collect_stats(model, ["0", "2"], batches, sampler={"seed": 3, "count": 24}, cache_dir=cache,
                        checkpoint_every=1, progress=False)
    assert got["0"].count == 24
    assert len(list(cache.rglob("*.safetensors"))) == 2
    assert_modes(cache, at_least=2)


def test_lora_export_in_both_formats(umask: int, tmp_path: Path) -> None:
    _, edit = linear_edit()
    peft = to_lora(edit, tmp_path / "peft", format="peft")
    assert {p.name for p in peft.iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
    assert_modes(peft, at_least=2)
    diffusers = to_lora(edit, tmp_path / "diffusers", format="diffusers")
    assert_modes(diffusers)


def test_pulled_folder(umask: int, hf_env: FakeHub, tmp_path: Path) -> None:
    model = tiny_dcgan(seed=0)
    g = torch.Generator().manual_seed(5)
    D = torch.linalg.qr(torch.randn(8, 1, generator=g))[0].T.contiguous()  # [1, 8] (layer '6': Conv2d 8 -> 8)
    lam = 0.2 * torch.randn(8, 1, 3, 3, generator=g)  # [out, r, kh, kw]
    edit = oe.Edit.create(model, {"6": Delta(lam, D, "conv2d")}, base_model="test-user/tiny-dcgan")
    edit.push_to_hub(REPO, image=png_bytes())
    out = pull_edit(REPO, tmp_path / "pulled", cache_dir=tmp_path / "hf-cache")
    assert {"edit.safetensors", "edit_config.json", "checksums.json", "README.md", "before_after.png"} <= {
        p.name for p in out.iterdir()}
    assert_modes(out, at_least=5)


def test_space_download_zip(umask: int, tmp_path: Path) -> None:
    _, edit = linear_edit()
    zipped = Path(space_zip_edit()(edit, tmp_path / "space", png_bytes()))
    assert stat.S_IMODE(zipped.stat().st_mode) == 0o644
    with zipfile.ZipFile(zipped) as zf:
        recorded = {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in zf.infolist() if not i.is_dir()}
    assert "edit/edit.safetensors" in recorded and len(recorded) >= 4
    assert {k: oct(v) for k, v in recorded.items()} == {k: "0o644" for k in recorded}  # what an unzip restores
    assert_modes(tmp_path / "space" / "edit", at_least=4)
