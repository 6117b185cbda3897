"""``olam-edit space deploy user/name``: put the Space on the Hugging Face Hub in one command.

Uses the standard ``HF_ENDPOINT``, ``HF_TOKEN`` (or the stored login) like every Hub library; ``--token``
overrides the token. See :mod:`olam_edit.hub.space_deploy` for what the Space repo holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from olam_edit.cli.common import command


def _add_space(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="space_action", metavar="ACTION", required=True)
    d = actions.add_parser("deploy", help="create a Gradio Space and upload the app with olam-edit's wheel",
                           description="Create a Gradio Space repo and upload the app, its README, its "
                                       "requirements and olam-edit's wheel (built from this installation).")
    d.add_argument("repo_id", help="the Space to create, e.g. your-name/olam-edit")
    d.add_argument("--model", default=None,
                   help="generator the Space runs: 'default' or a Hub id (the Space variable OLAM_EDIT_MODEL)")
    d.add_argument("--private", action="store_true", help="create the Space as private")
    d.add_argument("--hardware", default=None, metavar="FLAVOR",
                   help="hardware to request, e.g. cpu-upgrade, t4-small or zero-a10g (ZeroGPU); default: the free "
                        "cpu-basic")
    d.add_argument("--exist-ok", action="store_true",
                   help="update an existing Space: replace its files, and set --model / --hardware when given")
    d.add_argument("--wheel", default=None, metavar="PATH",
                   help="upload this olam-edit wheel instead of building one from this installation")
    d.add_argument("--app", default=None, metavar="DIR",
                   help="the app folder to deploy (default: the Space shipped with olam-edit, olam_edit.spaces_app)")
    d.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")


@command("space", "deploy the Space to the Hugging Face Hub: olam-edit space deploy your-name/olam-edit")
def cmd_space(args: argparse.Namespace) -> int:
    from olam_edit.hub.space_deploy import deploy_space

    done = deploy_space(args.repo_id, Path(args.app) if args.app else _shipped_app(), model=args.model,
                        private=args.private, hardware=args.hardware, exist_ok=args.exist_ok, wheel=args.wheel,
                        token=args.token)
    print(f"uploaded {done.wheel} and the app: {done.commit_url}")
    if done.variables:
        print("Space variables: " + ", ".join(f"{k}={v}" for k, v in done.variables.items()))
    print(f"deployed to {done.url} (the Hub builds it now; it is live in a few minutes)")
    if args.private:
        print("note: the Space's build fetches the wheel from the Space's own URL without a token, which a "
              "private Space refuses; make it public to build, or see the README's deploy section")
    return 0


cmd_space.configure = _add_space


def _shipped_app() -> Path:
    """The folder of the Space shipped in the package (``olam_edit.spaces_app``), found without importing Gradio."""
    import importlib.util

    spec = importlib.util.find_spec("olam_edit.spaces_app")
    if spec is None or not spec.submodule_search_locations:
        from olam_edit.errors import OlamEditError, explain

        raise OlamEditError(explain("this olam-edit installation has no Space (olam_edit.spaces_app)",
                                    fix="Pass the app folder with --app."))
    return Path(next(iter(spec.submodule_search_locations)))
