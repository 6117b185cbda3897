"""CLI command that sums edits into one: ``merge`` (see :meth:`olam_edit.edit.core.Edit.merge`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from olam_edit.cli.common import check_out, command


def parse_scales(text: str | None, count: int) -> list[float] | None:
    """``--scales "1,0.5"`` as one finite number per edit (None when not given); RequestError otherwise,
    so a bad list is one line like every other bad input."""
    from olam_edit.errors import RequestError, explain

    if text is None:
        return None
    try:
        scales = [float(part) for part in text.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(math.isfinite(s) for s in scales):
        raise RequestError(explain("--scales must be a comma-separated list of finite numbers", got=repr(text[:60]),
                                   expected=f"{count} numbers, e.g. {','.join(['1'] * count)}"))
    if len(scales) != count:
        raise RequestError(explain("--scales needs one number per edit", got=f"{len(scales)} in {text[:60]!r}",
                                   expected=f"{count} (one per edit, in their order)",
                                   fix="Give as many scales as edits, or leave --scales out for all 1."))
    return scales


def base_of(edit: Any) -> str:
    """The base an edit was made for, as one label: ``id[@revision][ (component)]``."""
    base, component = edit.manifest.get("base_model"), edit.manifest.get("component")
    ident, revision = (base.get("id"), base.get("revision")) if isinstance(base, dict) else (base, None)
    return f"{ident}" + (f"@{revision}" if revision else "") + (f" ({component})" if component else "")


def check_one_base(sources: list[str], edits: list[Any]) -> None:
    """BaseMismatchError naming the edits (by the names given) made for another base than the first one's."""
    from olam_edit.errors import BaseMismatchError, explain

    first = base_of(edits[0])
    other = [f"{source} ({base_of(e)})" for source, e in zip(sources, edits, strict=True) if base_of(e) != first]
    if other:
        raise BaseMismatchError(explain("the edits were made for different base models, and only edits of one base "
                                        "model merge", got=f"{', '.join(other)} besides {sources[0]} ({first})",
                                        expected=f"every edit made for {first}",
                                        fix="Merge the edits of each base model separately."))


def _add_merge(p: argparse.ArgumentParser) -> None:
    p.add_argument("edits", nargs="+", metavar="EDIT", help="edit folders, or Hub repo ids of published edits")
    p.add_argument("--out", required=True, help="folder to write the merged edit into")
    p.add_argument("--scales", default=None, help="one strength per edit, comma-separated, e.g. 1,0.5 (default all 1)")
    p.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    p.add_argument("--force-download", action="store_true",
                   help="download Hub edits again even if they are in the Hugging Face cache")


@command("merge", "sum several edits of one base model into one edit (ranks add up)")
def cmd_merge(args: argparse.Namespace) -> int:
    from olam_edit.edit.core import Edit

    out = Path(args.out)
    check_out(out, args.force)  # before anything is downloaded or solved
    scales = parse_scales(args.scales, len(args.edits))
    edits = [Edit.from_pretrained(source, force_download=args.force_download) for source in args.edits]
    check_one_base(args.edits, edits)
    merged = Edit.merge(edits, scales)  # BaseMismatchError for other base weights, too
    layers = ", ".join(f"{name} rank {delta.rank}" for name, delta in merged.deltas.items())
    print(f"merged {len(edits)} edits: {layers}")
    print(f"wrote {merged.save(out)}")
    return 0


cmd_merge.configure = _add_merge
