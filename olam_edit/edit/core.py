"""Edit: the deltas of one rule, by layer, plus the manifest that says where they came from."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from olam_edit._version import __version__
from olam_edit.edit import apply, files, lora, merge, publish
from olam_edit.edit.files import SCHEMA_VERSION, content_fingerprint
from olam_edit.errors import RequestError, explain
from olam_edit.files.fingerprint import cached_fingerprint
from olam_edit.memory.delta import Delta
from olam_edit.memory.handles import get_handle, handle_for

MAX_STRENGTH = 2.0  # the strongest an edit is shown or curated at: the Space's slider top, an example's bound


def check_strength(strength: Any, what: str = "the strength") -> float:
    """``strength`` as a float in (0, MAX_STRENGTH] (an example's ``strength``, a stage's
    ``first_strength``), else one RequestError naming ``what``."""
    value = float(strength) if isinstance(strength, int | float) and not isinstance(strength, bool) else math.nan
    if not 0.0 < value <= MAX_STRENGTH:  # NaN fails too
        raise RequestError(explain(f"{what} must be a number in (0, {MAX_STRENGTH:g}]", got=str(strength)[:40],
                                   fix="Use 1 for the rewrite as solved."))
    return value


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
        """Build an edit for ``model``, fingerprinting the base weight of every edited layer (the weight
        before any edit applied to ``model``, so an edit solved on top of others applies to the same base;
        an unchanged weight is hashed once per session, see :func:`olam_edit.files.fingerprint.cached_fingerprint`).

        Extra keyword arguments (``solver``, ``recipe``, ``stats_fingerprint``, ``rule``, ``metrics``,
        ...) are stored in the manifest as they are (they must be JSON-serialisable).
        """
        layers, modules = {}, dict(model.named_modules())  # one walk of the model, not one per layer
        for name, delta in deltas.items():
            h = handle_for(name, modules[name]) if name and name in modules else get_handle(model, name)
            layers[name] = {**h.describe(), "fingerprint": cached_fingerprint(apply.base_tensor(model, h)),
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
        return content_fingerprint(self.deltas)

    def scaled(self, scale: float) -> Edit:
        """The same edit with every delta multiplied by ``scale``, its manifest saying so: the ``rule``
        gains "(strength s)" and ``metrics.relative_norm`` (‖ΔW‖/‖W‖) and each layer's
        ``metrics.relative_norms`` are multiplied by |s|, so a saved, published or carded copy describes
        what it holds. ``scale`` 1 keeps the manifest as it is."""
        manifest = dict(self.manifest)  # nested parts are replaced below, never mutated
        if scale != 1.0:
            metrics = manifest.get("metrics")
            if isinstance(metrics, dict):
                manifest["metrics"] = _scaled_metrics(metrics, abs(scale))
            if manifest.get("rule"):
                manifest["rule"] = f"{manifest['rule']} (strength {scale:g})"
        return Edit({n: d.scaled(scale) for n, d in self.deltas.items()}, manifest)

    @classmethod
    def merge(cls, edits: list[Edit], scales: list[float] | None = None) -> Edit:
        """One edit whose delta on each layer is exactly sum_i scales[i] * edits[i]'s (ranks add up).

        The parts must share the base model, component and the base weight of every shared layer
        (BaseMismatchError otherwise); ``scales`` defaults to ones and must have one finite number per
        edit. The manifest lists the parts' fingerprints and recipes (see :mod:`olam_edit.edit.merge`).
        """
        return cls(*merge.merge_parts(edits, scales, Edit))

    # -- model ----------------------------------------------------------------------------------
    def apply(self, model: Any, *, scale: float = 1.0, force: bool = False) -> Any:
        """Apply to ``model`` in place (see :func:`olam_edit.apply_edit`); returns the model."""
        apply.apply_edit(model, self, scale=scale, force=force)
        return model

    def revert(self, model: Any) -> Any:
        apply.revert_edit(model, self)
        return model

    # -- files ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``edit.safetensors`` and ``edit_config.json`` into ``directory`` (atomically)."""
        return files.save_edit(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> Edit:
        """Read and validate an edit folder written by :meth:`save`: the manifest schema, the content digest
        stored in ``edit.safetensors`` (a file without one, from an older version, loads with a warning),
        names, dtypes, shapes, finiteness and orthonormal directions."""
        return cls(*files.read_edit(directory))

    @classmethod
    def load_verified(cls, directory: str | Path) -> Edit:
        """:meth:`load` after checking ``checksums.json`` (when present) and the two manifests' agreement."""
        return cls(*publish.verified_parts(directory))

    # -- Hub ------------------------------------------------------------------------------------
    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | bool | None = None,
                    revision: str | None = None, create_pr: bool = False, commit_message: str | None = None,
                    endpoint: str | None = None, image: str | Path | bytes | None = None) -> str:
        """Publish this edit as ``repo_id`` in one commit (files, checksums, model card, optional
        before/after PNG ``image``); returns the commit URL. See :func:`olam_edit.edit.publish.push_edit`."""
        return publish.push_edit(self, repo_id, private=private, token=token, revision=revision, create_pr=create_pr,
                         commit_message=commit_message, endpoint=endpoint, image=image)

    @classmethod
    def from_pretrained(cls, repo_id_or_dir: str | Path, revision: str | None = None, *,
                        endpoint: str | None = None, token: str | bool | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False,
                        force_download: bool = False, model: Any = None, scale: float = 1.0,
                        force: bool = False) -> Edit:
        """An edit from a local folder or a Hub repo (standard cache, ``HF_HUB_OFFLINE`` honoured),
        verified against its checksums and manifest (see :func:`olam_edit.edit.publish.fetch_verified`). A local
        folder of that name takes precedence over a Hub repo.

        With ``model``, the edit is also applied to it (times ``scale``); a model whose edited layers
        differ from the base the edit was made for is refused with BaseMismatchError unless ``force``,
        and is left untouched.
        """
        edit = cls(*publish.fetch_verified(repo_id_or_dir, revision, endpoint=endpoint, token=token,
                                           cache_dir=cache_dir, local_files_only=local_files_only,
                                           force_download=force_download))
        if model is not None:
            edit.apply(model, scale=scale, force=force)
        return edit

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: rank {d.rank}" for n, d in self.deltas.items())
        return f"Edit({parts})"

    def to_lora(self, directory: str | Path, format: str = "peft", **kwargs: Any) -> Path:
        """Write this edit as a LoRA that stock PEFT / diffusers load (see :func:`olam_edit.edit.lora.to_lora`)."""
        return lora.to_lora(self, directory, format, **kwargs)


def _scaled_metrics(metrics: dict[str, Any], factor: float) -> dict[str, Any]:
    """``metrics`` with ‖ΔW‖/‖W‖ (``relative_norm`` and the per-layer ``relative_norms``) times ``factor``."""
    out = dict(metrics)
    if isinstance(out.get("relative_norm"), float):
        out["relative_norm"] = out["relative_norm"] * factor
    per_layer = out.get("relative_norms")
    if isinstance(per_layer, dict):
        out["relative_norms"] = {k: v * factor if isinstance(v, float) else v for k, v in per_layer.items()}
    return out
