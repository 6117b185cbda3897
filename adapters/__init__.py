"""Model-family adapters, installed as ``olam_edit.adapters`` (one self-contained file per family).

:func:`load_generator` turns a spec into a :class:`Generator`: ``"default"`` (the embedded face
DCGAN), a local path, or a Hub repo id.
"""

from __future__ import annotations

from pathlib import Path

from olam_edit.adapters.base import Generator
from olam_edit.adapters.torch_generator import TorchGenerator, load_default

__all__ = ["Generator", "TorchGenerator", "load_default", "load_generator"]


def load_generator(spec: str | Path = "default", *, revision: str | None = None, device: str = "cpu",
                   **kwargs) -> Generator:
    """A Generator for ``spec``: ``"default"``, a local file or folder, or a Hub repo id."""
    from olam_edit.errors import RequestError, explain

    if str(spec) == "default":
        return load_default(device=device)
    path = Path(spec)
    if path.exists():
        return _load_local(path, device=device, **kwargs)
    if "/" in str(spec) and not str(spec).startswith((".", "/")):
        return _load_hub(str(spec), revision=revision, device=device, **kwargs)
    raise RequestError(explain(f"cannot load a generator from {spec!r}", expected="'default', a path or a Hub id",
                               fix="Check the spelling; local paths must exist."))


def _load_local(path: Path, *, device: str = "cpu", **kwargs) -> Generator:
    from olam_edit.errors import RequestError, explain

    try:
        from olam_edit.adapters import stylegan2
    except ImportError:  # the StyleGAN2 adapter is optional until it lands
        stylegan2 = None
    if stylegan2 is not None and hasattr(stylegan2, "load_generator_from_path"):
        return stylegan2.load_generator_from_path(path, device=device, **kwargs)
    raise RequestError(explain(f"no adapter recognises {path}", expected="a StyleGAN2 checkpoint folder or file"))


def _load_hub(repo_id: str, *, revision: str | None, device: str = "cpu", **kwargs) -> Generator:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo_id, revision=revision)
    kwargs.setdefault("name", repo_id)
    kwargs.setdefault("revision", revision)
    return _load_local(Path(folder), device=device, **kwargs)
