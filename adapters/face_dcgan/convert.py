"""Reproducibly convert the face DCGAN of ``gan-face-generate==1.1.1`` into our float16 safetensors.

Usage::

    pip install --no-deps gan-face-generate==1.1.1
    python -m olam_edit.adapters.face_dcgan.convert [--out PATH]

It reads the wheel's ``weights.tar`` with ``torch.load(weights_only=True)`` (no pickled code runs),
keeps ``netG_state_dict`` without the BatchNorm ``num_batches_tracked`` counters, stores every
tensor as contiguous float16 with provenance metadata, and checks that the float16 file, upcast to
float32, reproduces the original float32 model within :data:`TOLERANCE` on seeded latents before it
atomically replaces the output. ``gan_face_generate`` is imported only inside :func:`main`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.resources
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from olam_edit.adapters.face_dcgan.model import LATENT_SHAPE, WEIGHTS_FILE, check_state, load_face_dcgan_from
from olam_edit.files.atomic import atomic_write

SOURCE_PACKAGE = "gan-face-generate"
SOURCE_MODULE = "gan_face_generate"
SOURCE_FILE = "weights.tar"
SOURCE_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"  # version 1.1.1
TOLERANCE = 1e-2  # max abs difference of images in [-1, 1]
CHECK_COUNT = 64  # latents used for the check
CHECK_SEED = 0


def default_out() -> Path:
    """Return where the package expects the embedded file (``weights/`` beside this module)."""
    return Path(__file__).resolve().parent / "weights" / WEIGHTS_FILE


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line (only ``--out``)."""
    prog = "python -m olam_edit.adapters.face_dcgan.convert"
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=fmt)
    parser.add_argument("--out", type=Path, default=default_out(), help="output .safetensors path")
    return parser.parse_args(argv)


def sha256_of(path: Path) -> str:
    """Return the hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_source() -> tuple[dict[str, torch.Tensor], str]:
    """Load ``netG_state_dict`` of the installed wheel; return it and the source file's SHA-256.

    Raises ``SystemExit`` if the file is not the one of version 1.1.1 (checksum differs).
    """
    ref = importlib.resources.files(SOURCE_MODULE) / SOURCE_FILE
    with importlib.resources.as_file(ref) as path:
        sha = sha256_of(path)
        if sha != SOURCE_SHA256:
            raise SystemExit(f"{path} has sha256 {sha}, expected {SOURCE_SHA256} (gan-face-generate 1.1.1)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return dict(checkpoint["netG_state_dict"]), sha


def to_half(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the float tensors of ``state`` as contiguous float16, without ``num_batches_tracked``.

    Raises the errors of :func:`check_state` if the result does not fit our architecture (including
    values that overflow float16).
    """
    half = {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in state.items()
        if not k.endswith(".num_batches_tracked")
    }
    check_state(half)
    return half


def metadata(sha: str) -> dict[str, str]:
    """Return the string metadata stored in the file header (provenance and license)."""
    return {
        "format": "pt",
        "name": "face_dcgan64",
        "architecture": "DCGAN generator (nz=100, ngf=64, nc=3), 64x64 RGB output in [-1, 1]",
        "source_package": SOURCE_PACKAGE,
        "source_version": importlib.metadata.version(SOURCE_PACKAGE),
        "source_file": f"{SOURCE_MODULE}/{SOURCE_FILE}",
        "source_sha256": sha,
        "source_license": "MIT, Copyright (c) 2023, chien liu",
        "training_data": "DigiFace-1M (licensed for non-commercial research only)",
        "storage_dtype": "float16",
        "converted_by": "python -m olam_edit.adapters.face_dcgan.convert",
    }


def original_model(state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the wheel's own float32 ``Generator`` with ``state`` loaded, in eval mode."""
    from gan_face_generate.models import Generator

    model = Generator(0, 3, LATENT_SHAPE[0], 64)
    model.load_state_dict(state)
    return model.eval()


def check_latents() -> torch.Tensor:
    """Return the seeded check latents."""
    gen = torch.Generator().manual_seed(CHECK_SEED)
    return torch.randn(CHECK_COUNT, *LATENT_SHAPE, generator=gen)  # [64, 100, 1, 1]


@torch.no_grad()
def max_abs_diff(a: nn.Module, b: nn.Module, z: torch.Tensor) -> float:
    """Return the max absolute difference of the float32 images of ``a`` and ``b`` for latents ``z``."""
    return (a(z).float() - b(z).float()).abs().max().item()  # over [N, 3, 64, 64]


def canonicalize_header(path: Path) -> None:
    """Rewrite the JSON header of the safetensors file at ``path`` with sorted keys, in place.

    ``save_file`` writes the metadata in hash-map order, which changes from run to run; sorting it
    makes the output byte-for-byte reproducible. The header keeps its length and the data its offsets.
    """
    with path.open("r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > size:
            raise ValueError(f"canonical header of {path} is longer than the original ({len(text)} > {size})")
        f.seek(8)
        f.write(text.ljust(size))  # safetensors pads its header with spaces too


def write_atomic(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], out: Path, verify: Callable[[Path], None]
) -> None:
    """Save ``tensors`` to a temporary file beside ``out``, run ``verify`` on it, then move it into place.

    Goes through the project's one writer (:func:`olam_edit.files.atomic.atomic_write`: fsync, the
    umask's mode, rename): ``out`` is never left half-written, and on any error the temporary file is
    removed.
    """

    def write(tmp: Path) -> None:
        save_file(dict(tensors), tmp, metadata=dict(meta))
        canonicalize_header(tmp)
        verify(tmp)

    atomic_write(out, write)


def main(argv: list[str] | None = None) -> int:
    """Convert, verify within :data:`TOLERANCE`, write ``--out`` and print the measured difference."""
    args = _parse_args(argv)
    state, sha = read_source()
    original = original_model(state)
    z = check_latents()  # [64, 100, 1, 1]
    measured: list[float] = []

    def verify(path: Path) -> None:
        measured.append(max_abs_diff(original, load_face_dcgan_from(path), z))
        if measured[-1] > TOLERANCE:
            raise SystemExit(f"float16 file differs by {measured[-1]:.3g} > {TOLERANCE} from the original")

    write_atomic(to_half(state), metadata(sha), args.out, verify)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size:,} bytes)")
    print(f"max abs difference, float16 file vs original float32, {CHECK_COUNT} latents: {measured[-1]:.6g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
