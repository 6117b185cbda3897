"""CLI commands that measure rewrites: ``evaluate`` (against the paper's baselines) and ``sweep``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from olam_edit.cli.common import command, parse_seeds
from olam_edit.errors import OlamEditError, RequestError, explain
from olam_edit.memory import distributed


def _parse_region(text: str | None) -> str | tuple[int, ...] | None:
    if text in (None, "heatmap"):
        return None
    if text == "example":
        return "example"
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"bad region {text!r}; use y0,y1,x0,x1 (image pixels), 'example' or 'heatmap'")
    return box


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="generator: 'default', a path or a Hub id")
    p.add_argument("--seeds", type=parse_seeds, default=None, help="held-out seeds (default 10000-10199)")
    p.add_argument("--region", type=_parse_region, default=None,
                   help="y0,y1,x0,x1 box in image pixels, 'example' (the example's own box) or 'heatmap' (default)")
    p.add_argument("--out", default="eval", help="folder for report.json and report.png (default ./eval)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the scores")
    p.add_argument("--json-out", default=None, metavar="PATH",
                   help="also write the scores with their sampling errors, every seed's changes and this command "
                        "line to PATH (the README's figures are such files)")


def _parse_steps(text: str) -> list[int]:
    try:
        steps = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        steps = [-1]
    if any(n < 1 for n in steps):
        raise argparse.ArgumentTypeError(f"bad step list {text!r}; use positive whole numbers, e.g. 100 or 100,500")
    return steps


def _parse_strengths(text: str) -> list[float]:
    from olam_edit.edit.core import MAX_STRENGTH, check_strength

    try:
        return [check_strength(float(v)) for v in text.split(",") if v.strip()] or [check_strength(None)]
    except (ValueError, RequestError):
        raise argparse.ArgumentTypeError(f"bad strength list {text!r}; use numbers in (0, {MAX_STRENGTH:g}], "
                                         "e.g. 0.8,1.2") from None


def _load_spec(spec: str) -> tuple[Any, dict[str, Any]]:
    """A request (example name or JSON file) or an edit folder, and the example's settings if any."""
    from olam_edit.edit.core import Edit
    from olam_edit.rules.spatial.examples import list_examples, load_example
    from olam_edit.rules.spatial.request import EditRequest

    if spec in list_examples():
        return load_example(spec)
    path = Path(spec)
    if path.is_dir():
        return Edit.load(path), {}
    if path.is_file():
        return EditRequest.load(path), {}
    raise RequestError(explain(f"cannot find {spec!r}", expected=f"an example name {list_examples()}, a request "
                               "JSON file or an edit folder"))


def _region_mask(region: Any, settings: dict[str, Any], size: tuple[int, int]) -> torch.Tensor | None:
    if region is None:
        return None
    box = settings.get("region") if region == "example" else region
    if box is None:
        raise RequestError(explain("--region example needs an example with a region", fix="Pass y0,y1,x0,x1."))
    mask = torch.zeros(size, dtype=torch.bool)
    mask[box[0] : box[1], box[2] : box[3]] = True
    return mask


def _rewriter(gen: Any, layer: str, settings: dict[str, Any]) -> Any:
    """A rewriter of ``layer`` with the example's smoothness and ridge (as ``olam-edit example`` builds it)."""
    from olam_edit.rules.spatial.stages import example_rewriter

    return example_rewriter(gen, settings)(layer)


def _measure(gen: Any, obj: Any, settings: dict[str, Any], args: argparse.Namespace) -> Any:
    """The evaluation report of ``obj`` (a request or an edit) with the example's ``settings``."""
    from olam_edit.eval.evaluate import evaluate

    layer = obj.layer if hasattr(obj, "layer") else obj.layers[0]
    size = tuple(gen.images([0]).shape[-2:])
    rewriter = _rewriter(gen, layer, settings)
    report = evaluate(gen, obj, seeds=args.seeds, region=_region_mask(args.region, settings, size),
                      baselines=not args.no_baselines, rewriter=rewriter,
                      quantile=args.quantile, steps={"finetune_layer": args.steps, "finetune_all": args.steps},
                      checkpoints=args.checkpoints, strength=settings.get("strength", 1.0),
                      solved=_staged(gen, obj, settings, rewriter))
    if settings.get("then") is not None:
        report.settings["then"] = settings["then"]  # the figure says how the measured edit was made
    return report


def _staged(gen: Any, obj: Any, settings: dict[str, Any], rewriter: Any) -> Any:
    """A two-stage example's edit (both layers, at its strength), else None (evaluate solves it)."""
    from olam_edit.rules.spatial.request import EditRequest
    from olam_edit.rules.spatial.stages import solve_example

    if not isinstance(obj, EditRequest) or settings.get("then") is None:
        return None
    return solve_example(gen, obj, settings, first=rewriter)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="an example name, a request JSON or an edit folder (or --interference)")
    _add_common(p)
    p.add_argument("--interference", nargs=2, metavar=("A", "B"), default=None,
                   help="instead of one edit, measure how two curated examples of one layer interfere: each alone, "
                        "jointly, and one after the other without and with keep= (both orders), in each example's "
                        "own box (about 30 s)")
    p.add_argument("--picture", default=None, metavar="PNG",
                   help="with --interference: also write its picture (base and every case on 6 seeds) to PNG; "
                        "with --judge: the judge's picture (16 faces before, rewritten and hand-painted)")
    p.add_argument("--quantile", type=float, default=0.999, help="heatmap threshold quantile (paper: 0.999)")
    p.add_argument("--steps", type=int, default=2001,
                   help="Adam steps of each baseline (default 2001, the reference's). finetune_all costs about "
                        "40 ms a step on two idle CPU cores (the default run: ~2.5 min) and up to 750 ms on busy "
                        "ones (there OMP_NUM_THREADS=1 keeps it near 3.5 min); the other baseline a tenth of that")
    p.add_argument("--checkpoints", type=_parse_steps, default=[100], metavar="N[,N...]",
                   help="also score each baseline after these many steps (default 100; shows how far it has "
                        "converged)")
    p.add_argument("--no-baselines", action="store_true", help="measure the rewrite only")
    p.add_argument("--judge", action="store_true",
                   help="also judge the faces as a person would (needs pip install 'olam-edit[judge]'): the share "
                        "where the rule visibly took effect, identity (descriptor distance, rank-1 "
                        "re-identification), landmark drift and detection, for every method and a hand-painted "
                        "reference; writes judge.json and judge.png (16 faces), and --json-out becomes the judge's "
                        "figure")
    p.add_argument("--strengths", type=_parse_strengths, default=[], metavar="S[,S...]",
                   help="with --judge: also judge the rewrite at these strengths (rows 'rewrite @S'; 1 = as solved), "
                        "to see what a stronger or weaker edit gains in effect and costs in identity")
    p.add_argument("--effect", default=None,
                   help="with --judge: the rule's visible-effect test (default: the example's own; one of "
                        "glasses, moustache, mouth_close, mouth_open)")


@command("evaluate", "measure an edit on held-out seeds against the paper's fine-tuning baselines")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from olam_edit.adapters import load_generator
    from olam_edit.eval.pictures import render_strips, save_picture

    if args.interference or (args.picture and not args.judge):
        return _cmd_interference(args)
    if args.spec is None:
        raise RequestError(explain("evaluate needs what to measure", fix="Pass an example name, a request JSON or "
                                   "an edit folder, or --interference A B."))
    obj, settings = _load_spec(args.spec)
    gen = load_generator(args.model)
    report = _measure(gen, obj, settings, args)
    if not distributed.is_main_process():
        return 0  # under torchrun the other ranks only helped collect the statistics
    out = Path(args.out)
    from olam_edit.files.atomic import atomic_write_bytes

    atomic_write_bytes(out / "report.json", (json.dumps(report.to_json(), indent=1) + "\n").encode())
    if args.judge:
        _judge(gen, report, settings, args, out)
    elif args.json_out:
        from olam_edit.eval.figures import invoked_command

        figure = report.to_json(per_seed=True)
        figure["_meta"]["command"] = invoked_command("evaluate")
        atomic_write_bytes(Path(args.json_out), (json.dumps(figure, indent=1) + "\n").encode())
    save_picture(report, render_strips(gen, report.edit, report.models, report.seeds[:8]), out / "report.png")
    print(report.table())
    print(f"region covers {100 * report.region_fraction:.2f}% of pixels; wrote {out / 'report.json'}, "
          f"{out / 'report.png'}")
    if args.json:
        print(json.dumps({k: {f: getattr(s, f) for f in ("in_region", "collateral", "generality")}
                          for k, s in report.methods.items()}))
    return 0


cmd_evaluate.configure = _add_evaluate


def _judge(gen: Any, report: Any, settings: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    """``evaluate --judge``: judge every method's faces, print the table, write judge.json / .png and the figure."""
    from olam_edit.eval.evaluate import render
    from olam_edit.eval.judge.picture import save_judge_picture, shown_faces
    from olam_edit.eval.judge.report import PAINTED, judge
    from olam_edit.files.atomic import atomic_write_bytes

    effect = args.effect or settings.get("effect")
    if effect is None:
        raise RequestError(explain("--judge needs the rule's visible-effect test", fix="Pass --effect NAME (glasses, "
                                   "moustache, beard, mouth_close or mouth_open)."))
    seeds = report.seeds
    before = gen.images(seeds)
    afters = {"rewrite": gen.images(seeds, report.edit)}
    shown_at = report.settings.get("strength", 1.0)  # the rewrite's own strength (the example's)
    for s in args.strengths:
        afters[f"rewrite @{s:g}"] = gen.images(seeds, report.edit.scaled(s / shown_at))
    afters.update({name: render(gen, model, seeds) for name, model in report.models.items()})
    judged = judge(before, afters, effect, seeds)
    figure = judged.to_json(per_face=True)
    figure["_meta"] = {"command": _figure_command(), "pixel_scores": report.to_json()}
    atomic_write_bytes(out / "judge.json", (json.dumps(figure, indent=1) + "\n").encode())
    if args.json_out:
        atomic_write_bytes(Path(args.json_out), (json.dumps(figure, indent=1) + "\n").encode())
    shown = shown_faces(judged)
    painted = _painted_images(judged, before, effect, shown)
    rows = {"before": before[shown], "rewrite": afters["rewrite"][shown], PAINTED: painted}
    pictures = [out / "judge.png", *([Path(args.picture)] if args.picture else [])]
    for path in pictures:
        save_judge_picture(rows, [seeds[i] for i in shown], path)
    print(judged.table())
    print(f"wrote {out / 'judge.json'}, {', '.join(str(p) for p in pictures)}")


def _figure_command() -> str | None:
    from olam_edit.eval.figures import invoked_command

    return invoked_command("evaluate")


def _painted_images(judged: Any, before: torch.Tensor, effect: str, shown: list[int]) -> torch.Tensor:
    """The hand-painted reference of the ``shown`` faces (as the judge made it)."""
    from olam_edit.eval.judge.painted import paint
    from olam_edit.eval.judge.read import from_pixels, read_faces

    faces = read_faces(before[shown], identity=False)
    return from_pixels(paint(effect, faces.pixels, faces.landmarks), before.shape[-1])


def _cmd_interference(args: argparse.Namespace) -> int:
    """``evaluate --interference A B``: the table, ``out/interference.json`` and ``.png``, and the figure."""
    import sys

    from olam_edit.adapters import load_generator
    from olam_edit.eval.interference import interference, interference_table, save_interference_picture
    from olam_edit.files.atomic import atomic_write_bytes

    if not args.interference or args.spec is not None or args.region not in (None, "example"):
        raise RequestError(explain("--interference takes two example names and measures in their own boxes",
                                   got=f"spec {args.spec!r}, --interference {args.interference}, "
                                       f"--region {args.region}",
                                   fix="e.g. olam-edit evaluate --interference add_sunglasses close_mouth "
                                       "(no spec, no --region; --picture needs --interference)."))
    gen = load_generator(args.model)
    result = interference(gen, *args.interference, seeds=args.seeds,
                          log=lambda line: print(line, file=sys.stderr, flush=True))
    if not distributed.is_main_process():
        return 0
    figure = result.to_json()
    out = Path(args.out)
    atomic_write_bytes(out / "interference.json", (json.dumps(figure, indent=1) + "\n").encode())
    pictures = [out / "interference.png", *([Path(args.picture)] if args.picture else [])]
    for path in pictures:
        save_interference_picture(result, path)
    if args.json_out:
        from olam_edit.eval.figures import invoked_command

        figure["_meta"]["command"] = invoked_command("evaluate")
        atomic_write_bytes(Path(args.json_out), (json.dumps(figure, indent=1) + "\n").encode())
    print(interference_table(figure))
    print(f"wrote {out / 'interference.json'}, {', '.join(str(p) for p in pictures)}")
    if args.json:
        print(json.dumps(figure["acceptance"]))
    return 0


def _split(text: str, cast: type) -> list[Any]:
    return [cast(v) for v in text.split(",") if v.strip()]


def _add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="an example name or a request JSON")
    _add_common(p)
    p.add_argument("--layers", required=True, type=lambda t: _split(t, str), help="e.g. main.3,main.6,main.9")
    p.add_argument("--ranks", default=[1], type=lambda t: _split(t, int), help="e.g. 1,2,4 (default 1)")


@command("sweep", "rank layers and ranks for a request by in-region change over collateral")
def cmd_sweep(args: argparse.Namespace) -> int:
    from olam_edit.adapters import load_generator
    from olam_edit.eval.pictures import sweep_chart

    request, settings = _load_spec(args.spec)
    if not hasattr(request, "layer"):
        raise RequestError(explain("sweep needs a request, not an edit", fix="Pass an example name or a JSON."))
    gen = load_generator(args.model)
    size = tuple(gen.images([0]).shape[-2:])
    pairs = [(layer, rank) for layer in args.layers for rank in args.ranks]
    rows = [_sweep_one(gen, request, settings, layer, rank, args, size, f"{i}/{len(pairs)}")
            for i, (layer, rank) in enumerate(pairs, 1)]
    if not distributed.is_main_process():
        return 0  # under torchrun the other ranks only helped collect the statistics
    rows.sort(key=lambda r: -r.get("ratio", -1.0))
    per_seed = {f"{r['layer']} r{r['rank']}": r.pop("_per_seed") for r in rows if "_per_seed" in r}
    seeds = next((r["_seeds"] for r in rows if "_seeds" in r), [])
    for r in rows:
        r.pop("_seeds", None)
    _print_sweep(rows)
    out = Path(args.out)
    from olam_edit.files.atomic import atomic_write, atomic_write_bytes

    atomic_write_bytes(out / "sweep.json", (json.dumps(rows, indent=1) + "\n").encode())
    atomic_write(out / "sweep.png", lambda tmp: sweep_chart(rows).save(tmp, format="PNG"))
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}")
    if args.json_out and seeds:
        _write_sweep_figure(args, rows, per_seed, seeds)
    if args.json:
        print(json.dumps(rows))
    return 0


cmd_sweep.configure = _add_sweep


def _write_sweep_figure(args: argparse.Namespace, rows: list[dict[str, Any]], per_seed: dict[str, Any],
                        seeds: list[int]) -> None:
    from olam_edit.eval.figures import invoked_command, sweep_record
    from olam_edit.files.atomic import atomic_write_bytes

    region = "heatmap" if args.region is None else args.region if args.region == "example" else list(args.region)
    record = sweep_record(rows, per_seed, seeds, {"command": invoked_command("sweep"), "region": region})
    atomic_write_bytes(Path(args.json_out), (json.dumps(record, indent=1) + "\n").encode())


def _sweep_one(gen: Any, request: Any, settings: dict[str, Any], layer: str, rank: int, args: argparse.Namespace,
               size: tuple[int, int], count: str = "") -> dict[str, Any]:
    """One row of the sweep; ``_per_seed`` and ``_seeds`` are for ``--json-out`` (taken off before printing)."""
    import sys

    from olam_edit.eval.evaluate import evaluate

    print(f"sweep [{count}] {layer} rank {rank} ...", file=sys.stderr, flush=True)
    req = dataclasses.replace(request, layer=layer, rank=rank)
    try:
        report = evaluate(gen, req, seeds=args.seeds, region=_region_mask(args.region, settings, size),
                          baselines=False, rewriter=_rewriter(gen, layer, settings), progress=False)
    except OlamEditError as e:
        return {"layer": layer, "rank": rank, "error": str(e)}
    s = report.methods["rewrite"]
    return {"layer": layer, "rank": rank, "in_region": s.in_region, "collateral": s.collateral, "ratio": s.ratio,
            "generality": s.generality, "ratio_se": s.ratio_se, "generality_se": s.generality_se,
            "relative_norm": report.settings["relative_norm"], "_per_seed": report.per_seed["rewrite"],
            "_seeds": report.seeds}


def _print_sweep(rows: list[dict[str, Any]]) -> None:
    print(f"{'layer':<12}{'rank':>5}{'in_region':>11}{'collateral':>12}{'ratio':>8}{'generality':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['layer']:<12}{r['rank']:>5}  failed: {r['error'][:80]}")
        else:
            print(f"{r['layer']:<12}{r['rank']:>5}{r['in_region']:>11.4f}{r['collateral']:>12.4f}{r['ratio']:>8.2f}"
                  f"{r['generality']:>12.2f}")
