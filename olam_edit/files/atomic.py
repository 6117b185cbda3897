"""The one atomic writer of olam-edit: every file a user gets is written here.

Contract of :func:`atomic_write` (the other functions are thin calls of it): the content goes to a
hidden temporary file in the target's folder; the file is flushed to disk (fsync), given the mode a
plain new file gets under the current umask (0644 under umask 022; ``mkstemp`` alone would leave
0600, and writers such as safetensors' ``save_file`` replace the file and reset a mode set before),
renamed over the target, and the folder is fsynced where the platform supports it. A reader sees the
old file or the new one, never half of one; on any error (or ``KeyboardInterrupt``) the temporary file
is removed and the target is untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system says it (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode a plain new file (0666) or folder (0777) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # Windows cannot open folders; nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Run ``write(temp_path)`` on a temporary file beside ``path``, then move it into place; return ``path``.

    ``write`` may write, replace or post-process the temporary file (and raise to abandon it). The
    parent folder is created if needed. See the module docstring for the full contract.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`); return ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`); return ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy the bytes of ``src`` to ``path`` atomically (not its mode: the umask's); return ``path``."""
    return atomic_write(path, lambda tmp: shutil.copyfile(src, tmp))


def atomic_save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Save ``tensors`` (moved to CPU, made contiguous) with ``metadata`` as safetensors atomically."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def make_staging_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new hidden folder in ``parent`` to assemble ``name`` in, with the umask's folder mode.

    ``mkdtemp`` makes folders 0700; a folder that is renamed into place for the user must get the
    mode ``mkdir`` would give (0755 under umask 022).
    """
    base = Path(parent)
    base.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=base, prefix=f".{name}.", suffix=".tmp"))
    os.chmod(staged, umask_mode(directory=True))
    return staged
