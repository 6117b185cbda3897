"""A pre-pass over a pickle's opcodes that refuses what would hang or exhaust memory, before unpickling.

Python's unpickler trusts the sizes a pickle states: ``LONG_BINPUT 2**32-1`` grows the memo to
billions of slots, ``BINBYTES8 2**62`` asks the file for that many bytes, and a 200-byte pickle can
build a tuple that shares itself 60 levels deep, whose ``hash`` (a dict key) or ``repr`` then takes
``2**60`` steps. :func:`scan_pickle` reads one pickle's opcodes from a stream with bounded reads
(length-prefixed payloads are skipped, never read), simulates its stack on light nodes (no value is
built) and refuses, with :class:`~olam_edit.errors.UnsafePickleError` naming the opcode and the bound:

* a memo index beyond :data:`MAX_MEMO_INDEX` or beyond the number of opcodes read so far (a pickler
  numbers memo entries in order, so a real pickle's index is never larger);
* a payload longer than :data:`MAX_PAYLOAD_BYTES` or than the bytes the stream still holds;
* more than :data:`MAX_OPCODES` opcodes or a stack deeper than :data:`MAX_STACK`;
* a value nested deeper than :data:`MAX_NESTING`, or one that, written out without its sharing,
  has more than :data:`MAX_EXPANDED_NODES` parts (checked as it is built and over the final graph).

The bounds are module constants, read at each call (a user may raise them).
"""

from __future__ import annotations

import io
import os
import pickletools
from typing import BinaryIO

from olam_edit.errors import UnsafePickleError, explain

MAX_MEMO_INDEX = 1 << 24  # a 1024px NVlabs pickle (G, D, G_ema) memoizes about 10**5 objects
MAX_PAYLOAD_BYTES = 1 << 30  # one bytes / str object: 4x the per-storage bound of safety.py
MAX_OPCODES = 1 << 24  # a 1024px NVlabs pickle has about 10**5 opcodes
MAX_STACK = 1 << 20  # values on the unpickler's stack at once
MAX_NESTING = 200  # containers inside containers; NVlabs pickles nest about 30 deep
MAX_EXPANDED_NODES = 1 << 24  # parts of one value written out without sharing
MAX_LINE_BYTES = 1 << 16  # one newline-terminated argument (protocol 0 / 1 text opcodes)

_OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_LENGTH_PREFIX = {-2: 1, -3: 4, -4: 4, -5: 8}  # TAKEN_FROM_ARGUMENT1 / 4 / 4U / 8U: bytes of the length
_LEAF_OPS = frozenset({
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "NEXT_BUFFER", "NONE",
    "NEWTRUE", "NEWFALSE", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
    "GLOBAL", "PERSID", "EXT1", "EXT2", "EXT4"})
_FIXED_TUPLES = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_MARK = object()


class _Node:
    """One value of the simulated stack: its direct parts, and its size / depth as counted so far."""

    __slots__ = ("depth", "parts", "size")

    def __init__(self, parts: list[_Node]) -> None:
        self.parts = parts
        if parts:
            self.size = 1 + sum([p.size for p in parts])
            self.depth = 1 + max([p.depth for p in parts])
        else:
            self.size, self.depth = 1, 1


_LEAF = _Node([])
_LEAF.depth = 0


class _Scan:
    """State of one scan: the stack, the memo, the opcode count, the stream and what it still holds."""

    def __init__(self, stream: BinaryIO, end: int, source: str) -> None:
        self.stream, self.end, self.source = stream, end, source
        self.stack: list[object] = []
        self.memo: dict[int, _Node] = {}
        self.count = 0

    def refuse(self, op: str, what: str, got: object, bound: str) -> UnsafePickleError:
        """The error naming the opcode, what it asked for and the bound it broke."""
        return UnsafePickleError(explain(
            f"{self.source}: pickle opcode {op} {what}", got=got, expected=bound,
            fix="The file is damaged or was crafted to exhaust memory or time; nothing was unpickled."))

    def remaining(self) -> int:
        """Bytes the stream still holds."""
        return self.end - self.stream.tell()

    def read(self, n: int, op: str) -> bytes:
        """Exactly ``n`` bytes (small, fixed-size arguments)."""
        data = self.stream.read(n)
        if len(data) != n:
            raise self.refuse(op, "is cut off", f"{len(data)} of {n} argument bytes", "a complete pickle")
        return data

    def argument(self, op: pickletools.OpcodeInfo) -> int | None:
        """Read or skip ``op``'s argument; an integer argument (memo index, frame size) is returned."""
        arg = op.arg
        if arg is None:
            return None
        if arg.n == pickletools.UP_TO_NEWLINE:
            line = self.stream.readline(MAX_LINE_BYTES + 1)
            if op.name == "GLOBAL" or op.name == "INST":
                line += self.stream.readline(MAX_LINE_BYTES + 1)
            if not line.endswith(b"\n") or len(line) > 2 * MAX_LINE_BYTES:
                raise self.refuse(op.name, "has an unterminated or over-long text argument",
                                  f"{len(line)} bytes", f"a line of at most MAX_LINE_BYTES = {MAX_LINE_BYTES}")
            return int(line) if op.name in ("GET", "PUT") and line.strip().isdigit() else None
        if arg.n >= 0:
            return int.from_bytes(self.read(arg.n, op.name), "little")
        width = _LENGTH_PREFIX[arg.n]
        length = int.from_bytes(self.read(width, op.name), "little", signed=arg.n == -3)
        bound = min(MAX_PAYLOAD_BYTES, self.remaining())
        if length < 0 or length > bound:
            raise self.refuse(op.name, "states a payload longer than allowed", f"{length} bytes",
                              f"at most {bound} (MAX_PAYLOAD_BYTES = {MAX_PAYLOAD_BYTES}, and no more "
                              "than the file still holds)")
        self.stream.seek(length, io.SEEK_CUR)
        return None

    def pop(self, op: str) -> _Node:
        """The top value; a mark or an empty stack is malformed."""
        if not self.stack or self.stack[-1] is _MARK:
            raise self.refuse(op, "finds no value on the stack", "an empty stack", "a well-formed pickle")
        return self.stack.pop()  # type: ignore[return-value]

    def pop_mark(self, op: str) -> list[_Node]:
        """The values above the topmost mark (the mark removed)."""
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                parts = self.stack[i + 1:]
                del self.stack[i:]
                return parts  # type: ignore[return-value]
        raise self.refuse(op, "finds no mark on the stack", "no MARK", "a well-formed pickle")

    def push(self, node: _Node, op: str) -> None:
        """Push ``node`` after checking its size and nesting, and the stack's length."""
        self.check(node, op)
        if len(self.stack) >= MAX_STACK:
            raise self.refuse(op, "grows the stack too far", f"{len(self.stack)} values", f"MAX_STACK = {MAX_STACK}")
        self.stack.append(node)

    def check(self, node: _Node, op: str) -> None:
        """Refuse a value too deeply nested or too large written out."""
        if node.depth > MAX_NESTING:
            raise self.refuse(op, "nests values too deeply", f"depth {node.depth}", f"MAX_NESTING = {MAX_NESTING}")
        if node.size > MAX_EXPANDED_NODES:
            raise self.refuse(op, "builds a value that is too large written out (shared many times over)",
                              f"{node.size} parts", f"MAX_EXPANDED_NODES = {MAX_EXPANDED_NODES}")

    def add(self, target: _Node, parts: list[_Node], op: str) -> None:
        """``parts`` added to the container (or object) ``target`` (APPEND, SETITEM, BUILD, ...)."""
        if target is _LEAF:
            return  # the unpickler fails on it (appending to an int, say)
        target.parts.extend(parts)
        target.size += sum(p.size for p in parts)
        target.depth = max(target.depth, 1 + max((p.depth for p in parts), default=0))
        self.check(target, op)

    def memo_index(self, op: str, index: int | None) -> int:
        """A memo index within :data:`MAX_MEMO_INDEX` and the opcodes read so far."""
        if index is None or index > min(MAX_MEMO_INDEX, self.count):
            raise self.refuse(op, "uses a memo index beyond the bound", "an unreadable index" if index is None
                              else f"index {index}", f"at most {min(MAX_MEMO_INDEX, self.count)} (MAX_MEMO_INDEX "
                              f"= {MAX_MEMO_INDEX}, and no more than the opcodes read so far)")
        return index


def _step(scan: _Scan, name: str, arg: int | None) -> None:
    """Apply one opcode's effect on the simulated stack and memo."""
    if name in _LEAF_OPS:
        scan.push(_LEAF, name)
    elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
        scan.push(_Node([]), name)
    elif name in _FIXED_TUPLES:
        parts = [scan.pop(name) for _ in range(_FIXED_TUPLES[name])][::-1]
        scan.push(_Node(parts), name)
    elif name in ("TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"):
        scan.push(_Node(scan.pop_mark(name)), name)
    elif name in ("APPEND", "BUILD"):
        part = scan.pop(name)
        scan.add(_top(scan, name), [part], name)
    else:
        _step_more(scan, name, arg)


def _step_more(scan: _Scan, name: str, arg: int | None) -> None:
    """The opcodes :func:`_step` does not handle: setters, memo, calls, stack and framing opcodes."""
    if name == "SETITEM":
        value, key = scan.pop(name), scan.pop(name)
        scan.add(_top(scan, name), [key, value], name)
    elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
        parts = scan.pop_mark(name)
        scan.add(_top(scan, name), parts, name)
    elif name in ("REDUCE", "NEWOBJ"):
        args, func = scan.pop(name), scan.pop(name)
        scan.push(_Node([func, args]), name)
    elif name == "NEWOBJ_EX":
        parts = [scan.pop(name) for _ in range(3)][::-1]
        scan.push(_Node(parts), name)
    elif name in ("STACK_GLOBAL", "BINPERSID"):
        parts = [scan.pop(name) for _ in range(2 if name == "STACK_GLOBAL" else 1)]
        scan.push(_Node(parts) if name == "BINPERSID" else _LEAF, name)
    elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
        index = len(scan.memo) if name == "MEMOIZE" else arg
        scan.memo[scan.memo_index(name, index)] = _top(scan, name)
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        node = scan.memo.get(scan.memo_index(name, arg))
        if node is None:
            raise scan.refuse(name, "reads a memo entry never stored", f"index {arg}", "a stored index")
        scan.push(node, name)
    elif name in ("POP", "POP_MARK", "DUP", "MARK"):
        _stack_op(scan, name)
    # PROTO, FRAME, READONLY_BUFFER: no effect on the values


def _top(scan: _Scan, name: str) -> _Node:
    """The top value, left in place."""
    node = scan.pop(name)
    scan.stack.append(node)
    return node


def _stack_op(scan: _Scan, name: str) -> None:
    """POP, POP_MARK, DUP and MARK."""
    if name == "MARK":
        if len(scan.stack) >= MAX_STACK:
            raise scan.refuse(name, "grows the stack too far", f"{len(scan.stack)} values", f"MAX_STACK = {MAX_STACK}")
        scan.stack.append(_MARK)
    elif name == "POP_MARK":
        scan.pop_mark(name)
    elif name == "DUP":
        scan.push(_top(scan, name), name)
    elif scan.stack:
        scan.stack.pop()


def scan_pickle(stream: BinaryIO, *, source: str = "pickle", end: int | None = None) -> int:
    """Scan one pickle from ``stream``'s position to its STOP; return the position after STOP.

    ``end``: where the stream's data ends (default: its size). Nothing is unpickled and no payload is
    read; the caller seeks back to unpickle. Raises UnsafePickleError when a bound of the module is
    broken, and when the data is cut off or holds an unknown opcode.
    """
    scan = _Scan(stream, _stream_end(stream) if end is None else end, source)
    while True:
        code = stream.read(1)
        op = _OPS.get(code)
        if op is None:
            raise scan.refuse("?", "is unknown or the pickle is cut off", f"byte {code!r}", "a pickle opcode")
        scan.count += 1
        if scan.count > MAX_OPCODES:
            raise scan.refuse(op.name, "comes after too many opcodes", f"over {MAX_OPCODES}",
                              f"MAX_OPCODES = {MAX_OPCODES}")
        arg = None if op.arg is None else scan.argument(op)
        name = op.name
        if name in _LEAF_OPS and len(scan.stack) < MAX_STACK:
            scan.stack.append(_LEAF)  # the common case, kept short
        elif name == "STOP":
            _check_graph(scan)
            return stream.tell()
        else:
            _step(scan, name, arg)


def _stream_end(stream: BinaryIO) -> int:
    """The stream's size (a file's size from its descriptor, else by seeking to the end)."""
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
        return end


def _check_graph(scan: _Scan) -> None:
    """The result written out without sharing (containers changed after they were shared included):
    its size and depth within the bounds. Iterative; a cycle counts once."""
    if not scan.stack or scan.stack[-1] is _MARK:
        raise scan.refuse("STOP", "finds no result on the stack", "an empty stack", "a well-formed pickle")
    root: _Node = scan.stack[-1]  # type: ignore[assignment]
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    todo: list[tuple[_Node, bool]] = [(root, False)]
    while todo:
        node, done = todo.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            parts = [p for p in node.parts if id(p) in size]
            size[key] = min(1 + sum(size[id(p)] for p in parts), MAX_EXPANDED_NODES + 1)
            depth[key] = 1 + max((depth[id(p)] for p in parts), default=0) if node.parts else 0
            continue
        if key in size or key in on_path:
            continue
        on_path.add(key)
        todo.append((node, True))
        todo.extend((p, False) for p in node.parts if id(p) not in size and id(p) not in on_path)
    probe = _Node([])
    probe.size, probe.depth = size[id(root)], depth[id(root)]
    scan.check(probe, "STOP")
