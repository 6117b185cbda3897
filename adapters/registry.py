"""The adapter registry: which model family loads a path or a Hub repo.

A family is a name, a ``sniff(path) -> bool`` and a ``load(path, **options) -> Generator``:

* ``sniff`` is cheap: it looks at names, suffixes, a file header or a few bytes, never at the
  weights, and answers False (not an error) for anything it does not know. A family may answer
  for files only: a folder that no family claims as a whole (a Hub snapshot) is loaded from the
  one file of its own (not of its sub-folders) that a family recognises.
* ``load`` builds the generator. It is called with the path (a file or a folder), ``device=``, the
  caller's options, and for a Hub snapshot ``name=<repo id>`` and ``revision=`` unless the caller
  gave them; so a family's ``load`` takes ``device``, ``name`` and ``revision`` keywords.

:func:`load_generator` asks the families in :func:`registered` order and loads with the first whose
sniff says yes: the ones given to :func:`register` (newest first), then the built-ins of
:data:`BUILTINS` (the face DCGAN and StyleGAN2). Built-ins are a static table of ``"module:function"``
names, imported when first asked, so importing this module imports no family and runs nothing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from olam_edit.errors import GeneratorLoadError, explain
from olam_edit.rules.generator import Generator

Sniff = Callable[[Path], bool]
Load = Callable[..., Generator]

DEFAULT_SPEC = "default"  # the spec that means the model shipped in the package
DEFAULT_MODEL = "olam_edit.adapters.face_dcgan.family:load_default"  # what "default" loads
BUILTINS: dict[str, tuple[str, str]] = {  # family name -> ("module:sniff", "module:load")
    "face_dcgan": ("olam_edit.adapters.face_dcgan.family:sniff", "olam_edit.adapters.face_dcgan.family:load"),
    "stylegan2": ("olam_edit.adapters.stylegan2.files:looks_like_stylegan2",
                  "olam_edit.adapters.stylegan2.generator:load_generator_from_path"),
}


@dataclass(frozen=True)
class Family:
    """One model family: its ``name``, ``sniff(path) -> bool`` and ``load(path, **options) -> Generator``."""

    name: str
    sniff: Sniff
    load: Load


_REGISTERED: dict[str, Family] = {}  # filled by register() only, in registration order


def register(name: str, sniff: Sniff, load: Load) -> Family:
    """Make a model family known to :func:`load_generator`; return its :class:`Family`.

    A later registration of the same ``name`` (a built-in's included) replaces the earlier one.
    Families registered later are asked first.
    """
    if not isinstance(name, str) or not name.strip() or name == DEFAULT_SPEC:
        raise GeneratorLoadError(explain("a model family needs a name", got=repr(name),
                                         expected=f"a non-empty string other than {DEFAULT_SPEC!r}"))
    if not (callable(sniff) and callable(load)):
        raise GeneratorLoadError(explain(f"family {name!r}: sniff and load must be functions",
                                         got=f"sniff={type(sniff).__name__}, load={type(load).__name__}",
                                         expected="sniff(path) -> bool and load(path, **options) -> Generator"))
    _REGISTERED.pop(name, None)
    _REGISTERED[name] = family = Family(name, sniff, load)
    return family


def unregister(name: str) -> None:
    """Forget a family given to :func:`register` (a built-in it replaced comes back)."""
    if _REGISTERED.pop(name, None) is None:
        raise GeneratorLoadError(explain(f"no registered family {name!r}", expected=list(_REGISTERED)))


def registered() -> list[str]:
    """Family names in the order :func:`load_generator` asks them: registered (newest first), then built-ins."""
    mine = list(reversed(_REGISTERED))
    return mine + [n for n in BUILTINS if n not in _REGISTERED]


def family(name: str) -> Family:
    """The family called ``name`` (a built-in's module is imported now)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTINS:
        sniff, load = BUILTINS[name]
        return Family(name, _entry(sniff), _entry(load))
    raise GeneratorLoadError(explain(f"no model family {name!r}", expected=f"one of {registered()}",
                                     fix="register(name, sniff, load) adds one."))


def _entry(ref: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (imports the module)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def sniff(path: str | Path) -> str | None:
    """The name of the first family (in :func:`registered` order) that recognises ``path``, or None."""
    path = Path(path)
    for name in registered():
        try:
            if family(name).sniff(path):
                return name
        except OSError:  # unreadable for this family: not its file
            continue
    return None


def load_generator(spec: str | Path = DEFAULT_SPEC, *, family: str | None = None, revision: str | None = None,
                   device: str = "cpu", **options: Any) -> Generator:
    """A Generator for ``spec``: ``"default"`` (the embedded face DCGAN), a local file or folder, or a Hub id.

    A path or a Hub snapshot (downloaded first, at ``revision``) goes to the first family whose
    sniff recognises it, or to ``family`` when given. ``options`` go to the family's ``load``
    (StyleGAN2: ``truncation=``, ``noise_mode=``...). GeneratorLoadError names the registered
    families when none recognises the path.
    """
    text = str(spec)
    if text == DEFAULT_SPEC:
        return _call("the default model", _entry(DEFAULT_MODEL), device=device, **options)
    path = Path(spec)
    if path.exists():
        return _load_path(path, family, device=device, **options)
    if _is_hub_id(text):
        options.setdefault("name", text)
        options.setdefault("revision", revision)
        return _load_path(_snapshot(text, revision), family, device=device, **options)
    raise GeneratorLoadError(explain(f"cannot load a generator from {text!r}: no such file or folder",
                                     expected=f"{DEFAULT_SPEC!r}, an existing path or a Hub id 'namespace/name'",
                                     fix="Check the spelling; local paths must exist."))


def _load_path(path: Path, forced: str | None, /, **options: Any) -> Generator:
    """Load ``path`` with the family ``forced`` (no sniffing), or with the family that recognises it."""
    chosen, target = (forced, path) if forced is not None else _recognise(path)
    return _call(f"family {chosen!r}", family(chosen).load, target, **options)


def _recognise(path: Path) -> tuple[str, Path]:
    """The family that recognises ``path`` and what it loads: the path itself, or else (a folder no
    family claims as a whole, such as a Hub snapshot) the one file of the folder's own that a family
    recognises. Sub-folders are never searched."""
    name = sniff(path)
    if name is not None:
        return name, path
    hits: list[tuple[str, Path]] = []
    if path.is_dir():
        files = [f for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")]
        hits = [(n, f) for f in files if (n := sniff(f)) is not None]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise GeneratorLoadError(explain(f"several checkpoints in {path}", got=[f"{f.name} ({n})" for n, f in hits],
                                         fix="Name the file to load."))
    raise GeneratorLoadError(explain(f"no model family recognises {path}", expected=f"a file or folder of "
                                     f"one of the registered families {registered()}",
                                     fix="Name a checkpoint file, pass family=, or register(name, sniff, load) "
                                         "a family for it."))


def _call(what: str, load: Load, /, *args: Any, **options: Any) -> Generator:
    """``load(*args, **options)``, after checking it takes those options (a clear error if not)."""
    try:
        inspect.signature(load).bind(*args, **options)
    except TypeError as exc:
        raise GeneratorLoadError(explain(f"{what} does not take these options", got=sorted(options),
                                         expected=f"load{inspect.signature(load)}",
                                         fix="Pass only the options this family's load takes.")) from exc
    return load(*args, **options)


def _is_hub_id(text: str) -> bool:
    """``namespace/name`` that the Hub accepts (a bare name is taken for a missing local path)."""
    from olam_edit.hub.repo import looks_like_repo_id

    return text.count("/") == 1 and looks_like_repo_id(text)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    """The repo downloaded through the standard Hugging Face cache (Hub errors translated)."""
    from huggingface_hub import snapshot_download

    from olam_edit.hub.errors import hub_errors

    with hub_errors("download the model", repo_id, revision):
        return Path(snapshot_download(repo_id, revision=revision))
