"""Tests of the embedded 64x64 face DCGAN and of the script that converts it from gan-face-generate."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest
import torch
from gan_face_generate.models import Generator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from olam_edit.adapters.face_dcgan import convert as convert_face_dcgan
from olam_edit.adapters.face_dcgan import model as face_dcgan
from olam_edit.errors import NonFiniteError, ShapeMismatchError


def _bn(index: int, channels: int) -> dict[str, tuple[int, ...]]:
    """Expected entries of the BatchNorm2d at ``main.<index>``."""
    return {f"main.{index}.{n}": (channels,) for n in ("weight", "bias", "running_mean", "running_var")}


EXPECTED = {
    "main.0.weight": (100, 512, 4, 4),
    **_bn(1, 512),
    "main.3.weight": (512, 256, 4, 4),
    **_bn(4, 256),
    "main.6.weight": (256, 128, 4, 4),
    **_bn(7, 128),
    "main.9.weight": (128, 64, 4, 4),
    **_bn(10, 64),
    "main.12.weight": (64, 3, 4, 4),
}
TOLERANCE = 1e-2
State = dict[str, torch.Tensor]
Captured = pytest.CaptureFixture[str]


def _latents(seed: int, n: int) -> torch.Tensor:
    """Seeded latents."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *face_dcgan.LATENT_SHAPE, generator=gen)  # [n, 100, 1, 1]


def _embedded_path() -> Path:
    """Path of the embedded weight file (the package is installed from a source tree)."""
    return Path(str(importlib.resources.files("olam_edit.adapters.face_dcgan") / "weights" / face_dcgan.WEIGHTS_FILE))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """The embedded model, float32 on CPU."""
    return face_dcgan.load_face_dcgan()


@pytest.fixture(scope="module")
def original() -> nn.Module:
    """The wheel's own float32 model, loaded from its weights.tar without running pickled code."""
    ref = importlib.resources.files("gan_face_generate") / "weights.tar"
    with importlib.resources.as_file(ref) as path:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = Generator(0, 3, 100, 64)
    net.load_state_dict(checkpoint["netG_state_dict"])
    return net.eval()


@pytest.fixture
def stored() -> State:
    """A fresh copy of the embedded tensors, to corrupt."""
    return load_file(_embedded_path())


def _write(tensors: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    """Save ``tensors`` as safetensors under ``tmp_path``."""
    path = tmp_path / "bad.safetensors"
    save_file(tensors, path)
    return path


def test_architecture_declares_expected_keys_and_shapes() -> None:
    assert face_dcgan.expected_shapes() == EXPECTED
    assert face_dcgan.LATENT_SHAPE == (100, 1, 1)


def test_embedded_file_holds_float16_tensors_and_provenance() -> None:
    path = _embedded_path()
    assert 6_000_000 < path.stat().st_size < 8_000_000
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert shapes == EXPECTED
    assert dtypes == {"F16"}
    assert meta["source_package"] == "gan-face-generate"
    assert meta["source_version"] == "1.1.1"
    assert meta["source_sha256"] == convert_face_dcgan.SOURCE_SHA256
    assert "MIT" in meta["source_license"]
    assert "non-commercial" in meta["training_data"]


def test_loaded_model_has_dcgan_layers_in_eval_mode(model: nn.Module) -> None:
    kinds = [type(m) for m in model.main]
    block = [nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU]
    assert kinds == block * 4 + [nn.ConvTranspose2d, nn.Tanh]
    convs = [m for m in model.main if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.stride, c.padding) for c in convs] == [((1, 1), (0, 0))] + [((2, 2), (1, 1))] * 4
    assert all(c.bias is None for c in convs)
    assert not any(m.inplace for m in model.main if isinstance(m, nn.ReLU))  # hooks see intact outputs
    assert not any(m.training for m in model.modules())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items() if "num_batches" not in k} == EXPECTED
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


@torch.no_grad()
def test_output_is_batch_of_64px_rgb_images_in_range(model: nn.Module) -> None:
    images = model(_latents(0, 8))  # [8, 3, 64, 64]
    assert images.shape == (8, 3, 64, 64)
    assert images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.1  # not a constant image
    assert (images[0] - images[1]).abs().mean() > 0.05  # different latents, different faces


@torch.no_grad()
def test_model_is_deterministic_and_batch_independent(model: nn.Module) -> None:
    z = _latents(1, 6)  # [6, 100, 1, 1]
    first = model(z)  # [6, 3, 64, 64]
    assert torch.equal(first, model(z))
    assert torch.equal(first, face_dcgan.load_face_dcgan()(z))
    singles = torch.cat([model(z[i : i + 1]) for i in range(6)])  # eval BatchNorm: no batch coupling
    torch.testing.assert_close(singles, first, atol=1e-5, rtol=0)


@torch.no_grad()
def test_matches_original_float32_model(model: nn.Module, original: nn.Module) -> None:
    for seed in (0, 1, 2):
        z = _latents(seed, 16)  # [16, 100, 1, 1]
        diff = (model(z) - original(z)).abs().max().item()
        assert 0 < diff <= TOLERANCE  # float16 storage: close, not identical


def test_loading_does_not_consume_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    face_dcgan.load_face_dcgan()
    assert torch.equal(torch.rand(4), expected)


@torch.no_grad()
def test_dtype_argument_sets_float_dtype(model: nn.Module) -> None:
    wide = face_dcgan.load_face_dcgan(dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in wide.parameters())
    z = _latents(2, 4)  # [4, 100, 1, 1]
    torch.testing.assert_close(wide(z.double()).float(), model(z), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="floating point"):
        face_dcgan.load_face_dcgan(dtype=torch.int32)


def test_missing_and_unexpected_keys_are_named(stored: State, tmp_path: Path) -> None:
    del stored["main.7.running_var"]
    stored["main.99.weight"] = torch.zeros(3)
    named = r"missing=\['main\.7\.running_var'\].*unexpected=\['main\.99\.weight'\]"
    with pytest.raises(ValueError, match=named):
        face_dcgan.load_face_dcgan_from(_write(stored, tmp_path))


def test_wrong_shape_is_reported(stored: State, tmp_path: Path) -> None:
    stored["main.6.weight"] = stored["main.6.weight"][:, :64].contiguous()
    with pytest.raises(ShapeMismatchError, match=r"main\.6\.weight.*\(256, 64, 4, 4\).*\(256, 128, 4, 4\)"):
        face_dcgan.load_face_dcgan_from(_write(stored, tmp_path))


def test_non_float_and_non_finite_entries_are_rejected(stored: State, tmp_path: Path) -> None:
    bad = dict(stored, **{"main.1.bias": torch.zeros(512, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r"main\.1\.bias.*not floating point"):
        face_dcgan.load_face_dcgan_from(_write(bad, tmp_path))
    stored["main.12.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"main\.12\.weight"):
        face_dcgan.load_face_dcgan_from(_write(stored, tmp_path))


@pytest.mark.parametrize("cut", [0, 100, 5_000_000])
def test_corrupted_file_gives_clear_error(tmp_path: Path, cut: int) -> None:
    data = _embedded_path().read_bytes()
    path = tmp_path / "broken.safetensors"
    path.write_bytes(data[:cut] if cut else b"not a safetensors file at all")
    with pytest.raises(face_dcgan.WeightFileError, match="Cannot read face DCGAN weight file"):
        face_dcgan.load_face_dcgan_from(path)


def test_conversion_script_reproduces_embedded_file(tmp_path: Path, capsys: Captured) -> None:
    out = tmp_path / "sub" / "face.safetensors"
    assert convert_face_dcgan.main(["--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["face.safetensors"]  # no temp file left
    printed = re.search(r"64 latents: ([0-9.e-]+)", capsys.readouterr().out)
    assert printed is not None and 0 < float(printed.group(1)) <= TOLERANCE
    made, shipped = load_file(out), load_file(_embedded_path())
    assert made.keys() == shipped.keys()
    assert all(torch.equal(made[k], shipped[k]) for k in made)
    with safe_open(out, framework="pt") as a, safe_open(_embedded_path(), framework="pt") as b:
        assert a.metadata() == b.metadata()


def test_failed_verification_keeps_old_file(tmp_path: Path) -> None:
    out = tmp_path / "face.safetensors"
    out.write_bytes(b"old")

    def reject(path: Path) -> None:
        raise SystemExit("too different")

    with pytest.raises(SystemExit, match="too different"):
        convert_face_dcgan.write_atomic({"x": torch.zeros(2)}, {"k": "v"}, out, reject)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["face.safetensors"]
