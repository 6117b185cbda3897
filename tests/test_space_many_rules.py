"""The Space's rule list: "Add rule to list" collects rules, "Rewrite all" solves them as one edit (the
core's joint solve, ``Rewriter.rewrite([...])``), and Undo goes back to the edit before it. Driven through
gradio_client on the shared server of test_space, and once in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_space import (  # noqa: F401 - the shared server fixture
    LAYER,
    RULE_A,
    RULE_B,
    STATS_SAMPLES,
    Space,
    gallery_pixels,
    ok,
    refused,
    rewrite,
    space,
    state_rule,
)
from test_space_browser import TIMEOUT_MS, image_sources, press, space_page

from olam_edit import model_lock
from olam_edit.rules.spatial.request import EditRequest
from olam_edit.rules.spatial.rewriter import Rewriter


def joint_reference(space: Space, requests: list[EditRequest]):  # noqa: F811
    """The same rules solved jointly by the library directly."""
    gen = space.generator
    with model_lock(gen.model):  # the shared model: take turns with the server
        rw = Rewriter(gen, LAYER, stats_samples=STATS_SAMPLES, cache_dir=space.studio.settings.cache_dir,
                      progress=False)
        return rw.rewrite(requests)


def add_rule(client, layer: str = LAYER, rank: int = 1) -> tuple:
    return client.predict(layer=layer, rank=rank, api_name="/add_rule")


def test_rewrite_all_solves_the_listed_rules_jointly_and_undo_goes_back(space: Space, tmp_path: Path) -> None:  # noqa: F811
    c = space.client()
    req_a = state_rule(c, RULE_A, tmp_path)
    _, first, history, status = rewrite(c)  # one rule, the single-rule flow: edit 1
    ok(status)
    seeds = [int(item["caption"].lstrip("#")) for item in first]
    rules, tray, copy, paste, status = add_rule(c)  # the same selections, listed
    assert "Rule 1 listed" in ok(status) and "1. main.6, rank 1" in rules and "2." not in rules
    assert tray == [] and copy is None and paste is None  # cleared for the next rule
    req_b = state_rule(c, RULE_B, tmp_path)
    rules, *_, status = add_rule(c)
    assert "Rule 2 listed" in ok(status) and "2. main.6" in rules

    before, after, history, status = c.predict(api_name="/rewrite_all")
    assert "Rewritten all 2 rules jointly" in ok(status)
    assert "1. rewrite" in history and "2. 2 rules jointly" in history and "current" in history
    joint = joint_reference(space, [req_a, req_b])
    assert joint.deltas[LAYER].rank == 2
    assert np.array_equal(gallery_pixels(after), space.reference_images(joint, seeds))
    assert np.array_equal(gallery_pixels(before), space.reference_images(None, seeds))
    assert not np.array_equal(gallery_pixels(after), gallery_pixels(first))

    after_undo, history, status = c.predict(api_name="/undo")  # back to edit 1, the rule alone
    assert "Undone: 2 rules jointly" in ok(status) and "2." not in history and "1. rewrite" in history
    assert np.array_equal(gallery_pixels(after_undo), gallery_pixels(first))
    assert np.array_equal(gallery_pixels(after_undo), space.reference_images(space.reference_edit(req_a), seeds))
    again = c.predict(api_name="/rewrite_all")  # the list stays after an undo: the same joint edit again
    assert np.array_equal(gallery_pixels(again[1]), gallery_pixels(after))


def test_the_rule_list_refuses_what_it_cannot_solve(space: Space, tmp_path: Path) -> None:  # noqa: F811
    c = space.client()
    refused(c.predict(api_name="/rewrite_all")[-1], "no rules in the list")
    refused(add_rule(c)[-1], "no copy region")
    state_rule(c, RULE_A, tmp_path)
    ok(add_rule(c)[-1])
    state_rule(c, RULE_B, tmp_path)
    rules, *_, status = add_rule(c, layer="main.9")
    refused(status, "another layer", "main.9", "main.6", "one edit")
    rules, status = c.predict(api_name="/clear_rules")
    assert "cleared" in ok(status) and "No rules listed" in rules
    refused(c.predict(api_name="/rewrite_all")[-1], "no rules in the list")
    ok(add_rule(c)[-1])  # the selections of rule B were kept by the refused add
    before, after, history, status = c.predict(api_name="/rewrite_all")
    assert "Rewritten all 1 rule jointly" in ok(status) and "1. 1 rule jointly" in history


def test_add_rule_and_rewrite_all_in_chromium(space: Space, tmp_path: Path) -> None:  # noqa: F811
    with space_page(space) as page:
        start = image_sources(page, "after")
        for name in ("add_sunglasses", "close_mouth"):
            pick_example(page, name)
            press(page, "add-rule", "listed")
        press(page, "rewrite-all", "Rewritten all 2 rules jointly")
        after, rules = image_sources(page, "after"), page.locator("#rules").inner_text()
        history = page.locator("#history").inner_text()
        press(page, "undo", "Undone")
        undone = image_sources(page, "after")
    assert "Rules (2" in rules and rules.count("main.6, rank 1") == 2  # a Markdown list: its numbers are not text
    assert "2 rules jointly" in history
    assert len(after) == space.studio.settings.compare_count and after != start and undone != after


def pick_example(page, name: str) -> None:
    """Choose the example rule ``name`` in the dropdown and wait until its selections are filled."""
    page.locator("#examples input").click()
    page.locator(f"[data-testid=dropdown-option][aria-label={name}]").click()
    expect = f"Example {name!r}"
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({expect!r})",
                           timeout=TIMEOUT_MS)
