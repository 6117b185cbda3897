"""The model card (``README.md``) of an edit published on the Hub.

:func:`build_model_card` turns an :class:`~olam_edit.edit.core.Edit` of any rule kind into a
``huggingface_hub.ModelCard`` whose metadata passes :func:`olam_edit.hub.cards.check_card`:

- ``base_model`` (with ``base_model_relation: adapter``) only when the recorded base is a Hub model id;
  a local path or a fixed name is left out, said so in the body and never used in the usage code;
- the licence follows the base model (:func:`olam_edit.hub.cards.base_licence`): the embedded face
  model's DigiFace-1M terms as ``license: other`` with ``license_name`` / ``license_link``, a recorded
  Hub licence id as it is, nothing when the licence is unknown (the body says so);
- ``thumbnail``: the published before/after picture's resolve URL, when there is one.

The body: the rule in words, the layers it changes, the picture, code that applies it, LoRA export
(diffusers / PEFT) when its layers allow it, how it was made (the rule kind's own summary), the
provenance and the licence.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

from olam_edit._version import DOCS_URL, SOURCE_URL
from olam_edit.edit.lora import EXPORTABLE_KINDS
from olam_edit.hub.cards import (
    FACE_MODEL,
    FACE_NOTE,
    base_licence,
    check_card,
    hub_model_id,
    licence_section,
    local_label,
    model_url,
    resolve_url,
)

if TYPE_CHECKING:  # only for annotations: nothing here imports Edit back at run time
    from olam_edit.edit.core import Edit


LIBRARY_NAME = "olam-edit"
BASE_TAGS = ("olam-edit", "model-editing", "rewriting-generative-models")
PAPER = "[Rewriting a Deep Generative Model](https://arxiv.org/abs/2007.15646) (Bau et al., ECCV 2020)"
FACE_CAVEAT = FACE_NOTE  # kept under its old name
INSTALL = f'pip install "olam-edit @ git+{SOURCE_URL}"'
YOUR_BASE = "path/or/hub-id/of/your/base-model"  # the placeholder usage code loads when no Hub id is recorded

__all__ = ["FACE_MODEL", "LIBRARY_NAME", "base_id", "build_model_card", "card_data", "hub_base", "recipe_summary",
           "rule_text"]


def base_id(edit: Edit) -> str | None:
    """The base model's name recorded in the manifest, as recorded (a Hub id, a path or a fixed name)."""
    base = edit.manifest.get("base_model") or {}
    name = base.get("id") if isinstance(base, dict) else None
    return name if isinstance(name, str) and name else None


def hub_base(edit: Edit) -> str | None:
    """The base model's Hub id, or None when the recorded name is not one (a local path, a fixed name)."""
    return hub_model_id(base_id(edit))


def _revision(edit: Edit) -> str | None:
    base = edit.manifest.get("base_model") or {}
    rev = base.get("revision") if isinstance(base, dict) else None
    return rev if isinstance(rev, str) and rev else None


def card_data(edit: Edit, repo_id: str | None = None, *, picture: str | None = None,
              revision: str | None = None) -> ModelCardData:
    """The YAML front matter of the card; ``thumbnail`` needs the ``repo_id`` the ``picture`` is pushed to."""
    base = hub_base(edit)
    extra: dict[str, Any] = {"base_model": base, "base_model_relation": "adapter"} if base else {}
    lic = base_licence(base_id(edit), edit.manifest.get("license"))
    if lic is not None:
        extra.update(lic.fields())
    if picture and repo_id:
        extra["thumbnail"] = resolve_url(repo_id, picture, revision)
    pipeline = "text-to-image" if edit.manifest.get("component") else "unconditional-image-generation"
    return ModelCardData(library_name=LIBRARY_NAME, tags=_tags(edit), pipeline_tag=pipeline, **extra)


def _tags(edit: Edit) -> list[str]:
    tags = list(BASE_TAGS)
    kind = _recipe_dict(edit).get("kind")
    if isinstance(kind, str) and f"{kind}-rule" not in tags:
        tags.append(f"{kind}-rule")
    if all(d.rank == 1 for d in edit.deltas.values()):
        tags.append("rank-one")
    if edit.manifest.get("component"):
        tags.append("diffusers")
    extra = edit.manifest.get("tags")
    if isinstance(extra, list):
        tags += [str(t) for t in extra if str(t) not in tags]
    return tags


def build_model_card(edit: Edit, repo_id: str, *, picture: str | None = None,
                     checksums: dict[str, str] | None = None, revision: str | None = None) -> ModelCard:
    """The card for ``edit`` published as ``repo_id`` (at branch ``revision``, default main); ``picture``
    is the before/after PNG's file name in the repo. Raises RequestError when the metadata would break
    the Hub's rules (:func:`olam_edit.hub.cards.check_card`)."""
    sections = [_intro(edit, repo_id), _layers_table(edit), _picture(picture), _usage(edit, repo_id),
                _lora(edit, repo_id), _recipe(edit), _provenance(edit, checksums or {}), _license(edit)]
    body = "\n\n".join(s for s in sections if s)
    content = f"---\n{card_data(edit, repo_id, picture=picture, revision=revision).to_yaml()}\n---\n\n{body}\n"
    check_card(content)
    return ModelCard(content)


def rule_text(edit: Edit) -> str:
    """The rule in words: the manifest's ``rule``, else the recipe's description or name."""
    recipe = _recipe_dict(edit)
    for text in (edit.manifest.get("rule"), edit.manifest.get("description"), recipe.get("description"),
                 recipe.get("name")):
        if isinstance(text, str) and text.strip():
            return " ".join(text.split())
    return "a rule chosen by its author (no description was recorded)"


def _base_phrase(edit: Edit) -> str:
    base, hub = base_id(edit), hub_base(edit)
    if base == FACE_MODEL:
        return f"of `{base}`, the face DCGAN that ships inside olam-edit,"
    if hub:
        return f"of [`{hub}`]({model_url(hub)})"
    if base:
        return (f"of its base model (recorded as `{local_label(base)}`, a local name rather than a Hub id, so "
                "this card names no `base_model`: load the model this edit was made for yourself)")
    return "of its base model (not recorded, so this card names no `base_model`)"


def _intro(edit: Edit, repo_id: str) -> str:
    return (f"# {repo_id.split('/')[-1]}\n\n"
            f"An [olam-edit]({SOURCE_URL}) edit: it rewrites one rule {_base_phrase(edit)} directly in its weights, "
            f"as in {PAPER}.\n\n**The rule:** {rule_text(edit)}.")


def _recipe_dict(edit: Edit) -> dict[str, Any]:
    recipe = edit.manifest.get("recipe")
    return recipe if isinstance(recipe, dict) else {}


def _layers_table(edit: Edit) -> str:
    """One row per layer; a ``note`` column when the rule wrote ``recipe["layer_notes"]``."""
    notes = _recipe_dict(edit).get("layer_notes")
    notes = notes if isinstance(notes, dict) and notes else None
    head = "| layer | kind | weight shape | rank | relative change ‖dW‖/‖W‖ |" + (" note |" if notes else "")
    rows = [head, "|---|---|---|---|---|" + ("---|" if notes else "")]
    for name, delta in edit.deltas.items():
        info = edit.manifest.get("layers", {}).get(name, {})
        change = _relative_change(edit, name)
        note = f" {_cell(notes.get(name, ''))} |" if notes else ""
        rows.append(f"| `{name}` | {info.get('kind', info.get('layout', '?'))} | {info.get('shape')} | "
                    f"{delta.rank} | {change} |{note}")
    return "## What it changes\n\n" + "\n".join(rows) + _strength_note(edit, bool(notes))


def _strength_note(edit: Edit, notes: bool) -> str:
    """A line under the table when the edit is a scaled copy (its deltas carry a strength other than 1)."""
    scales = {d.scale for d in edit.deltas.values()}
    if scales == {1.0}:
        return ""
    strength = f"strength {scales.pop():g}" if len(scales) == 1 else "per-layer strengths"
    line = f"\n\nThis edit is applied at {strength} (Λ scaled; the relative changes above are the scaled edit's)"
    return line + ("; the notes describe the full-strength solve." if notes else ".")


def _relative_change(edit: Edit, name: str) -> str:
    """||dW||/||W|| of one layer: ``metrics["relative_norms"][name]``, else the edit's single value."""
    metrics = edit.manifest.get("metrics") or {}
    per_layer = metrics.get("relative_norms")
    rel = per_layer.get(name) if isinstance(per_layer, dict) else None
    if rel is None and len(edit.deltas) == 1:
        rel = metrics.get("relative_norm")
    return f"{rel:.4f}" if isinstance(rel, int | float) and not isinstance(rel, bool) else "n/a"


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell (one line, no column separators)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _picture(picture: str | None) -> str:
    if not picture:
        return ""
    return (f"## Before / after\n\n![before and after the edit]({picture})\n\n"
            "Top row: the base model. Bottom row: the same samples with the edit applied.")


def _generator_spec(edit: Edit) -> tuple[str, str]:
    """What the usage code loads (``"default"``, the Hub id or a placeholder) and a comment for it."""
    if base_id(edit) == FACE_MODEL:
        return "default", ""
    hub = hub_base(edit)
    return (hub, "") if hub else (YOUR_BASE, "  # load your base model: the one this edit was made for")


def _load_line(edit: Edit) -> str:
    """The first lines of the usage code: import and load the base model (never a local path)."""
    spec, comment = _generator_spec(edit)
    if edit.manifest.get("component"):
        rev = f", revision={_revision(edit)!r}" if _revision(edit) and spec != YOUR_BASE else ""
        load = f"diffusers.DiffusionPipeline.from_pretrained({spec!r}{rev})"
        return f"import diffusers, olam_edit\npipe = {load}{comment}"
    return f"from olam_edit import Edit, adapters\ngen = adapters.load_generator({spec!r}){comment}"


def _usage(edit: Edit, repo_id: str) -> str:
    component = edit.manifest.get("component")
    apply = (f"olam_edit.Edit.from_pretrained({repo_id!r}).apply(pipe)" if component
             else f"Edit.from_pretrained({repo_id!r}).apply(gen.model)")
    text = [f"## Use it\n\n```bash\n{INSTALL}\n```\n\n(olam-edit installs from [its source repository]({SOURCE_URL}) "
            f"until a release is on PyPI; see [the docs]({DOCS_URL}).)",
            f"```python\n{_load_line(edit)}\n{apply}\n```"]
    if not component:
        spec = _generator_spec(edit)[0]
        text.append("or render a before/after grid from the command line:\n\n"
                    f"```bash\nolam-edit apply {repo_id} --model {spec} --grid before_after.png\n```")
    text.append("`Edit.from_pretrained` checks the downloaded files against `checksums.json`, and `apply` refuses a "
                "model whose edited layers differ from the base this edit was made for (`force=True` overrides). "
                "`edit.revert(model)` restores the original weights bit for bit.")
    return "\n\n".join(text)


def _lora(edit: Edit, repo_id: str) -> str:
    """How to export the edit as a LoRA and load it with stock diffusers / PEFT (when its layers allow it)."""
    layers = edit.manifest.get("layers", {})
    kinds = {layers.get(n, {}).get("kind", d.layout) for n, d in edit.deltas.items()}
    component = edit.manifest.get("component")
    if not all(EXPORTABLE_KINDS.get(k) is not None for k in kinds):
        return ("## LoRA export\n\nThis edit changes layers a LoRA cannot hold (kinds "
                f"{', '.join(f'`{k}`' for k in sorted(kinds))}): keep it in olam-edit's format.") if component else ""
    target = f"pipe.{component}" if component else "gen.model"
    peft = (f"```bash\nolam-edit export-lora {repo_id} lora-peft --format peft\n```\n\n"
            f"```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained({target}, \"lora-peft\")\n```")
    parts = ["## LoRA export\n\nThe edit is exactly a LoRA (alpha = rank, so the LoRA adds exactly ΔW = Λ D). "
             "`olam-edit export-lora` (or `edit.to_lora(folder, format)` in Python) writes it for the stock loaders."]
    if component == "unet":
        parts.append(f"diffusers:\n\n```bash\nolam-edit export-lora {repo_id} lora --format diffusers\n```\n\n"
                     "```python\npipe.load_lora_weights(\"lora\")  # the same weights as Edit.apply(pipe)\n```")
    parts.append(f"PEFT (`adapter_model.safetensors` + `adapter_config.json`):\n\n{peft}")
    return "\n\n".join(parts)


def _recipe(edit: Edit) -> str:
    recipe = edit.manifest.get("recipe")
    solver = edit.manifest.get("solver")
    lines = ["## How it was made"]
    if isinstance(recipe, dict):
        lines.append(recipe_summary(recipe))
    if solver:
        lines.append(f"Solver settings:\n\n```json\n{json.dumps(solver, indent=1, sort_keys=True)}\n```")
    return "\n\n".join(lines) if len(lines) > 1 else ""


def recipe_summary(recipe: dict[str, Any]) -> str:
    """The "How it was made" paragraph of any rule kind.

    A rule describes its own edits (dependency inversion: the card never imports the rules): its
    recipe carries ``kind`` and ``summary`` (see :mod:`olam_edit.rules.registry`), rendered as they
    are. Edit files written before rule kinds described themselves fall back to the request template
    (a copy / paste recipe) or to the recipe's fields.
    """
    summary = recipe.get("summary")
    if isinstance(summary, str) and summary.strip():
        kind = recipe.get("kind")
        return (f"Rule kind `{kind}`. " if isinstance(kind, str) and kind else "") + summary.strip()
    if "copy" in recipe and "paste" in recipe:
        return _legacy_spatial(recipe)
    fields = {k: v for k, v in recipe.items() if isinstance(v, str | int | float | bool) or v is None}
    what = f"a `{recipe['type']}` rule" if isinstance(recipe.get("type"), str) else "its rule"
    listed = f":\n\n```json\n{json.dumps(fields, indent=1, sort_keys=True)}\n```" if fields else "."
    return f"The recipe of {what} is stored in `edit_config.json` (`recipe`){listed}"


def _legacy_spatial(recipe: dict[str, Any]) -> str:
    """The spatial request's paragraph, for edit files without a ``summary`` (olam-edit 0.1.0)."""
    seeds = {k: (recipe.get(k) or {}).get("seed") for k in ("copy", "paste")}
    context = [s.get("seed") for s in recipe.get("context") or [] if isinstance(s, dict)]
    return (f"Layer `{recipe.get('layer')}`, rank {recipe.get('rank')}: copy from sample seed "
            f"{seeds['copy']}, paste into sample seed {seeds['paste']}, context seeds {context or 'none'}. "
            "The painted masks are stored as PNG in `edit_config.json` (`recipe`), so anyone can "
            "re-derive the edit.")


def _provenance(edit: Edit, checksums: dict[str, str]) -> str:
    m = edit.manifest
    base, hub = base_id(edit), hub_base(edit)
    named = f"`{hub}`" if hub else (f"`{local_label(base)}` (a local name, not a Hub id)" if base else "not recorded")
    lines = [f"- made with olam-edit {m.get('olam_edit_version', '?')} ([source]({SOURCE_URL}))",
             f"- base model: {named} at revision `{_revision(edit) or 'unspecified'}`"]
    for name, info in m.get("layers", {}).items():
        lines.append(f"- base weight of `{name}`: sha256 `{info.get('fingerprint')}`")
    if m.get("stats_fingerprint"):
        lines.append(f"- key statistics: fingerprint `{m['stats_fingerprint']}`")
    lines += [f"- `{name}`: sha256 `{digest}`" for name, digest in sorted(checksums.items())]
    return "## Provenance\n\n" + "\n".join(lines)


def _license(edit: Edit) -> str:
    return licence_section(base_licence(base_id(edit), edit.manifest.get("license")), hub_base(edit), "this edit")
