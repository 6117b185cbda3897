"""``olam-edit demo``: run the Gradio Space on this machine.

The Space ships inside the package as ``olam_edit.spaces_app`` (the repository's ``spaces_app/``
folder, which is also what a Space repo holds), so the command works after a plain
``pip install "olam-edit[space]"`` from any folder. ``$OLAM_EDIT_SPACE_APP`` points it at another
``app.py`` instead (a Space repo's copy being changed, say), loaded by path. Gradio and the Space are
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from olam_edit.cli.common import command
from olam_edit.errors import OlamEditError, explain

SPACE_MODULE = "olam_edit.spaces_app.app"  # the Space shipped in the package
MODULE_NAME = "olam_edit_space_app"  # the name an app.py loaded by path gets


def load_space_app(path: str | Path | None = None) -> ModuleType:
    """The Space's app module (it launches nothing on import): the file ``path``, else the file
    ``$OLAM_EDIT_SPACE_APP``, else the Space shipped in the package."""
    if importlib.util.find_spec("gradio") is None:
        raise OlamEditError(explain("olam-edit demo needs Gradio", fix="pip install \"olam-edit[space]\""))
    path = path or os.environ.get("OLAM_EDIT_SPACE_APP")
    if path:
        return _load_file(Path(path))
    if importlib.util.find_spec("olam_edit.spaces_app") is None:
        raise OlamEditError(explain("this olam-edit installation has no Space (olam_edit.spaces_app)",
                                    fix="Reinstall it: pip install --force-reinstall \"olam-edit[space]\"."))
    return importlib.import_module(SPACE_MODULE)


def _load_file(path: Path) -> ModuleType:
    """Import the ``app.py`` at ``path`` as the module :data:`MODULE_NAME` (once per file)."""
    if not path.is_file():
        raise OlamEditError(explain("cannot find the Space app", got=str(path),
                                    fix="Point OLAM_EDIT_SPACE_APP at a Space's app.py, or unset it to run the "
                                        "Space installed with olam-edit."))
    path = path.resolve()
    loaded = sys.modules.get(MODULE_NAME)
    if loaded is not None and Path(loaded.__file__).resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MODULE_NAME]
        raise
    return module


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="generator: 'default' (embedded face DCGAN), a path or a Hub id")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--samples", type=int, default=None, help="samples for the key statistics (default 1000)")


@command("demo", "launch the Gradio Space (paint, rewrite, compare, download) on this machine")
def cmd_demo(args: argparse.Namespace) -> int:
    app = load_space_app()
    print(f"olam-edit demo: loading {args.model!r}; open http://{args.host}:{args.port}/ when it is up")
    demo = app.build_app(model=args.model, stats_samples=args.samples)
    app.launch(demo, args.host, args.port)
    return 0


cmd_demo.configure = _add_demo
