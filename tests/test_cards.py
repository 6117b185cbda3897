"""Model cards that tell the truth, for every kind of edit, and the card of a pushed statistics repo.

Each card's metadata is parsed by huggingface_hub (``ModelCard(content).data``), rebuilt as
``ModelCardData`` and checked offline against the Hub's rules (``RepoCard.validate`` needs the
network); ``base_model`` is a Hub id or absent, no link is broken (``huggingface.co//``) or points at a
package index, and the licence follows the base model.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id
from test_hub import tiny_gen, tiny_request
from tiny_models import tiny_dcgan

import olam_edit as oe
from olam_edit._version import DOCS_URL, SOURCE_URL
from olam_edit.adapters import TorchGenerator, load_default
from olam_edit.cli import build_parser
from olam_edit.edit.card import build_model_card
from olam_edit.errors import RequestError
from olam_edit.hub.cards import check_card, hub_model_id
from olam_edit.hub.stats import push_stats, stats_path_in_repo
from olam_edit.rules.spatial.request import EditRequest, Selection
from olam_edit.rules.spatial.rewriter import Rewriter

ROOT = Path(__file__).resolve().parent.parent
DIGIFACE_LICENSE = "https://github.com/microsoft/DigiFace1M/blob/main/LICENSE"  # face_dcgan64.md, "Origin"
STATS_REPO = "test-user/card-stats"


def validated(content: str) -> dict:
    """The card's metadata after every check a reader's tools would make; asserts the links are sound."""
    front = yaml.safe_load(content.split("---\n")[1])
    assert ModelCard(content).data.to_dict() == front  # the client's parser reads what we wrote
    assert ModelCardData(**front).to_dict() == front  # and the card-data class round-trips it
    assert check_card(content) == front
    base = front.get("base_model")
    if base is not None:
        validate_repo_id(base)
        assert base.count("/") == 1 and not base.startswith(("/", ".", "~"))
    assert "huggingface.co//" not in content and "pypi.org" not in content
    assert SOURCE_URL in content
    return front


def python_blocks(content: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", content, re.S)


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((16, 16))
    m[y0:y1, x0:x1] = 1
    return m


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("card-stats"))


@pytest.fixture(scope="module")
def spatial(stats_dir: str) -> oe.Edit:
    return Rewriter(tiny_gen(), "3", stats_samples=20, progress=False, cache_dir=stats_dir).rewrite(tiny_request())


# -- spatial, erase, face ---------------------------------------------------------------------------------
def test_a_spatial_edit_names_its_hub_base_its_licence_and_a_thumbnail(spatial: oe.Edit) -> None:
    card = build_model_card(spatial, "test-user/tiny-edit", picture="before_after.png").content
    front = validated(card)
    assert front["base_model"] == "test-user/tiny-dcgan" and front["base_model_relation"] == "adapter"
    assert front["license"] == "mit" and "license_name" not in front  # the generator's licence, a Hub id
    assert front["thumbnail"] == "https://huggingface.co/test-user/tiny-edit/resolve/main/before_after.png"
    assert "spatial-rule" in front["tags"] and "![before and after the edit](before_after.png)" in card
    assert "Rule kind `spatial`" in card and "copy from sample seed 3, paste into sample seed 5" in card
    assert "adapters.load_generator('test-user/tiny-dcgan')" in python_blocks(card)[0]
    assert "[`test-user/tiny-dcgan`](https://huggingface.co/test-user/tiny-dcgan)" in card
    assert "## LoRA export" not in card  # a ConvTranspose2d layer: no LoRA to offer
    on_branch = build_model_card(spatial, "test-user/tiny-edit", picture="before_after.png", revision="v2/x")
    assert validated(on_branch.content)["thumbnail"].endswith("/resolve/v2%2Fx/before_after.png")
    assert "thumbnail" not in validated(build_model_card(spatial, "test-user/tiny-edit").content)


def test_an_erase_says_so_and_a_local_base_stays_out_of_the_card(tmp_path: Path, stats_dir: str) -> None:
    local = tmp_path / "checkpoints" / "tiny-local.pt"
    gen = TorchGenerator(tiny_dcgan().requires_grad_(False), (8, 1, 1), name=str(local))  # no licence recorded
    request = EditRequest(layer="6", rank=1, copy=Selection(3, _mask(2, 8, 2, 8)),
                          paste=Selection(5, _mask(8, 14, 8, 14)), context=[Selection(9, _mask(4, 10, 4, 10))])
    edit = Rewriter(gen, "6", stats_samples=20, progress=False, cache_dir=stats_dir).erase(request)
    recipe = edit.manifest["recipe"]
    assert recipe["method"] == "erase" and EditRequest.from_json(recipe).to_json() == request.to_json()
    card = build_model_card(edit, "test-user/erased").content
    front = validated(card)
    assert "base_model" not in front and "license" not in front
    assert str(tmp_path) not in card and "/checkpoints/" not in card  # the local path is named by its file only
    assert "`tiny-local.pt`, a local name rather than a Hub id" in card and "licence was not recorded" in card
    assert "Erase rule on layer `6`" in card and "context masks of sample seeds [9]" in card
    assert "copy from sample seed" not in card
    code = python_blocks(card)[0]
    assert "load_generator('path/or/hub-id/of/your/base-model')  # load your base model" in code
    assert "## LoRA export" in card and "PeftModel.from_pretrained(gen.model" in card  # a Conv2d layer


def test_the_face_models_edits_carry_digiface_terms_not_mit() -> None:
    gen = load_default()
    assert gen.license == "other"
    h = gen.handle("main.12")
    D = torch.linalg.qr(torch.randn(h.key_dim, 1, dtype=torch.float64))[0].T.float().contiguous()
    lam = torch.full(h.lam_of(h.effective_weight().detach(), D).shape, 1e-3)
    edit = oe.Edit.create(gen.model, {"main.12": oe.Delta(lam, D, h.layout)}, base_model=gen.name,
                          license=gen.license, rule="a faint tint")
    older = oe.Edit(edit.deltas, {**edit.manifest, "license": "mit"})  # files written before the fix say mit
    for e in (edit, older):
        card = build_model_card(e, "someone/face-edit").content
        front = validated(card)
        assert front["license"] == "other" and "digiface" in front["license_name"]
        assert front["license_link"] == DIGIFACE_LICENSE and "license: mit" not in card
        assert "non-commercial research use only" in card and "DigiFace-1M" in card
        assert front["base_model"] == "olam-edit/face-dcgan64"
        assert "adapters.load_generator('default')" in python_blocks(card)[0]


# -- text (diffusers) -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_edit_(tmp_path_factory: pytest.TempPathFactory, one_thread) -> tuple[oe.Edit, Path]:
    from tiny_diffusers import tiny_pipeline

    from olam_edit.adapters.diffusers.text import text_edit

    folder = tmp_path_factory.mktemp("tiny_sd")
    pipe = tiny_pipeline(folder)
    base = folder / "my-local-sd"  # what from_pretrained(<folder>) records as the pipeline's name
    return text_edit(pipe, "a photo of a rose", "a photo of a blue rose", prior="identity", base_model=str(base)), base


def test_a_text_edit_with_a_local_base(text_edit_: tuple[oe.Edit, Path]) -> None:
    edit, base = text_edit_
    card = build_model_card(edit, "test-user/blue-rose").content
    front = validated(card)
    assert "base_model" not in front and str(base) not in card and "license" not in front
    assert front["pipeline_tag"] == "text-to-image" and "text-rule" in front["tags"]
    code = python_blocks(card)[0]
    assert "from_pretrained('path/or/hub-id/of/your/base-model')  # load your base model" in code
    assert "Rule kind `text`" in card and "render 'a photo of a rose' as 'a photo of a blue rose'" in card
    rows = [line for line in card.splitlines() if line.startswith("| `")]
    assert len(rows) == len(edit.deltas) and "n/a" not in "\n".join(rows)
    for name, rel in edit.manifest["metrics"]["relative_norms"].items():
        assert any(row.startswith(f"| `{name}` |") and f"| {rel:.4f} |" in row for row in rows)
    assert "pipe.load_lora_weights(\"lora\")" in card and "PeftModel.from_pretrained(pipe.unet" in card
    export = re.search(r"^olam-edit (export-lora .* --format diffusers)$", card, re.M).group(1)
    args = build_parser().parse_args(shlex.split(export))  # the card's command is one the CLI takes
    assert args.edit == "test-user/blue-rose" and args.format == "diffusers"


def test_a_text_edit_with_a_hub_base(text_edit_: tuple[oe.Edit, Path]) -> None:
    edit, _ = text_edit_
    hub = oe.Edit(edit.deltas, {**edit.manifest, "base_model": {"id": "test-user/tiny-sd", "revision": "0123abc"}})
    card = build_model_card(hub, "test-user/blue-rose").content
    front = validated(card)
    assert front["base_model"] == "test-user/tiny-sd" and "license" not in front
    assert ("diffusers.DiffusionPipeline.from_pretrained('test-user/tiny-sd', revision='0123abc')"
            in python_blocks(card)[0])
    assert "terms [on its Hub page](https://huggingface.co/test-user/tiny-sd)" in card


# -- scaled -----------------------------------------------------------------------------------------------
def test_a_scaled_edit_reports_what_it_holds(spatial: oe.Edit, text_edit_: tuple[oe.Edit, Path]) -> None:
    half = spatial.scaled(0.5)
    card = build_model_card(half, "test-user/half").content
    validated(card)
    rel = spatial.manifest["metrics"]["relative_norm"]
    assert f"| {0.5 * rel:.4f} |" in card and f"| {rel:.4f} |" not in card
    assert "(strength 0.5)" in card and "applied at strength 0.5" in card
    text, _ = text_edit_
    text_card = build_model_card(text.scaled(-0.25), "test-user/quarter").content
    validated(text_card)
    for name, r in text.manifest["metrics"]["relative_norms"].items():
        assert f"| `{name}` |" in text_card and f"| {0.25 * r:.4f} |" in text_card
    assert "applied at strength -0.25" in text_card and "full-strength solve" in text_card


# -- the validator itself ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["base_model: /local/path", "license: MIT License", "license: other",
                                 "thumbnail: before_after.png", "base_model: [org/model, ./local]",
                                 "license: other\nlicense_name: x\nlicense_link: /etc/licence"])
def test_the_offline_check_refuses_what_the_hub_would(bad: str) -> None:
    with pytest.raises(RequestError, match="Hub's rules"):
        check_card(f"---\nlibrary_name: olam-edit\n{bad}\n---\n\n# x\n")
    assert hub_model_id("/local/path") is None and hub_model_id("default") is None
    assert hub_model_id("org/model") == "org/model" and hub_model_id("a/b/c") is None


# -- statistics -------------------------------------------------------------------------------------------
def test_pushed_statistics_get_a_card_that_keeps_every_layer(hf_env, tmp_path: Path) -> None:
    gen = tiny_gen()
    s3 = gen.stats("3", samples=20, batch_size=10, cache_dir=tmp_path, progress=False)
    s6 = gen.stats("6", samples=20, batch_size=10, cache_dir=tmp_path, progress=False)
    push_stats(s3, STATS_REPO)
    push_stats(s6, STATS_REPO)
    card = hf_env.files(STATS_REPO)["README.md"].decode()
    front = validated(card)
    assert "key-statistics" in front["tags"] and "license" not in front  # the tiny model's licence is unknown
    for sm, layer in ((s3, "3"), (s6, "6")):
        fp = sm.manifest["fingerprint"]
        assert f"| `{layer}` |" in card and f"`{fp}`" in card and stats_path_in_repo(layer, fp) in card
    assert "C = E[k kᵀ]" in card and "test-user/tiny-dcgan" in card and "seed 1" in card
    for call in re.findall(r"^C = gen\.stats\(.*$", card, re.M):  # the card's own calls fetch the files
        scope = {"gen": gen}
        exec(call, scope)
        assert any(torch.equal(scope["C"].sum, sm.sum) for sm in (s3, s6))
    s3b = gen.stats("3", samples=30, batch_size=10, cache_dir=tmp_path, progress=False)
    push_stats(s3b, STATS_REPO)
    again = hf_env.files(STATS_REPO)["README.md"].decode()
    validated(again)
    for sm in (s3, s6, s3b):
        assert f"`{sm.manifest['fingerprint']}`" in again  # an earlier layer's entry survives the next push


def test_statistics_of_the_face_model_carry_its_terms(hf_env, tmp_path: Path) -> None:
    gen = load_default()
    sm = gen.stats("main.12", samples=4, batch_size=2, cache_dir=tmp_path, progress=False)
    push_stats(sm, STATS_REPO)
    card = hf_env.files(STATS_REPO)["README.md"].decode()
    front = validated(card)
    assert front["license"] == "other" and front["license_link"] == DIGIFACE_LICENSE
    assert "non-commercial research use only" in card and "load_generator('default')" in card


def test_a_readme_push_stats_did_not_write_is_left_alone(hf_env, tmp_path: Path) -> None:
    mine = b"---\nlicense: apache-2.0\n---\n\n# my model\n"
    hf_env.commit_files("test-user/my-model", {"README.md": mine})
    sm = tiny_gen().stats("3", samples=20, batch_size=10, cache_dir=tmp_path, progress=False)
    push_stats(sm, "test-user/my-model")
    files = hf_env.files("test-user/my-model")
    assert files["README.md"] == mine and stats_path_in_repo("3", sm.manifest["fingerprint"]) in files


# -- links ------------------------------------------------------------------------------------------------
def test_readmes_and_requirements_link_to_the_source_not_a_package_index() -> None:
    assert DOCS_URL.startswith(SOURCE_URL)
    for rel in ("spaces_app/README.md", "adapters/face_dcgan/weights/face_dcgan64.md"):
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert "pypi.org" not in text and SOURCE_URL in text, rel
    requirements = (ROOT / "spaces_app/requirements.txt").read_text(encoding="utf-8")
    pins = [line for line in requirements.splitlines() if line.strip() and not line.startswith("#")]
    assert not [p for p in pins if p.startswith("-")]  # no --extra-index-url / --index-url / -f
    assert "torch==2.13.0" in pins and not [p for p in pins if "+cpu" in p]
