"""Values remembered per live object, by identity: the entry goes when the object is collected.

For objects that are not hashable or whose equality is costly (numpy arrays, a session's selections)
and that are reused request after request: a digest, an encoded file, a derived object.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class IdMemo(Generic[V]):
    """``memo.get(obj)`` is the value ``memo.put(obj, value)`` stored while ``obj`` lives, else None."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, V]] = {}
        self._lock = threading.Lock()

    def get(self, obj: Any) -> V | None:
        with self._lock:
            entry = self._entries.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else None

    def put(self, obj: Any, value: V) -> None:
        key = id(obj)

        def forget(ref: weakref.ref) -> None:
            with self._lock:
                if key in self._entries and self._entries[key][0] is ref:
                    del self._entries[key]

        with self._lock:
            self._entries[key] = (weakref.ref(obj, forget), value)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
