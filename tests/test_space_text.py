"""The Space's text tab on a tiny Stable Diffusion pipeline (and a tiny DiT), driven through gradio_client
and the handlers: a text rule end to end (rewrite, strength, undo, download, upload, publish), the text
rule list solved jointly with undo, the tab following the model, and one clear line for bad input.

Every image the Space shows is checked against the pipeline run directly by diffusers, one image at a
time, with the library's own text_edit / apply. One server serves this module's tests, the ones in
headless Chromium too (a text rule end to end, two rules and undo; screenshots under the tests' temp dirs).
"""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_space import Space, ok, refused
from tiny_diffusers import tiny_pipeline

import olam_edit as oe
from olam_edit.adapters.diffusers import text_edit
from olam_edit.eval.grid import to_uint8

SIZE, STEPS, SEEDS = 16, 2, (1000, 1001)  # the tiny UNet's 8x8 latent through the tiny VAE; the grid's seeds
ZOOM = 256 // SIZE
RULE = {"text_source": "a rose", "text_destination": "a blue rose", "text_preserve": "a dog\na house"}
GRID = ("a rose", "a dog", "a house")  # the default grid: the source, then the preserve prompts


def quick(**fields) -> dict:
    """The text tab's fields for a fast render (2 steps, 16 pixels, 2 seeds) and ``fields``."""
    return {"text_steps": STEPS, "text_size": SIZE, "text_seeds": len(SEEDS), **fields}


@pytest.fixture(scope="module")
def text_space(tmp_path_factory) -> Space:
    """The Space on a tiny Stable Diffusion pipeline (the text tab), for this module's tests."""
    pipe = tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))
    s = Space(tmp_path_factory.mktemp("text-space-cache"), generator=pipe, model="tiny-sd", max_upload_mb=1.0)
    s.pipe = pipe
    yield s
    s.close()


def reference(pipe, edit, prompts=GRID, scale: float = 1.0) -> np.ndarray:
    """The grid rendered by diffusers directly, one image at a time, with ``edit`` applied ``[B, H, W, 3]``."""
    with oe.model_lock(pipe.unet):  # the shared pipeline: take turns with the server
        applied = oe.edited(pipe, edit, scale) if edit is not None else contextlib.nullcontext()
        with applied, torch.no_grad():
            images = [pipe(p, generator=torch.Generator().manual_seed(s), num_inference_steps=STEPS, height=SIZE,
                           width=SIZE, output_type="pt").images for p in prompts for s in SEEDS]
    return to_uint8(torch.cat(images) * 2 - 1)


def reference_edit(pipe, sources, destinations, preserve=("a dog", "a house")):
    with oe.model_lock(pipe.unet):
        return text_edit(pipe, sources, destinations, preserve=list(preserve))


def pixels(gallery: list[dict]) -> np.ndarray:
    """The Space's images back at the pipeline's resolution ``[B, 16, 16, 3]``."""
    return np.stack([np.asarray(Image.open(item["image"]).convert("RGB"))[::ZOOM, ::ZOOM] for item in gallery])


def close(shown: np.ndarray, want: np.ndarray) -> None:
    """Equal up to one level in a few pixels (a batch of four and a batch of one may round differently)."""
    diff = np.abs(shown.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_a_text_rule_end_to_end(text_space: Space, tmp_path: Path) -> None:
    from gradio_client import handle_file

    c, pipe = text_space.client(), text_space.pipe
    before, after, history, status = c.predict(**quick(**RULE), api_name="/text_rewrite")
    assert "Rewritten: render 'a rose' as 'a blue rose' (14 layers" in ok(status) and "1. render" in history
    assert [item["caption"] for item in after] == [f"{p} · #{s}" for p in GRID for s in SEEDS]
    edit = reference_edit(pipe, ["a rose"], ["a blue rose"])
    close(pixels(before), reference(pipe, None))
    close(pixels(after), reference(pipe, edit))
    assert np.abs(pixels(after).astype(int) - pixels(before)).mean() > 2  # the rule shows

    close(pixels(c.predict(0.5, api_name="/strength")[0]), reference(pipe, edit, scale=0.5))
    assert np.array_equal(pixels(c.predict(0.0, api_name="/strength")[0]), pixels(before))
    ok(c.predict(1.0, api_name="/strength")[-1])

    shown, status = c.predict(api_name="/download")
    with zipfile.ZipFile(shown["value"]) as zf:
        assert {"edit/edit.safetensors", "edit/README.md", "edit/before_after.png"} <= set(zf.namelist())
        zf.extractall(tmp_path / "unzipped")
    downloaded = oe.Edit.load(tmp_path / "unzipped" / "edit")
    assert downloaded.manifest["component"] == "unet" and set(downloaded.deltas) == set(edit.deltas)
    name = next(iter(edit.deltas))
    torch.testing.assert_close(downloaded.deltas[name].dense(), edit.deltas[name].dense().float())

    undone, history, status = c.predict(api_name="/undo")
    assert "Undone: render 'a rose'" in ok(status) and "No edits" in history
    assert np.array_equal(pixels(undone), pixels(before))
    uploaded, history, status = c.predict(handle_file(shown["value"]), api_name="/upload")
    assert "Applied the uploaded edit: render 'a rose'" in ok(status) and "uploaded" in history
    close(pixels(uploaded), reference(pipe, downloaded))


def test_two_text_rules_solved_jointly_and_undo_goes_back(text_space: Space) -> None:
    c, pipe = text_space.client(), text_space.pipe
    first = c.predict(**quick(**RULE), api_name="/text_rewrite")[1]
    rules, source, dest, status = c.predict("edit", "a cat", "a big cat", api_name="/text_add_rule")
    assert "Rule 1 listed" in ok(status) and "render 'a cat' as 'a big cat'" in rules and source == dest == ""
    rules, *_, status = c.predict("edit", "a rose", "a red rose", api_name="/text_add_rule")
    assert "Rule 2 listed" in ok(status) and "2. render 'a rose' as 'a red rose'" in rules

    fields = quick(text_preserve=RULE["text_preserve"], text_compare="a cat\na rose")
    before, after, history, status = c.predict(**fields, api_name="/text_rewrite_all")
    assert "Rewritten all 2 rules jointly" in ok(status) and "2. 2 rules jointly" in history
    joint = reference_edit(pipe, ["a cat", "a rose"], ["a big cat", "a red rose"])
    close(pixels(after), reference(pipe, joint, ("a cat", "a rose")))

    undone, history, status = c.predict(api_name="/undo")  # back to the single rule, shown on the joint grid
    assert "Undone: 2 rules jointly" in ok(status) and "2." not in history and "1. render 'a rose'" in history
    single = reference_edit(pipe, ["a rose"], ["a blue rose"])
    close(pixels(undone), reference(pipe, single, ("a cat", "a rose")))
    assert not np.array_equal(pixels(undone), pixels(after)) and len(first) == len(GRID) * len(SEEDS)

    again = c.predict(**fields, api_name="/text_rewrite_all")[1]  # the list stays after an undo
    assert np.array_equal(pixels(again), pixels(after))
    rules, status = c.predict(api_name="/text_clear_rules")
    assert "cleared" in ok(status) and "No rules listed" in rules


def test_bad_text_input_is_one_clear_line(text_space: Space) -> None:
    from gradio_client.exceptions import AppError

    c = text_space.client()
    cases = [({"text_source": " ", "text_destination": "a rose"}, "the source prompt is empty"),
             ({"text_source": "a rose", "text_destination": ""}, "the destination prompt is empty"),
             ({"text_source": "a rose", "text_destination": "A Rose"}, "would change nothing"),
             ({"text_source": "a rose", "text_destination": "a blue rose", "text_size": 12}, "multiple of 8"),
             ({"text_source": "a rose", "text_destination": "a blue rose", "text_compare": "\n".join("abcdefg")},
              "too many compare prompts"),
             ({"text_source": "a red rose", "text_destination": "a blue rose"}, "no match in the destination"),
             ({"text_mode": "erase", "text_source": "a cat", "text_destination": "a dog"}, "preserve prompt")]
    for fields, words in cases:
        status = refused(c.predict(**quick(**fields), api_name="/text_rewrite")[-1], words)
        assert "\n" not in status, status
    for fields, words in (({"text_steps": 0}, "less than minimum"), ({"text_seeds": 9}, "greater than maximum"),
                          ({"text_prior_weight": -1}, "less than minimum")):  # the sliders' own bounds
        with pytest.raises(AppError, match=words):
            c.predict(**quick(**RULE, **fields), api_name="/text_rewrite")
    refused(c.predict(**quick(), api_name="/text_rewrite_all")[-1], "no text rules in the list")
    ok(c.predict("edit", "a cat", "a big cat", api_name="/text_add_rule")[-1])
    refused(c.predict("erase", "a dog", "", api_name="/text_add_rule")[-1], "another mode")
    refused(c.predict("edit", "a cat", "a big cat", api_name="/text_add_rule")[-1], "already listed")
    refused(c.predict(api_name="/download")[-1], "no edit to download")
    refused(c.predict(api_name="/undo")[-1], "nothing to undo")
    refused(c.predict(layer=None, pool=8, api_name="/search")[-1], "this model is a diffusers pipeline")


def test_erase_with_a_guide_and_an_upload_for_another_model(text_space: Space, tmp_path: Path) -> None:
    from gradio_client import handle_file

    c, pipe = text_space.client(), text_space.pipe
    fields = quick(text_mode="erase", text_source="a cat", text_destination="a dog", text_preserve="a house")
    before, after, history, status = c.predict(**fields, api_name="/text_rewrite")
    assert "erase 'a cat' (guide 'a dog')" in ok(status)
    with oe.model_lock(pipe.unet):
        from olam_edit.adapters.diffusers import text_erase

        erased = text_erase(pipe, "a cat", "a dog", preserve=["a house"])
    close(pixels(after), reference(pipe, erased, ("a cat", "a house")))

    other = tiny_pipeline(tmp_path / "other", seed=1)  # another base model: its weights differ
    foreign = text_edit(other, "a rose", "a blue rose", prior="identity")
    foreign.save(tmp_path / "foreign")
    status = c.predict(handle_file(str(tmp_path / "foreign" / "edit.safetensors")), api_name="/upload")[-1]
    refused(status, "made for another model")


def test_publish_a_text_edit_with_the_visitors_login(text_space: Space, hf_sandbox,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from hub_server import FakeHub

    with FakeHub({"hf_user_token": "test-user"}) as hub:
        monkeypatch.setattr(text_space.studio.settings, "hub_endpoint", hub.endpoint)
        refused(text_space.client().predict("blue-rose", True, api_name="/publish"), "login")
        user = text_space.client(oauth_token="hf_user_token")
        refused(user.predict("blue-rose", True, api_name="/publish"), "no edit to publish")
        ok(user.predict(**quick(**RULE), api_name="/text_rewrite")[-1])
        refused(user.predict("bad name!", True, api_name="/publish"), "not valid")
        assert "Published" in ok(user.predict("blue-rose", True, api_name="/publish"))
        files = hub.files("test-user/blue-rose")
    assert {"edit.safetensors", "edit_config.json", "README.md", "before_after.png"} <= set(files)


def test_the_grid_and_rule_checks_name_what_is_wrong() -> None:
    """What the sliders bound in the browser is checked again for API callers (one line each)."""
    from olam_edit.errors import RequestError
    from olam_edit.spaces_app.text_rules import TextRule, make_grid, make_rule

    rules = [TextRule("edit", "a rose", "a blue rose")]
    for args, words in (((None, rules, [], 2, 0, 16), "number of steps"), ((None, rules, [], 0, 2, 16), "seeds"),
                        ((None, rules, [], 2, 2, 4), "image size"), ((None, rules, [], 2, 2, "big"), "image size"),
                        (("", [], [], 2, 2, 16), "no prompt to compare on")):
        with pytest.raises(RequestError, match=words):
            make_grid(*args)
    with pytest.raises(RequestError, match="unknown text rule mode"):
        make_rule("rewrite", "a rose", "a blue rose")
    with pytest.raises(RequestError, match="too long"):
        make_rule("edit", "a rose " * 60, "a blue rose")
    grid = make_grid("", rules, ["a dog", "a rose"], 3, 2, 16)
    assert grid.prompts == ("a rose", "a dog") and grid.seeds == (1000, 1001, 1002)
    assert make_rule("erase", " a cat ", None) == TextRule("erase", "a cat", "")


def test_a_text_rule_on_a_tiny_dit(tmp_path: Path) -> None:
    """PixArt-Sigma (a cross-attention DiT without a VAE: its latents are shown) through the handlers."""
    from tiny_dit import tiny_pixart

    from olam_edit.spaces_app.panels.text import TextHandlers
    from olam_edit.spaces_app.pipelines import TEXT, render
    from olam_edit.spaces_app.session import Session
    from olam_edit.spaces_app.settings import Settings
    from olam_edit.spaces_app.studio import Studio
    from olam_edit.spaces_app.text_rules import TextSession

    pipe = tiny_pixart()
    studio = Studio(Settings(model="tiny-pixart", cache_dir=str(tmp_path)), pipe)
    h, session, text = TextHandlers(studio), Session(model="tiny-pixart"), TextSession()
    assert h.texts.tab(session) == TEXT and h.texts.default_size(session) == 64
    out = h.text_rewrite(session, text, "edit", "a rose", "a blue rose", "a dog", "", 2, 64, 1, 0.1, 1.0,
                         progress=lambda *a, **k: None)
    assert "Rewritten: render 'a rose' as 'a blue rose' (4 layers" in ok(out["status"])
    with oe.model_lock(pipe.transformer):
        edit = text_edit(pipe, "a rose", "a blue rose", preserve=["a dog"])
        base = pipe.transformer.state_dict()["transformer_blocks.0.attn2.to_k.weight"].clone()
    shown = np.stack([im for im, _ in out["after"]])[:, ::32, ::32]  # the 8x8 latent, shown at 256 px
    assert np.array_equal(shown, to_uint8(render(pipe, ("a rose", "a dog"), (1000,), 2, 64, edit)))
    assert not np.array_equal(shown, np.stack([im for im, _ in out["before"]])[:, ::32, ::32])
    assert torch.equal(pipe.transformer.state_dict()["transformer_blocks.0.attn2.to_k.weight"], base)
    with pytest.raises(oe.errors.UnsupportedModelError, match="support UNet pipelines"):
        h.text_rewrite(session, text, "erase", "a cat", "", "a dog", "", 2, 64, 1, 0.1, 1.0,
                       progress=lambda *a, **k: None)


def test_the_tab_follows_the_model_named_in_the_field(text_space: Space, tmp_path: Path, hf_env) -> None:
    """A pipeline on the Hub gets the text tab, the default generator the paint tab, and back."""
    from huggingface_hub import HfApi

    from olam_edit.spaces_app.panels.model import ModelHandlers
    from olam_edit.spaces_app.pipelines import PAINT, TEXT
    from olam_edit.spaces_app.session import Session

    text_space.pipe.save_pretrained(tmp_path / "tiny-sd", safe_serialization=True)
    api = HfApi(endpoint=hf_env.endpoint, token=hf_env.token)
    api.create_repo("test-user/tiny-sd")
    api.upload_folder(repo_id="test-user/tiny-sd", folder_path=tmp_path / "tiny-sd")
    h, session = ModelHandlers(text_space.studio), Session(model="tiny-sd")
    for spec, tab, gallery in (("default", PAINT, 16), ("tiny-sd", TEXT, 0), ("test-user/tiny-sd", TEXT, 0)):
        out = h.load_model(spec, session, progress=lambda *a, **k: None)
        assert f"Loaded {spec}" in ok(out["status"]) or "Loaded olam-edit/face-dcgan64" in out["status"]
        assert h.texts.tab(session) == tab and out["tabs"].selected == tab and len(out["gallery"]) == gallery
        assert out["text_tab"].visible is (tab == TEXT) and out["paint_tab"].visible is (tab == PAINT)
    from olam_edit.spaces_app.text_rules import TextRule
    from olam_edit.spaces_app.text_studio import solve

    edit = solve(h.texts.pipeline(session), [TextRule("edit", "a rose", "a blue rose")], [], 0.1)
    assert edit.manifest["base_model"]["id"] == "test-user/tiny-sd"  # the repo, never the download folder
    with pytest.raises(oe.errors.GeneratorLoadError, match="could not load the generator 'test-user/nothing'"):
        h.load_model("test-user/nothing", session, progress=lambda *a, **k: None)


def test_a_pipeline_folder_loads_from_safetensors_only(text_space: Space, tmp_path: Path) -> None:
    """What OLAM_EDIT_MODEL / --model name: a pipeline folder (its weights never unpickled) or a generator."""
    from olam_edit.spaces_app.pipelines import PAINT, TEXT, load_model, tab_of

    text_space.pipe.save_pretrained(tmp_path / "safe", safe_serialization=True)
    loaded = load_model(str(tmp_path / "safe"))
    assert tab_of(loaded) == TEXT and loaded.config._name_or_path == str(tmp_path / "safe")
    assert tab_of(load_model("default")) == PAINT
    from olam_edit.spaces_app.app import build_app
    from olam_edit.spaces_app.session import Session

    spec = str(tmp_path / "safe")  # as OLAM_EDIT_MODEL=<folder> starts the Space: the text tab's model
    demo = build_app(model=spec, cache_dir=str(tmp_path / "cache"))
    assert tab_of(demo.studio.generator(Session(model=spec))) == TEXT
    text_space.pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    unet = tmp_path / "pickled" / "unet"
    assert list(unet.glob("*.bin")) and not list(unet.glob("*.safetensors"))  # the UNet pickled
    with pytest.raises(oe.errors.GeneratorLoadError, match="could not load the pipeline"):
        load_model(str(tmp_path / "pickled"))


# ------------------------------------------------------------------------------------ in headless Chromium
def type_rule(page, source: str, destination: str, preserve: str | None = None) -> None:
    page.locator("#text-source textarea").fill(source)
    page.locator("#text-destination textarea").fill(destination)
    if preserve is not None:
        page.locator("#text-preserve textarea").fill(preserve)


def test_a_text_rule_in_chromium(text_space: Space, tmp_path: Path) -> None:
    from test_space_browser import image_sources, press, space_page

    shot = tmp_path / "space-text.png"
    with space_page(text_space, ready="#text-source textarea") as page:
        assert not page.locator("#gallery").is_visible()  # a pipeline: the paint tab is hidden
        type_rule(page, "a rose", "a blue rose", "a dog\na house")
        press(page, "text-rewrite", "Rewritten")
        before, after = image_sources(page, "before"), image_sources(page, "after")
        history = page.locator("#history").inner_text()
        page.screenshot(path=str(shot), full_page=True)
        press(page, "undo", "Undone")
        undone = image_sources(page, "after")
    assert len(before) == len(after) == 6 and after != before  # 3 prompts x 2 seeds
    assert "render 'a rose' as 'a blue rose'" in history
    assert undone == before  # the same files: the base model's images again
    assert shot.stat().st_size > 10_000


def test_two_text_rules_and_undo_in_chromium(text_space: Space, tmp_path: Path) -> None:
    from test_space_browser import image_sources, press, space_page

    shot = tmp_path / "space-text-rules.png"
    with space_page(text_space, ready="#text-source textarea") as page:
        type_rule(page, "a rose", "a blue rose", "a dog")
        press(page, "text-add-rule", "Rule 1 listed")
        type_rule(page, "a cat", "a big cat")
        press(page, "text-add-rule", "Rule 2 listed")
        press(page, "text-rewrite-all", "Rewritten all 2 rules jointly")
        rules, history = page.locator("#text-rules").inner_text(), page.locator("#history").inner_text()
        after = image_sources(page, "after")
        page.screenshot(path=str(shot), full_page=True)
        press(page, "undo", "Undone: 2 rules jointly")
        undone, before = image_sources(page, "after"), image_sources(page, "before")
    assert "render 'a rose' as 'a blue rose'" in rules and "render 'a cat' as 'a big cat'" in rules
    assert "2 rules jointly" in history and len(after) == 6 and after != before and undone == before


def test_the_readme_text_example_runs(text_space: Space, capsys) -> None:
    from readme_code import python_block_after

    code = python_block_after("<!-- space-text-example -->").replace("http://127.0.0.1:7860/", text_space.url)
    exec(compile(code, "README.md", "exec"), {})
    assert "✓ Rewritten: render 'a rose' as 'a blue rose' (14 layers" in capsys.readouterr().out
