"""A rule stated with several copy / paste pairs (``EditRequest.pairs``): its JSON form, its checks,
its solve (the joint solve of its examples sharing its context), its baselines, and the curation
tool that writes such rules from the judge's readings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_many_rules import LAYER, _gen, _mask, _rewriter

from olam_edit.errors import RequestError
from olam_edit.rules.spatial.request import MAX_PAIRS, EditRequest, Selection

CONTEXT = [Selection(11, _mask(0, 8, 0, 8)), Selection(12, _mask(2, 10, 2, 10))]


def _rule(pairs: int = 2, rank: int = 1) -> EditRequest:
    boxes = [(0, 6, 0, 6), (2, 8, 4, 10), (6, 12, 6, 12), (8, 14, 2, 8)]
    ex = [(Selection(20 + i, _mask(*boxes[i])), Selection(30 + i, _mask(*boxes[(i + 1) % 4]))) for i in range(4)]
    return EditRequest(layer=LAYER, rank=rank, copy=ex[0][0], paste=ex[0][1], context=CONTEXT, pairs=ex[1 : 1 + pairs])


def test_pairs_round_trip_and_a_one_example_rule_reads_as_before() -> None:
    rule = _rule()
    back = EditRequest.from_json(json.loads(json.dumps(rule.to_json())))
    assert [(c.seed, p.seed) for c, p in back.examples] == [(20, 30), (21, 31), (22, 32)]
    assert all(np.array_equal(a.mask, b.mask) for x, y in zip(rule.examples, back.examples, strict=True)
               for a, b in zip(x, y, strict=True))
    assert "pairs" not in _rule(pairs=0).to_json()
    assert set(rule.seeds) >= {20, 21, 22, 30, 31, 32, 11, 12}  # held-out evaluations avoid every example


@pytest.mark.parametrize("pairs", ["x", [{"copy": 1}], [{"copy": {"seed": 1, "mask": "x"}, "paste": 3}],
                                   [{}] * (MAX_PAIRS + 1)])
def test_bad_pairs_are_one_clear_error(pairs) -> None:
    obj = {**_rule(pairs=0).to_json(), "pairs": pairs}
    with pytest.raises(RequestError) as err:
        EditRequest.from_json(obj)
    assert "\n" not in str(err.value) and ("pairs" in str(err.value) or "mask" in str(err.value))


def test_a_rule_with_pairs_is_the_joint_solve_of_its_examples_on_its_context() -> None:
    gen = _gen()
    rule = _rule(pairs=2, rank=2)
    one = _rewriter(gen).rewrite(rule)
    split = [EditRequest(layer=LAYER, rank=2, copy=c, paste=p, context=CONTEXT) for c, p in rule.examples]
    joint = _rewriter(gen).rewrite(split)
    a, b = one.deltas[LAYER], joint.deltas[LAYER]
    assert a.rank == b.rank == 2  # the examples share one context, so one pair of directions
    Pa, Pb = a.directions.double().T @ a.directions.double(), b.directions.double().T @ b.directions.double()
    assert torch.allclose(Pa, Pb, atol=1e-10)  # the same plane (its basis may turn within it)
    dWa, dWb = a.dense(torch.float64), b.dense(torch.float64)
    assert torch.allclose(dWa, dWb, rtol=1e-8, atol=1e-10 * float(dWa.abs().max()))
    assert one.manifest["solver"]["examples"] == 3
    assert EditRequest.from_json(one.manifest["recipe"]).pairs  # the recipe keeps every example


def test_more_examples_fit_each_example_better_than_the_first_alone() -> None:
    gen = _gen()
    rw = _rewriter(gen)
    rule = _rule(pairs=3, rank=2)
    _, rules = rw.example_tensors(rule)
    assert len(rules) == 4 and all(r.context_keys is rules[0].context_keys for r in rules)

    def residual(edit) -> float:
        h = rw.handle
        W1 = h.effective_weight().detach().double() + edit.deltas[LAYER].dense(torch.float64)
        return sum(float(((h.linear_op(r.x_paste, W1) - r.v_star) * r.fit_mask[:, None]).square().sum())
                   for r in rules[1:])

    first_only = EditRequest(layer=LAYER, rank=2, copy=rule.copy, paste=rule.paste, context=CONTEXT)
    assert residual(rw.rewrite(rule)) < residual(rw.rewrite(first_only))


def test_too_many_examples_for_one_solve_is_refused() -> None:
    rule = _rule(pairs=3)
    many = [rule] * 17  # 68 examples
    with pytest.raises(RequestError, match="too many copy / paste examples"):
        _rewriter(_gen()).rewrite(many)


def test_the_baselines_fit_every_example(monkeypatch) -> None:
    from olam_edit.eval import evaluate as E

    gen = _gen()
    rw = _rewriter(gen)
    rule = _rule(pairs=2)
    _, rules = rw.example_tensors(rule)
    seen = {}
    real = E.goal_image
    monkeypatch.setattr(E, "goal_image", lambda g, r, s, t: seen.setdefault(s, real(g, r, s, t)))
    E.finetune_all(gen, rw, rule, rules, steps=2, progress=False)
    assert sorted(seen) == [30, 31, 32]
    model = E.finetune_layer(rw, rules, steps=2, progress=False)
    assert model is not gen.model
