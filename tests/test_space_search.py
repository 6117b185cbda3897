"""The Space's search: rank a pool of samples by the rule's response (the max over positions of the context
directions' score, as the original tool's ranking_for_key), page through the best with the heatmap, and
add one to the context with a click. Through gradio_client and the Search itself on the shared face
Space of test_space, and once in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_space import (  # noqa: F401 - the shared server fixture
    LAYER,
    RULE_A,
    STATS_SAMPLES,
    Space,
    gallery_pixels,
    ok,
    paint,
    refused,
    space,
)

from olam_edit import context_directions, model_lock
from olam_edit.errors import RequestError
from olam_edit.memory.directions import DEFAULT_RIDGE as RIDGE
from olam_edit.rules.spatial.request import Selection
from olam_edit.rules.spatial.rewriter import Rewriter
from olam_edit.spaces_app.checks import part_of
from olam_edit.spaces_app.search import RESULTS, Search
from olam_edit.spaces_app.session import Session

POOL = 40  # samples ranked in these tests


def add_context(client, tmp: Path, seed: int = 3) -> Selection:
    """Paint RULE_A's context region on sample ``seed`` and add it; the same selection built directly."""
    payload, layer = paint(client, seed, RULE_A["context"][1], tmp)
    ok(client.predict(payload, api_name="/add_context")[-1])
    return Selection(seed, layer)


def direct_ranking(space: Space, context: list[Selection], pool: int = POOL) -> tuple[list[int], np.ndarray]:  # noqa: F811
    """The pool ranked by the library directly: D from the context keys, each sample's max of d . k."""
    gen = space.generator
    with model_lock(gen.model):  # the shared model: take turns with the server
        rw = Rewriter(gen, LAYER, stats_samples=STATS_SAMPLES, cache_dir=space.studio.settings.cache_dir,
                      progress=False)
        keys, weights = rw.context_keys(context)  # [n, in], [n]
        D = context_directions(keys, weights, rw.C, 1, rw.ridge)  # [1, in]
        x, _ = gen.keys_and_values(LAYER, gen.latents(list(range(pool))))  # [pool, in, h, w]
    best = torch.einsum("i,bihw->bhw", D[0].double(), x.double()).flatten(1).amax(1).numpy()  # [pool]
    return [int(s) for s in np.argsort(-best, kind="stable")], best


def seeds_of(gallery: list[dict]) -> list[int]:
    """The seeds in the results' captions ("rank. #seed (response)")."""
    return [int(item["caption"].split("#")[1].split()[0]) for item in gallery]


def test_search_ranks_the_pool_by_the_rules_response(space: Space, tmp_path: Path) -> None:  # noqa: F811
    from gradio_client.exceptions import AppError

    c = space.client()
    refused(c.predict(layer=LAYER, pool=POOL, api_name="/search")[-1], "no rule to search by")
    context = add_context(c, tmp_path)
    shown, page, status = c.predict(layer=LAYER, pool=POOL, api_name="/search")
    order, best = direct_ranking(space, [context])
    assert f"Ranked {POOL} samples; the rule fires most on #{order[0]}" in ok(status)
    assert seeds_of(shown) == order[:RESULTS] and "Page 1 of 4" in page
    assert shown[0]["caption"].startswith(f"1. #{order[0]} ({best[order[0]]:.3g})")
    plain = gallery_pixels(c.predict(heat=False, api_name="/heatmap")[0])  # samples 0-15, untinted
    tinted = gallery_pixels(shown)[[i for i, s in enumerate(order[:RESULTS]) if s < 16]]
    untinted = plain[[s for s in order[:RESULTS] if s < 16]]
    assert (tinted[..., 0].astype(int) - untinted[..., 0]).max() > 40  # red where the rule fires

    shown, page, status = c.predict(api_name="/search_next")
    assert seeds_of(shown) == order[RESULTS : 2 * RESULTS] and "Page 2 of 4: samples ranked 13-24" in ok(status)
    for _ in range(2):
        last = c.predict(api_name="/search_next")[0]
    assert seeds_of(last) == order[3 * RESULTS :] and len(last) == POOL - 3 * RESULTS
    refused(c.predict(api_name="/search_next")[-1], "no such page", "got 5", "1 to 4")
    for pool, words in ((0, "less than minimum"), (1001, "greater than maximum")):
        with pytest.raises(AppError, match=words):
            c.predict(layer=LAYER, pool=pool, api_name="/search")


def test_rankings_are_cached_per_rule_and_extended(space: Space, tmp_path: Path) -> None:  # noqa: F811
    search, c = part_of(space.studio, Search), space.client()
    session = Session(context=[add_context(c, tmp_path, seed=5)])
    said: list[str] = []
    found = search.rank(session, LAYER, 1, RIDGE, 30, lambda f, d: said.append(d))
    assert said == ["ranked 30 of 30 samples"] and found.seeds == direct_ranking(space, session.context, 30)[0]
    said.clear()
    assert search.rank(session, LAYER, 1, RIDGE, 20, lambda f, d: said.append(d)).seeds == \
        direct_ranking(space, session.context, 20)[0]
    assert said == ["20 samples ranked (cached)"]
    said.clear()
    bigger = search.rank(session, LAYER, 1, RIDGE, 130, lambda f, d: said.append(d))  # only seeds 30-129 computed
    assert said == ["ranked 80 of 130 samples", "ranked 130 of 130 samples"]
    assert bigger.seeds == direct_ranking(space, session.context, 130)[0]
    said.clear()
    other = search.rank(session, LAYER, 2, RIDGE, 20, lambda f, d: said.append(d))  # rank 2: other directions
    assert said == ["ranked 20 of 20 samples"] and other.directions.shape[0] == 2
    for pool in (0, 1001, "many", 2.5, None):
        with pytest.raises(RequestError, match="search pool is out of range"):
            search.rank(session, LAYER, 1, RIDGE, pool)

    edited = Session()  # no context: the current edit's directions are the rule
    edited.push(space.reference_edit(_request(c, tmp_path)), "an edit")
    layer, D = search.directions(edited, "main.9", 1, RIDGE)
    assert layer == LAYER and torch.equal(D, edited.current.deltas[LAYER].directions.double())


def _request(client, tmp: Path):
    from test_space import state_rule

    return state_rule(client, RULE_A, tmp)


def test_a_result_joins_the_context_where_the_rule_fires(space: Space, tmp_path: Path) -> None:  # noqa: F811
    search, c = part_of(space.studio, Search), space.client()
    session = Session(context=[add_context(c, tmp_path)])
    found = search.rank(session, LAYER, 1, RIDGE, POOL)
    with pytest.raises(RequestError, match="no such search result"):
        search.add(session, found, RESULTS)
    added = search.add(session, found, 1)
    assert len(session.context) == 2 and session.context[-1] is added and added.seed == found.seeds[1]
    rw = space.studio.models.rewriter("default", LAYER)
    with model_lock(rw.generator.model):
        heat = rw.context_heatmap([added.seed], directions=found.directions)
    fires = heat.masks[0].numpy()  # [h, w] above the 99.9th percentile
    h, w = fires.shape
    region = added.mask[:: added.mask.shape[0] // h, :: added.mask.shape[1] // w] > 0.5  # back on the key grid
    assert fires.any() and np.array_equal(region, fires)


def test_search_and_add_a_result_in_chromium(space: Space, tmp_path: Path) -> None:  # noqa: F811
    from test_space_browser import TIMEOUT_MS, press, space_page
    from test_space_many_rules import pick_example

    from olam_edit.rules.spatial.examples import load_example

    shot, painted = tmp_path / "space-search.png", len(load_example("add_sunglasses")[0].context)
    with space_page(space) as page:
        pick_example(page, "add_sunglasses")  # its context regions are the rule to search by
        page.locator("#search-pool input").fill("60")
        press(page, "search", "Ranked 60 samples")
        results = page.locator("#search-results .thumbnail-item")
        results.nth(RESULTS - 1).wait_for(timeout=TIMEOUT_MS)
        count, picked = results.count(), results.nth(2).inner_text()
        results.nth(2).click()  # the third best
        press_wait = f"({painted + 1} context region(s))"
        page.wait_for_function(f"document.querySelector('#status').innerText.includes({press_wait!r})",
                               timeout=TIMEOUT_MS)
        status = page.locator("#status").inner_text()
        page.screenshot(path=str(shot), full_page=True)
    seed = picked.split("#")[1].split()[0]
    assert count == RESULTS and f"Added sample #{seed} to the context" in status
    assert shot.stat().st_size > 10_000


def test_the_readme_search_example_runs(space: Space, capsys) -> None:  # noqa: F811
    from readme_code import python_block_after

    code = python_block_after("<!-- space-search-example -->").replace("http://127.0.0.1:7860/", space.url)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "✓ Ranked 200 samples; the rule fires most on #" in out and "'1. #" in out
    assert "Page 2 of 17: samples ranked 13-24" in ns["status"]
