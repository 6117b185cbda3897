"""``olam-edit demo``: run the Gradio Space (``spaces_app/app.py``) on this machine.

The Space lives in ``spaces_app/`` (its own folder, as a Space repo holds it), not in the package, so
this command loads that file by path: from ``$OLAM_EDIT_SPACE_APP`` when set, else from the checkout
this package is installed from (``pip install -e .``). Gradio is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from olam_edit.cli.common import command
from olam_edit.errors import OlamEditError, explain

MODULE_NAME = "olam_edit_space_app"


def find_space_app() -> Path:
    """The Space's ``app.py``: ``$OLAM_EDIT_SPACE_APP``, else ``spaces_app/app.py`` of this checkout."""
    env = os.environ.get("OLAM_EDIT_SPACE_APP")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "spaces_app" / "app.py"
    if not path.is_file():
        raise OlamEditError(explain("cannot find the Space app", got=str(path),
                                    fix="Run olam-edit demo from a checkout installed with `pip install -e "
                                        "\".[space]\"`, or set OLAM_EDIT_SPACE_APP to spaces_app/app.py."))
    return path


def load_space_app(path: Path | None = None) -> ModuleType:
    """Import the Space's ``app.py`` as a module (it launches nothing on import)."""
    if importlib.util.find_spec("gradio") is None:
        raise OlamEditError(explain("olam-edit demo needs Gradio", fix="pip install \"olam-edit[space]\""))
    path = Path(path or find_space_app()).resolve()
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
