"""The card (``README.md``) of a repo that holds key statistics published by :func:`~olam_edit.hub.stats.push_stats`.

push_stats creates a *model* repo (``create_repo``'s default type), so the card is a ``ModelCard``
with ``ModelCardData`` metadata. Every push regenerates it from the repo's own list of statistics
files, so the entries of other layers survive: the details of each file (layer, model, sampler,
fingerprint, dimension, count) are kept in the card's metadata under :data:`ENTRIES_KEY`; a file
that an older push left without an entry is listed from its name. A README that push_stats did not
write (a model's or an edit's own card, when statistics are pushed into that repo) is left alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from olam_edit._version import DOCS_URL, SOURCE_URL
from olam_edit.hub.cards import (
    FACE_MODEL,
    Licence,
    base_licence,
    check_card,
    hub_model_id,
    licence_section,
    local_label,
    model_url,
)

STATS_TAG = "olam-edit-statistics"  # marks a README as push_stats' own
ENTRIES_KEY = "olam_edit_stats"  # metadata key: one entry per statistics file
TAGS = ("olam-edit", "model-editing", "key-statistics", STATS_TAG)
WHAT_C = (
    "Each file holds the key statistic of one layer: the uncentred second moment **C = E[k kᵀ]** of the keys "
    "k that enter the layer (its input feature at every position), accumulated in float64 over samples of the "
    "model as the sum Σ k kᵀ and the number of keys n, so C = sum / n. olam-edit's rewrite, as in "
    "[Rewriting a Deep Generative Model](https://arxiv.org/abs/2007.15646), solves in closed form in the metric "
    "of C⁻¹; collecting C is the slow part of a first edit of a layer, and these files skip it.")


def stats_entry(meta: dict[str, Any], count: int, path: str) -> dict[str, Any]:
    """The card's entry for the statistics file at ``path`` in the repo, from its manifest ``meta``."""
    raw = meta.get("sampler")
    sampler: dict[str, Any] = raw if isinstance(raw, dict) else {}
    model = sampler.get("generator")
    entry = {"path": path, "layer": str(meta.get("layer")), "fingerprint": str(meta.get("fingerprint")),
             "model": model if isinstance(model, str) else None, "sampler": sampler, "dim": meta.get("dim"),
             "count": int(count), "olam_edit_version": meta.get("olam_edit_version")}
    json.dumps(entry)  # the manifest is JSON already; an entry must stay so
    return entry


def entries_of(text: str | None) -> list[dict[str, Any]] | None:
    """The entries of an existing README: [] for none, None when push_stats did not write it (leave it)."""
    if text is None:
        return []
    try:
        data = ModelCard(text, ignore_metadata_errors=True).data.to_dict()
    except ValueError:
        return None
    if STATS_TAG not in (data.get("tags") or []):
        return None
    found = data.get(ENTRIES_KEY)
    return [e for e in found if isinstance(e, dict) and isinstance(e.get("path"), str)] if isinstance(found, list) \
        else []


def merge_entries(old: list[dict[str, Any]], new: dict[str, Any], files: list[str],
                  folder: str) -> list[dict[str, Any]]:
    """The entries after a push of ``new``: one per statistics file among ``files`` (the repo's, before
    the push) plus ``new``'s; an entry of a file no longer there is dropped, a file without one is
    listed from its name ``<layer>-<fingerprint[:16]>.safetensors``."""
    by_path = {e["path"]: e for e in old}
    by_path[new["path"]] = new
    stats_files = {f for f in files if f.startswith(f"{folder}/") and f.endswith(".safetensors")} | {new["path"]}
    out = []
    for path in sorted(stats_files):
        if path in by_path:
            out.append(by_path[path])
            continue
        m = re.fullmatch(rf"{re.escape(folder)}/(.+)-([0-9a-f]{{16}})\.safetensors", path)
        if m:
            out.append({"path": path, "layer": m.group(1), "fingerprint": m.group(2)})
    return out


def build_stats_card(repo_id: str, entries: list[dict[str, Any]]) -> ModelCard:
    """The README of the statistics repo ``repo_id`` listing ``entries``; its metadata passes check_card."""
    models = sorted({str(e.get("model")) for e in entries if e.get("model")})
    licences = {base_licence(m, None) for m in models}
    lic = next(iter(licences)) if len(licences) == 1 and all(e.get("model") for e in entries) else None
    extra: dict[str, Any] = {**(lic.fields() if lic else {}), ENTRIES_KEY: entries}
    data = ModelCardData(library_name="olam-edit", tags=list(TAGS), **extra)
    hub = [m for m in models if hub_model_id(m)]
    body = [f"# {repo_id.split('/')[-1]}\n\nKey statistics for [olam-edit]({SOURCE_URL}) edits of "
            f"{_models_phrase(models)}.", "## What `C` is\n\n" + WHAT_C, _table(entries), _usage(repo_id, entries),
            _fingerprints(), _licence(lic, licences, hub)]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(body) + "\n"
    check_card(content)
    return ModelCard(content)


def _licence(lic: Licence | None, others: set[Licence | None], hub: list[str]) -> str:
    """The licence section: one licence for all files, else a word on why none is named and the known terms."""
    known = sorted(o.note for o in others if o is not None and o.note)
    if lic is not None or not known:
        return licence_section(lic, hub[0] if len(hub) == 1 else None, "each statistics file")
    return "\n\n".join(["## License\n\nThe files were collected on base models with different or unrecorded "
                         "licences, so this card names none: each file carries the terms of its own base model.",
                         *known])


def _model_name(model: object) -> str:
    if model == FACE_MODEL:
        return f"`{FACE_MODEL}` (the face DCGAN inside olam-edit)"
    hub = hub_model_id(model)
    if hub:
        return f"[`{hub}`]({model_url(hub)})"
    return f"`{local_label(model)}` (a local name, not a Hub id)" if model else "a model that was not recorded"


def _models_phrase(models: list[str]) -> str:
    return ", ".join(_model_name(m) for m in models) if models else "a model that was not recorded"


def _sampler_text(sampler: object) -> str:
    if not isinstance(sampler, dict) or not sampler:
        return "not recorded"
    shown = {k: v for k, v in sampler.items() if k != "generator"}
    return ", ".join(f"{k} {v}" for k, v in sorted(shown.items())) or "not recorded"


def _table(entries: list[dict[str, Any]]) -> str:
    rows = ["| layer | model | sampler | key dimension | keys n | fingerprint | file |", "|---" * 7 + "|"]
    for e in entries:
        rows.append(f"| `{e.get('layer')}` | {_model_name(e.get('model')).replace('|', '/')} | "
                    f"{_sampler_text(e.get('sampler'))} | {e.get('dim', '?')} | {e.get('count', '?')} | "
                    f"`{e.get('fingerprint')}` | [`{e['path']}`]({e['path']}) |")
    return "## The files\n\n" + "\n".join(rows)


def _spec(model: object) -> str:
    if model == FACE_MODEL:
        return "default"
    return hub_model_id(model) or "path/or/hub-id/of/the-model"


def _call(entry: dict[str, Any], repo_id: str) -> str:
    raw = entry.get("sampler")
    sampler: dict[str, Any] = raw if isinstance(raw, dict) else {}
    args = "".join(f", {k}={sampler[k]!r}" for k in ("samples", "batch_size", "seed") if k in sampler)
    return f"C = gen.stats({entry.get('layer')!r}{args}, stats_repo={repo_id!r})"


def _usage(repo_id: str, entries: list[dict[str, Any]]) -> str:
    by_model: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_model.setdefault(str(e.get("model")), []).append(e)
    blocks = []
    for group in by_model.values():
        lines = "\n".join(_call(e, repo_id) for e in group)
        blocks.append(f"```python\nfrom olam_edit import adapters\ngen = adapters.load_generator("
                      f"{_spec(group[0].get('model'))!r})\n{lines}  # downloaded and fingerprint-checked\n```")
    return (f"## Use them\n\n```bash\npip install \"olam-edit @ git+{SOURCE_URL}\"\n```\n\n" + "\n\n".join(blocks)
            + "\n\n`gen.stats(layer, ..., stats_repo=...)` downloads the file whose fingerprint matches the loaded "
            "model, layer and sampler, and refuses any other (`StaleStatisticsError`); a `Rewriter(gen, layer)` "
            "then starts from it. Collect and publish your own with `olam-edit stats` and `push_stats` "
            f"([docs]({DOCS_URL})).")


def _fingerprints() -> str:
    return ("## Fingerprints\n\nA file's fingerprint is a sha256 over the model's weights, the layer, the sampler "
            "(model name, seed, number of samples, batch size and the generator's own settings), the number of "
            "batches, the weights' dtype and the file schema. Its first 16 hex digits name the file. Statistics "
            "are only reused for exactly the model and sampler they were collected for.")
