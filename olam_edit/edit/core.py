"""Edit: the deltas of one rule, by layer, plus the manifest that says where they came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from olam_edit._version import __version__
from olam_edit.files.fingerprint import tensor_fingerprint
from olam_edit.memory.delta import Delta
from olam_edit.memory.handles import get_handle

SCHEMA_VERSION = 1


@dataclass
class Edit:
    """A rule change: ``deltas`` maps a layer name to its :class:`Delta`; ``manifest`` records the base
    model (id, revision, per-layer weight fingerprints), the solver settings, the statistics
    fingerprint and the recipe, so anyone can check and re-derive the edit."""

    deltas: dict[str, Delta]
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, model: nn.Module, deltas: dict[str, Delta], *, base_model: str | None = None,
               revision: str | None = None, component: str | None = None, **info: Any) -> Edit:
        """Build an edit for ``model``, fingerprinting the current weight of every edited layer.

        Extra keyword arguments (``solver``, ``recipe``, ``stats_fingerprint``, ``rule``, ``metrics``,
        ...) are stored in the manifest as they are (they must be JSON-serialisable).
        """
        layers = {}
        for name, delta in deltas.items():
            h = get_handle(model, name)
            layers[name] = {**h.describe(), "fingerprint": tensor_fingerprint(h.parameter),
                            "rank": delta.rank, "scale": delta.scale}
        manifest = {"schema_version": SCHEMA_VERSION, "olam_edit_version": __version__,
                    "base_model": {"id": base_model, "revision": revision}, "component": component,
                    "layers": layers, **info}
        return cls(dict(deltas), manifest)

    @property
    def layers(self) -> list[str]:
        return list(self.deltas)

    @property
    def fingerprint(self) -> str:
        """sha256 over the layer names and factor bytes (identifies the edit's content)."""
        h = hashlib.sha256()
        for name in sorted(self.deltas):
            d = self.deltas[name]
            h.update(f"{name}|{d.layout}|{d.scale}|".encode())
            h.update(tensor_fingerprint(d.lam).encode() + tensor_fingerprint(d.directions).encode())
        return h.hexdigest()

    def scaled(self, scale: float) -> Edit:
        """The same edit with every delta multiplied by ``scale``."""
        return Edit({n: d.scaled(scale) for n, d in self.deltas.items()}, dict(self.manifest))

    # -- model ----------------------------------------------------------------------------------
    def apply(self, model: Any, *, scale: float = 1.0, force: bool = False) -> Any:
        """Apply to ``model`` in place (see :func:`olam_edit.apply_edit`); returns the model."""
        from olam_edit.edit.apply import apply_edit

        apply_edit(model, self, scale=scale, force=force)
        return model

    def revert(self, model: Any) -> Any:
        from olam_edit.edit.apply import revert_edit

        revert_edit(model, self)
        return model

    # -- files ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``edit.safetensors`` and ``edit_config.json`` into ``directory`` (atomically)."""
        from olam_edit.edit.files import save_edit

        return save_edit(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> Edit:
        """Read and validate an edit folder written by :meth:`save`."""
        from olam_edit.edit.files import load_edit

        return load_edit(directory)

    # -- Hub ------------------------------------------------------------------------------------
    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | bool | None = None,
                    revision: str | None = None, create_pr: bool = False, commit_message: str | None = None,
                    endpoint: str | None = None, image: str | Path | bytes | None = None) -> str:
        """Publish this edit as ``repo_id`` in one commit (files, checksums, model card, optional
        before/after PNG ``image``); returns the commit URL. See :func:`olam_edit.edit.publish.push_edit`."""
        from olam_edit.edit.publish import push_edit

        return push_edit(self, repo_id, private=private, token=token, revision=revision, create_pr=create_pr,
                         commit_message=commit_message, endpoint=endpoint, image=image)

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str | Path, revision: str | None = None, *,
                        endpoint: str | None = None, token: str | bool | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False,
                        force_download: bool = False, model: Any = None, scale: float = 1.0,
                        force: bool = False) -> Edit:
        """An edit from a local folder or a Hub repo (standard cache, ``HF_HUB_OFFLINE`` honoured),
        verified against its checksums and manifest (see :func:`olam_edit.edit.publish.fetch_edit`). A local
        folder of that name takes precedence over a Hub repo.

        With ``model``, the edit is also applied to it (times ``scale``); a model whose edited layers
        differ from the base the edit was made for is refused with BaseMismatchError unless ``force``,
        and is left untouched.
        """
        from olam_edit.edit.publish import fetch_edit

        edit = fetch_edit(repo_id_or_dir, revision, endpoint=endpoint, token=token, cache_dir=cache_dir,
                         local_files_only=local_files_only, force_download=force_download)
        if model is not None:
            edit.apply(model, scale=scale, force=force)
        return edit

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: rank {d.rank}" for n, d in self.deltas.items())
        return f"Edit({parts})"

    def to_lora(self, directory: str | Path, format: str = "peft", **kwargs: Any) -> Path:
        """Write this edit as a LoRA that stock PEFT / diffusers load (see :func:`olam_edit.edit.lora.to_lora`)."""
        from olam_edit.edit.lora import to_lora

        return to_lora(self, directory, format, **kwargs)
