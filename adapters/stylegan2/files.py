"""Our own format (``model.safetensors`` + ``config.json``), format sniffing, and conversion."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from olam_edit.adapters.stylegan2.build import (
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    _short,
    build_generator,
)
from olam_edit.adapters.stylegan2.config import StyleGAN2Config
from olam_edit.adapters.stylegan2.net import StyleGAN2Generator
from olam_edit.adapters.stylegan2.nvlabs import load_nvlabs_pickle
from olam_edit.adapters.stylegan2.rosinality import load_rosinality
from olam_edit.adapters.stylegan2.safety import exception_text, summary
from olam_edit.errors import WeightFileError, explain
from olam_edit.files.atomic import atomic_write
from olam_edit.files.validate import field, number, read_json


def save_stylegan2(generator: StyleGAN2Generator, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (atomically); return it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in generator.state_dict().items()}
    config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": generator.config.to_dict()}
    metadata = {"format": "pt", "olam_edit": FORMAT_NAME}
    _atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return out


def _atomic_write(target: Path, write: Callable[[str], Any]) -> None:
    """Run ``write(temp_path)`` beside ``target``, then move it into place (:func:`atomic_write`: fsync,
    the umask's mode, rename)."""
    atomic_write(target, lambda tmp: write(str(tmp)))


def load_olam_stylegan2(path: str | os.PathLike) -> StyleGAN2Generator:
    """Load our format from its folder, or from its ``model.safetensors`` with ``config.json`` beside."""
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent
    config = _read_config(folder / CONFIG_NAME)
    try:
        state = load_file(folder / WEIGHTS_NAME)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise WeightFileError(explain(f"{folder / WEIGHTS_NAME}: unreadable safetensors file",
                                      got=str(exc)[:200], fix="Download or convert the model again.")) from exc
    return build_generator(config, state, source=str(folder / WEIGHTS_NAME))


# config.json's architecture fields and the JSON types each must have (checked before any use)
CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "size": (int,), "style_dim": (int,), "n_mlp": (int,), "channel_multiplier": (int,), "channels": (dict,),
    "z_dim": (int,), "lr_mlp": (int, float), "img_channels": (int,), "conv_clamp": (int, float, type(None)),
    "flavor": (str,),
}


def _check_config_fields(config: object, where: str) -> dict[str, Any]:
    """The ``config`` object of config.json with every field of the expected JSON type; unknown keys refused."""
    if not isinstance(config, dict):
        raise WeightFileError(explain(f"{where}: 'config' is not an object", got=summary(config)))
    unknown = sorted(k for k in config if k not in CONFIG_FIELDS)
    if unknown:
        raise WeightFileError(explain(f"{where}: unknown config fields", got=[k[:40] for k in unknown[:5]],
                                      expected=sorted(CONFIG_FIELDS)))
    for key, value in config.items():
        field(config, key, CONFIG_FIELDS[key], WeightFileError, where=f"{where}: config")
        if isinstance(value, float):
            number(value, WeightFileError, where=f"{where}: config.{key}")
    for res, ch in config.get("channels", {}).items():
        good_res = isinstance(res, str) and res.isdigit() and len(res) <= 5
        if not good_res or isinstance(ch, bool) or not isinstance(ch, int):
            raise WeightFileError(explain(f"{where}: config.channels is not valid",
                                          got=f"{summary(res)}: {summary(ch)}",
                                          expected="resolution strings mapped to channel counts"))
    return config


def _read_config(path: Path) -> StyleGAN2Config:
    """Parse and validate ``config.json`` (a bounded regular file; every field's type checked first)."""
    data = read_json(path, WeightFileError)
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise WeightFileError(explain(f"{path}: not an olam-edit StyleGAN2 config",
                                          got=summary(data.get("format") if isinstance(data, dict) else data),
                                          expected=FORMAT_NAME))
        return StyleGAN2Config.from_dict(_check_config_fields(data.get("config"), str(path)))
    except WeightFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightFileError(explain(f"{path}: unreadable StyleGAN2 config",
                                      got=exception_text(exc),
                                      fix="Re-create it with save_stylegan2 / convert_stylegan2.")) from exc


_SUFFIX_RANK = {".safetensors": 0, ".pt": 1, ".pth": 1, ".pkl": 2}


def find_stylegan2_file(repo_dir: str | os.PathLike) -> Path:
    """The checkpoint to load from a folder (a downloaded snapshot): ours, else a ``.pt``/``.pth``, else a ``.pkl``.

    Only the folder's own files count: sub-folders are never searched (a Hub snapshot keeps its
    checkpoint at the top; a checkpoint deeper down is loaded by naming it), and hidden files are
    skipped. Our ``model.safetensors`` counts only with ``config.json`` beside it. Two candidates of
    the best kind raise WeightFileError (name the file instead); none raises FileNotFoundError.
    """
    root = Path(repo_dir)
    found = _candidates(root)
    if not found:
        raise FileNotFoundError(explain(f"no StyleGAN2 checkpoint in {root} (sub-folders are not searched)",
                                        expected="model.safetensors + config.json, *.pt or *.pkl in the folder",
                                        fix="Name the checkpoint file to load."))
    best = found[min(found)]
    if len(best) > 1:
        raise WeightFileError(explain(f"several StyleGAN2 checkpoints in {root}",
                                      got=_short([p.name for p in best]),
                                      fix="Name the file to load."))
    return best[0]


def _candidates(folder: Path) -> dict[int, list[Path]]:
    """The checkpoints directly in ``folder`` by kind (0 ours, 1 ``.pt``/``.pth``, 2 ``.pkl``), sorted by name."""
    found: dict[int, list[Path]] = {}
    for file in sorted(folder.iterdir()):
        rank = _SUFFIX_RANK.get(file.suffix.lower())
        if rank is None or file.name.startswith(".") or not file.is_file():
            continue
        if rank == 0 and (file.name != WEIGHTS_NAME or not (folder / CONFIG_NAME).is_file()):
            continue
        found.setdefault(rank, []).append(file)
    return found


def looks_like_stylegan2(path: str | os.PathLike) -> bool:
    """The adapter registry's sniff: whether :func:`load_stylegan2` would take ``path``. Cheap.

    A folder with a checkpoint of its own (see :func:`find_stylegan2_file`); a ``.pt``, ``.pth`` or
    ``.pkl`` file; our ``model.safetensors`` or ``config.json`` with the other beside it; a file
    without a suffix that starts like a torch zip or a pickle. Our format is recognised by the
    ``format`` field of ``config.json`` (a transformers folder has these two names too); at most
    that small file and 2 bytes of a checkpoint are read.
    """
    path = Path(path)
    if path.is_dir():
        found = _candidates(path)
        return bool(found) and (set(found) != {0} or _is_ours(path))
    if not path.is_file():
        return False
    if path.name in (WEIGHTS_NAME, CONFIG_NAME):
        return (path.parent / WEIGHTS_NAME).is_file() and _is_ours(path.parent)
    if path.suffix:
        return path.suffix.lower() in (".pt", ".pth", ".pkl")
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _is_ours(folder: Path) -> bool:
    """Whether ``folder / config.json`` declares our StyleGAN2 format (False when unreadable)."""
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _sniff(path: Path) -> str:
    """``"ours"``, ``"rosinality"`` or ``"nvlabs"`` from the suffix, else from the first bytes."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or path.name == CONFIG_NAME:
        return "ours"
    if suffix in (".pt", ".pth"):
        return "rosinality"
    if suffix == ".pkl":
        return "nvlabs"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):
        return "rosinality"
    if head[:1] == b"\x80":
        return "rosinality" if head[1:2] == b"\x02" else "nvlabs"
    raise WeightFileError(explain(f"{path}: unknown checkpoint format", got=repr(head),
                                  expected=".safetensors, .pt or .pkl"))


def load_stylegan2(path: str | os.PathLike) -> StyleGAN2Generator:
    """Load a generator from any supported file, or from a folder (see :func:`find_stylegan2_file`)."""
    path = Path(path)
    if path.is_dir():
        path = find_stylegan2_file(path)
    if not path.exists():
        raise FileNotFoundError(explain(f"no such checkpoint: {path}"))
    loader = {"ours": load_olam_stylegan2, "rosinality": load_rosinality, "nvlabs": load_nvlabs_pickle}
    return loader[_sniff(path)](path)


def convert_stylegan2(src: str | os.PathLike, dst_dir: str | os.PathLike) -> Path:
    """Convert any supported checkpoint to our safetensors format in ``dst_dir``; return the folder."""
    return save_stylegan2(load_stylegan2(src), dst_dir)
