"""The model card (``README.md``) of an edit published on the Hub.

:func:`build_model_card` turns an :class:`~olam_edit.edit.core.Edit` into a ``huggingface_hub.ModelCard``:
YAML front matter (``base_model``, ``base_model_relation: adapter``, ``library_name: olam-edit``,
``tags``, ``pipeline_tag`` and the base model's ``license`` when the manifest records one) and a short
page: the rule in words, the layers it changes, a before/after picture when one is published, three
lines of code that apply it, the recipe, the provenance and the licence terms.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:  # only for annotations: nothing here imports Edit back at run time
    from olam_edit.edit.core import Edit


LIBRARY_NAME = "olam-edit"
FACE_MODEL = "olam-edit/face-dcgan64"
BASE_TAGS = ("olam-edit", "model-editing", "rewriting-generative-models")
PROJECT_URL = "https://pypi.org/project/olam-edit/"
PAPER = "[Rewriting a Deep Generative Model](https://arxiv.org/abs/2007.15646) (Bau et al., ECCV 2020)"
FACE_CAVEAT = (
    "The base model `olam-edit/face-dcgan64` (weights MIT, from `gan-face-generate` 1.1.1) was trained on "
    "**DigiFace-1M**, whose terms allow **non-commercial research use only**. That restriction carries over "
    "to this edit and to the images made with it."
)


def base_id(edit: Edit) -> str | None:
    """The base model's id recorded in the manifest (None when unknown)."""
    base = edit.manifest.get("base_model") or {}
    return base.get("id") if isinstance(base, dict) else None


def card_data(edit: Edit) -> ModelCardData:
    """The YAML front matter of the card."""
    base = base_id(edit)
    extra: dict[str, Any] = {"base_model": base, "base_model_relation": "adapter"} if base else {}
    license_id = edit.manifest.get("license")
    if license_id:
        extra["license"] = str(license_id)
    pipeline = "text-to-image" if edit.manifest.get("component") else "unconditional-image-generation"
    return ModelCardData(library_name=LIBRARY_NAME, tags=_tags(edit), pipeline_tag=pipeline, **extra)


def _tags(edit: Edit) -> list[str]:
    tags = list(BASE_TAGS)
    if all(d.rank == 1 for d in edit.deltas.values()):
        tags.append("rank-one")
    extra = edit.manifest.get("tags")
    if isinstance(extra, list):
        tags += [str(t) for t in extra if str(t) not in tags]
    return tags


def build_model_card(edit: Edit, repo_id: str, *, picture: str | None = None,
                     checksums: dict[str, str] | None = None) -> ModelCard:
    """The card for ``edit`` published as ``repo_id``; ``picture`` is the before/after PNG's file name."""
    sections = [_intro(edit, repo_id), _layers_table(edit), _picture(picture), _usage(edit, repo_id),
                _recipe(edit), _provenance(edit, checksums or {}), _license(edit)]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{card_data(edit).to_yaml()}\n---\n\n{body}\n")


def rule_text(edit: Edit) -> str:
    """The rule in words: the manifest's ``rule``, else the recipe's description or name."""
    recipe = edit.manifest.get("recipe") or {}
    for text in (edit.manifest.get("rule"), edit.manifest.get("description"),
                 recipe.get("description") if isinstance(recipe, dict) else None,
                 recipe.get("name") if isinstance(recipe, dict) else None):
        if isinstance(text, str) and text.strip():
            return " ".join(text.split())
    return "a rule chosen by its author (no description was recorded)"


def _intro(edit: Edit, repo_id: str) -> str:
    base = base_id(edit)
    if base == FACE_MODEL:
        on = f"of `{base}`, the face DCGAN that ships inside olam-edit,"
    else:
        on = f"of [`{base}`](https://huggingface.co/{base})" if base else "of its base model"
    return (f"# {repo_id.split('/')[-1]}\n\n"
            f"An [olam-edit]({PROJECT_URL}) edit: it rewrites one rule {on} directly in its weights, as in "
            f"{PAPER}.\n\n**The rule:** {rule_text(edit)}.")


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
    return "## What it changes\n\n" + "\n".join(rows)


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


def _generator_spec(edit: Edit) -> str:
    base = base_id(edit)
    return "default" if base in (None, FACE_MODEL) else base


def _usage(edit: Edit, repo_id: str) -> str:
    if edit.manifest.get("component"):
        code = ("import diffusers, olam_edit\n"
                f"pipe = diffusers.DiffusionPipeline.from_pretrained({base_id(edit)!r})\n"
                f"olam_edit.Edit.from_pretrained({repo_id!r}).apply(pipe)")
    else:
        code = ("from olam_edit import Edit, adapters\n"
                f"gen = adapters.load_generator({_generator_spec(edit)!r})\n"
                f"Edit.from_pretrained({repo_id!r}).apply(gen.model)")
    cli = f"olam-edit apply {repo_id} --model {_generator_spec(edit)} --grid before_after.png"
    return (f"## Use it\n\n```bash\npip install olam-edit\n```\n\n```python\n{code}\n```\n\n"
            f"or render a before/after grid from the command line:\n\n```bash\n{cli}\n```\n\n"
            "`Edit.from_pretrained` checks the downloaded files against `checksums.json`, and `apply` refuses "
            "a model whose edited layers differ from the base this edit was made for (`force=True` overrides). "
            "`edit.revert(model)` restores the original weights bit for bit.")


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
    base = m.get("base_model") or {}
    lines = [f"- made with olam-edit {m.get('olam_edit_version', '?')}",
             f"- base model: `{base.get('id')}` at revision `{base.get('revision') or 'unspecified'}`"]
    for name, info in m.get("layers", {}).items():
        lines.append(f"- base weight of `{name}`: sha256 `{info.get('fingerprint')}`")
    if m.get("stats_fingerprint"):
        lines.append(f"- key statistics: fingerprint `{m['stats_fingerprint']}`")
    lines += [f"- `{name}`: sha256 `{digest}`" for name, digest in sorted(checksums.items())]
    return "## Provenance\n\n" + "\n".join(lines)


def _license(edit: Edit) -> str:
    license_id = edit.manifest.get("license")
    text = (f"The edit is a derivative of its base model and carries the base model's licence: `{license_id}`."
            if license_id else "The base model's licence was not recorded: check it before using this edit.")
    if base_id(edit) == FACE_MODEL:
        text += "\n\n" + FACE_CAVEAT
    return "## License\n\n" + text
