"""CLI commands that author and apply rewrites: ``example``, ``rewrite``, ``apply``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from olam_edit.cli.common import check_out, command, parse_seeds
from olam_edit.memory import distributed
from olam_edit.memory.solve import DEFAULT_SMOOTHNESS

HELDOUT_SEEDS = "1000-1015"


def _report(edit, seconds: float) -> None:
    m = edit.manifest.get("metrics", {})
    print(f"||dW||/||W|| = {m.get('relative_norm', float('nan')):.4f}   solved in {seconds:.2f} s")


def _before_after(gen, edit, seeds: list[int], path: Path, scale: float = 1.0) -> Path:
    from olam_edit.eval.grid import save_grid

    before, after = gen.images(seeds), gen.images(seeds, edit, scale)
    return save_grid([before, after], path, labels=["before", f"after x{scale:g}" if scale != 1 else "after"])


DEFAULT_EXAMPLE = "add_sunglasses"  # the quick start's rule


def _add_example(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=None, help=f"example name (default: {DEFAULT_EXAMPLE}; --list shows all)")
    p.add_argument("--out", default="out", help="output folder (default ./out)")
    p.add_argument("--seeds", type=parse_seeds, default=None, help="held-out seeds for the grid (default 1000-1015)")
    p.add_argument("--list", action="store_true", help="list the examples and exit")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")


@command("example", "run a curated rewrite of the embedded face model end to end")
def cmd_example(args: argparse.Namespace) -> int:
    from olam_edit.adapters import load_default
    from olam_edit.rules.spatial.examples import list_examples, load_example
    from olam_edit.rules.spatial.stages import solve_example

    names = list_examples()
    if args.list:
        for name in names:
            print(f"{name}: {load_example(name)[0].description}")
        return 0
    request, settings = load_example(args.name or DEFAULT_EXAMPLE)
    out = Path(args.out)
    check_out(out, args.force)
    print(f"example {request.name!r}: {request.description} ({_stages_text(request, settings)})")
    gen, t0 = load_default(), time.perf_counter()
    edit = solve_example(gen, request, settings)  # both stages when it has them, at its curated strength
    if not distributed.is_main_process():
        return 0  # under torchrun the other ranks only helped collect the statistics
    _report(edit, time.perf_counter() - t0)
    print(f"wrote {edit.save(out / 'edit')}")
    seeds = args.seeds or parse_seeds(HELDOUT_SEEDS)
    print(f"wrote {_before_after(gen, edit, seeds, out / 'before_after.png')}")
    return 0


cmd_example.configure = _add_example


def _stages_text(request: Any, settings: dict[str, Any]) -> str:
    """"layer main.6, rank 6" and, for a two-stage example, its second stage and the first's strength."""
    from olam_edit.rules.spatial.stages import parse_then

    text = f"layer {request.layer}, rank {request.rank}"
    then = parse_then(settings, request.layer)
    if then is not None:
        text += f" at strength {then.first_strength:g}, then layer {then.layer}, rank {then.rank} solved on it"
    at = settings.get("strength", 1.0)
    return text + (f"; strength {at:g}" if at != 1.0 else "")


def _smoothness(text: str) -> float:
    """``--smoothness``: a finite number >= 0 (nan, inf and negatives are refused, never used)."""
    from olam_edit.errors import RequestError
    from olam_edit.memory.solve import check_smoothness

    try:
        return check_smoothness(float(text))
    except (ValueError, RequestError) as e:
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, RequestError) else f"not a number: {text[:40]!r}"
                                         ) from None


def _samples(text: str) -> int:
    """``--samples``: a whole number of samples in [1, 1000000]."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a whole number of samples in [1, 1000000], got {text[:40]!r}")
    return n


def _add_rewrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("request", nargs="+", metavar="REQUEST",
                   help="request JSON (like olam_edit/rules/spatial/examples/*.json); several files of one layer "
                        "are solved jointly into one edit")
    p.add_argument("--model", default="default", help="generator: 'default', a path or a Hub id")
    p.add_argument("--out", required=True, help="folder to write the edit into")
    p.add_argument("--smoothness", type=_smoothness, default=DEFAULT_SMOOTHNESS,
                   help="the paper's 1/lambda: a finite number >= 0 (default 1)")
    p.add_argument("--samples", type=_samples, default=1000, help="samples for the key statistics (1..1000000)")
    p.add_argument("--grid", default=None, help="also write a before/after PNG over held-out seeds")
    p.add_argument("--keep", nargs="+", action="extend", default=[], metavar="EDIT",
                   help="edits of the same layer (folders or Hub ids) applied first and kept: the new edit leaves "
                        "the keys they were fitted on unchanged (give it after the request files)")


def load_requests(paths: list[str]) -> list[Any]:
    """The EditRequests of ``paths``, all of one layer. With several files, an error names its file,
    and files of other layers are one RequestError naming them (one edit solves one layer's rules)."""
    from olam_edit.errors import OlamEditError, RequestError, explain
    from olam_edit.rules.spatial.request import EditRequest

    if len(paths) == 1:
        return [EditRequest.load(paths[0])]
    requests = []
    for path in paths:
        try:
            requests.append(EditRequest.load(path))
        except OlamEditError as e:
            raise type(e)(f"{path}: {e.what}", got=e.got, expected=e.expected, fix=e.fix) from e
    layer = requests[0].layer
    other = [f"{path} ({r.layer})" for path, r in zip(paths, requests, strict=True) if r.layer != layer]
    if other:
        raise RequestError(explain("the request files are for different layers, and one edit solves the rules of "
                                   "one layer", got=f"{', '.join(other)} besides {paths[0]} ({layer})",
                                   expected=f"every file for {layer!r}",
                                   fix="Run `olam-edit rewrite` once per layer, then `olam-edit merge` the edits."))
    return requests


def _kept(gen: Any, sources: list[str]) -> list[Any]:
    """The ``--keep`` edits, loaded (folders or Hub ids, verified) and applied to ``gen.model`` in order."""
    from olam_edit.edit.apply import apply_edit
    from olam_edit.edit.core import Edit

    edits = [Edit.from_pretrained(source) for source in sources]
    for edit in edits:
        apply_edit(gen.model, edit)  # BaseMismatchError unless made for this model's base
    return edits


@command("rewrite", "solve one request, or several of one layer jointly, and save the edit")
def cmd_rewrite(args: argparse.Namespace) -> int:
    from olam_edit.adapters import load_generator
    from olam_edit.rules.spatial.rewriter import Rewriter

    requests = load_requests(args.request)
    gen = load_generator(args.model)
    kept, t0 = _kept(gen, args.keep), time.perf_counter()
    rw = Rewriter(gen, requests[0].layer, smoothness=args.smoothness, stats_samples=args.samples, keep=kept)
    edit = rw.rewrite(requests if len(requests) > 1 else requests[0])
    if not distributed.is_main_process():
        return 0  # under torchrun the other ranks only helped collect the statistics
    _report(edit, time.perf_counter() - t0)
    if len(requests) > 1:
        layer = requests[0].layer
        print(f"solved {len(requests)} rules of {layer} jointly: rank {edit.deltas[layer].rank}")
    if kept:
        print(f"kept {len(kept)} edit(s) applied first; `olam-edit merge` them with this one for a single edit")
    print(f"wrote {edit.save(args.out)}")
    if args.grid:
        print(f"wrote {_before_after(gen, edit, parse_seeds(HELDOUT_SEEDS), Path(args.grid))}")
    return 0


cmd_rewrite.configure = _add_rewrite


def _add_apply(p: argparse.ArgumentParser) -> None:
    p.add_argument("edit", help="edit folder, or the Hub repo id of a published edit")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a Hub edit (default main)")
    p.add_argument("--model", default="default", help="generator: 'default', a path or a Hub id")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-15"), help="seeds to render, e.g. 0-15")
    p.add_argument("--grid", required=True, help="before/after PNG to write")
    p.add_argument("--scale", type=float, default=1.0, help="strength (0 = base model)")
    p.add_argument("--force", action="store_true", help="apply even if the base fingerprint differs")
    p.add_argument("--force-download", action="store_true",
                   help="download a Hub edit again even if it is in the Hugging Face cache")


@command("apply", "render samples before and after applying an edit")
def cmd_apply(args: argparse.Namespace) -> int:
    from olam_edit.adapters import load_generator
    from olam_edit.edit.apply import apply_edit, revert_edit
    from olam_edit.edit.core import Edit

    edit = Edit.from_pretrained(args.edit, revision=args.revision,  # a folder or a Hub id, verified
                                force_download=args.force_download)
    gen = load_generator(args.model)
    apply_edit(gen.model, edit, scale=args.scale, force=args.force)  # validates the base before rendering
    revert_edit(gen.model, edit)
    print(f"wrote {_before_after(gen, edit, args.seeds, Path(args.grid), args.scale)}")
    return 0


cmd_apply.configure = _add_apply
