"""CLI commands that share on the Hugging Face Hub: ``push`` and ``pull``.

Both use the standard ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` variables and the standard
cache, like every Hub library; ``--token`` overrides the token.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from olam_edit.cli.common import command


def _add_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="edit folder (olam-edit rewrite --out), or a statistics .safetensors file")
    p.add_argument("repo_id", help="Hub repo to publish to, e.g. your-name/smile-edit (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", default=None, help="branch to commit to (created if needed; default main)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--image", default=None,
                   help="before/after PNG for the model card (default: before_after.png in PATH or, as "
                        "`olam-edit example` lays it out, beside PATH, when it exists)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")


def _is_stats_file(path: Path) -> bool:
    return path.is_file() and path.suffix == ".safetensors" and path.name != "edit.safetensors"


@command("push", "publish an edit folder (or a statistics file) to the Hugging Face Hub")
def cmd_push(args: argparse.Namespace) -> int:
    from olam_edit.edit.core import Edit
    from olam_edit.edit.publish import PICTURE_NAME, push_edit
    from olam_edit.hub.stats import push_stats
    from olam_edit.memory.stats import SecondMoment

    path = Path(args.path)
    path = path.parent if path.name == "edit.safetensors" and path.is_file() else path
    options = {"private": args.private, "token": args.token, "revision": args.revision,
               "create_pr": args.create_pr, "commit_message": args.message}
    if _is_stats_file(path):
        url = push_stats(SecondMoment.load(path), args.repo_id, **options)
    else:
        edit = Edit.load_verified(path)  # a damaged folder is never published
        image = args.image or next((p for p in (path / PICTURE_NAME, path.parent / PICTURE_NAME) if p.is_file()),
                                   None)
        if image is not None:
            print(f"before/after picture: {image}")
        url = push_edit(edit, args.repo_id, image=image, **options)
    print(f"pushed to {url}")
    return 0


cmd_push.configure = _add_push


def _add_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo_id", help="Hub repo of an edit, e.g. someone/smile-edit")
    p.add_argument("--out", required=True, help="folder to write the edit into (created; must be new or empty)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder at --out")
    p.add_argument("--force-download", action="store_true",
                   help="download the files again even if they are in the Hugging Face cache")
    p.add_argument("--token", default=None, help="Hub token for private repos (default: HF_TOKEN or the stored login)")


@command("pull", "download a published edit into a folder, verified against its checksums")
def cmd_pull(args: argparse.Namespace) -> int:
    from olam_edit.edit.publish import pull_edit

    out = pull_edit(args.repo_id, args.out, revision=args.revision, token=args.token, overwrite=args.overwrite,
                    force_download=args.force_download)
    print(f"wrote {out}")
    return 0


cmd_pull.configure = _add_pull
