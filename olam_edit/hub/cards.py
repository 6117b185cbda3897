"""What every card olam-edit writes shares: Hub ids, licences, links, and metadata checks that run offline.

A card names a ``base_model`` only when the recorded name is a Hub model id (:func:`hub_model_id`),
never a local path. Its licence follows the base model (:func:`base_licence`): the terms olam-edit
knows for a base (the embedded face model: DigiFace-1M's), else the licence id the generator
recorded, else none at all (the card then says so rather than guess). :func:`check_card` parses a
card the way ``huggingface_hub`` does and checks its metadata against the Hub's rules without the
network (``RepoCard.validate`` posts to the Hub, so it cannot run offline or in tests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from olam_edit.errors import RequestError, explain

HUB_URL = "https://huggingface.co"  # cards are written for the Hub's pages, whatever endpoint pushed them
FACE_MODEL = "olam-edit/face-dcgan64"  # the embedded face DCGAN's name in edits, requests and statistics
LICENSES_DOC = "https://huggingface.co/docs/hub/repositories-licenses"

# The licence identifiers the Hub accepts in a card's `license:` field (its table at LICENSES_DOC).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl
gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql
ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 gemma unknown other
""".split())


@dataclass(frozen=True)
class Licence:
    """A card's licence: ``id`` (a Hub licence id), and for ``"other"`` the ``name`` and ``link`` of the
    terms; ``note`` is Markdown the card's licence section adds (restrictions, where to read the terms)."""

    id: str
    name: str | None = None
    link: str | None = None
    note: str = ""

    def fields(self) -> dict[str, str]:
        """The card metadata: ``license`` and, when known, ``license_name`` and ``license_link``."""
        found = {"license": self.id, "license_name": self.name, "license_link": self.link}
        return {k: v for k, v in found.items() if v}


FACE_NOTE = (
    "The base model `olam-edit/face-dcgan64` is the face DCGAN that ships inside olam-edit, converted from "
    "`gan-face-generate` 1.1.1 (code and weights MIT, Copyright (c) 2023 chien liu). It was trained on "
    "**DigiFace-1M**, whose terms allow **non-commercial research use only**. That restriction carries over "
    "to everything derived from the model (edits, statistics, and the images made with them); their cards "
    "therefore say `license: other` with the dataset's licence, not `mit`.")
DIGIFACE_TERMS = Licence("other", "digiface-1m-non-commercial-research",
                         "https://github.com/microsoft/DigiFace1M/blob/main/LICENSE", FACE_NOTE)
KNOWN_BASES = {FACE_MODEL: DIGIFACE_TERMS}  # bases whose terms olam-edit knows better than a recorded id


def hub_model_id(name: object) -> str | None:
    """``name`` when it is a Hub model id ``namespace/name`` (huggingface_hub's repo-id rules), else None.

    Local paths (``/data/sd``, ``./model``, ``C:\\models``), ``~`` paths and bare names (``"default"``,
    ``"bench"``: they cannot be told apart from a local folder) are not Hub ids.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(name, str) or name.count("/") != 1 or name.startswith((".", "~")):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def model_url(repo_id: str) -> str:
    """The Hub page of a model repo."""
    return f"{HUB_URL}/{repo_id}"


def resolve_url(repo_id: str, filename: str, revision: str | None = None) -> str:
    """The Hub URL that serves ``filename`` of the model repo ``repo_id`` at ``revision`` (default main)."""
    return f"{HUB_URL}/{repo_id}/resolve/{quote(revision or 'main', safe='')}/{quote(filename)}"


def local_label(name: object) -> str:
    """How a card mentions a base that is not a Hub id: its last path component only (no local layout)."""
    text = str(name).rstrip("/\\")
    return re.split(r"[/\\]", text)[-1] or text


def base_licence(base: str | None, recorded: object) -> Licence | None:
    """The licence of an artefact derived from ``base``: the known terms of ``base``, else the recorded
    licence id (one the Hub does not list becomes ``other``, named after it), else None (unknown)."""
    if base in KNOWN_BASES:
        return KNOWN_BASES[base]
    if not isinstance(recorded, str) or not recorded.strip():
        return None
    rid = recorded.strip()
    if rid.lower() in HUB_LICENSES and rid.lower() != "other":
        return Licence(rid.lower())
    hub = hub_model_id(base)
    page = model_url(hub) if hub else None
    name = _slug(rid) if rid.lower() != "other" else "base-model-licence"
    return Licence("other", name, page, f"The base model's licence was recorded as `{rid}`, which is not one of "
                                        f"the [Hub's licence ids]({LICENSES_DOC}): read its terms before use.")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "base-model-licence"


def licence_section(lic: Licence | None, base: str | None, what: str) -> str:
    """The card's ``## License`` section for ``what`` (e.g. "this edit") derived from ``base``."""
    if lic is None:
        where = f" [on its Hub page]({model_url(base)})" if base and hub_model_id(base) else ""
        text = (f"The base model's licence was not recorded, so this card names none (no `license` field rather "
                f"than a guess): check the base model's terms{where} before using {what}; they apply to it.")
    else:
        subject = f"{what[0].upper()}{what[1:]} is derived from its base model and carries the base model's"
        if lic.id == "other":
            terms = f"[{lic.name}]({lic.link})" if lic.name and lic.link else f"`{lic.name or 'other'}`"
            text = f"{subject} terms: {terms}."
        else:
            text = f"{subject} licence: `{lic.id}`."
    return "## License\n\n" + text + (f"\n\n{lic.note}" if lic and lic.note else "")


def check_card(content: str, repo_type: str = "model") -> dict[str, Any]:
    """The metadata of the card ``content`` after checking it as the Hub would; RequestError otherwise.

    The YAML is parsed by huggingface_hub (``ModelCard`` / ``DatasetCard``), rebuilt as ``ModelCardData`` /
    ``DatasetCardData`` and must round-trip unchanged; ``license`` must be one of the Hub's ids (``other``
    with a ``license_name``), ``base_model`` a Hub id, ``thumbnail`` an http(s) URL, ``license_link`` a URL
    or a file of the repo, and ``tags`` a list of strings.
    """
    from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

    card_cls, data_cls = (DatasetCard, DatasetCardData) if repo_type == "dataset" else (ModelCard, ModelCardData)
    try:
        data = card_cls(content).data.to_dict()
        rebuilt = data_cls(**data).to_dict()
    except (ValueError, TypeError) as e:
        raise RequestError(explain("the card's metadata does not parse", got=str(e)[:200])) from e
    problems = [] if rebuilt == data else ["the metadata does not round-trip through the card data class"]
    problems += _metadata_problems(data)
    if problems:
        raise RequestError(explain("the card's metadata breaks the Hub's rules", got=problems,
                                   expected=f"valid {data_cls.__name__} fields"))
    return data


def _metadata_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    licenses = data.get("license")
    for lic in licenses if isinstance(licenses, list) else [licenses] if licenses is not None else []:
        if lic not in HUB_LICENSES:
            problems.append(f"license {lic!r} is not a Hub licence id")
    if data.get("license") == "other" and not data.get("license_name"):
        problems.append("license 'other' needs a license_name")
    bases = data.get("base_model")
    for base in bases if isinstance(bases, list) else [bases] if bases is not None else []:
        if hub_model_id(base) is None:
            problems.append(f"base_model {base!r} is not a Hub model id")
    url = re.compile(r"https?://[^/\s]+/\S*$")
    if "thumbnail" in data and not url.match(str(data["thumbnail"])):
        problems.append(f"thumbnail {data['thumbnail']!r} is not an http(s) URL")
    link = str(data.get("license_link", "LICENSE"))  # a URL, or a file of the repo such as LICENSE.md
    if not (url.match(link) or re.fullmatch(r"[\w.-][\w./-]*", link)):
        problems.append(f"license_link {link!r} is neither an http(s) URL nor a file of the repo")
    tags = data.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        problems.append("tags must be a list of strings")
    return problems
