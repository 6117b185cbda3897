"""``torch.save`` files checked within bounds before anything is allocated for them.

The legacy format (PyTorch before 1.6, and every tensor storage inside an NVlabs pickle) is five
pickles in a row: a magic number, the protocol version, system information, the object (its storages
are persistent ids ``("storage", FloatStorage, key, location, numel, None)``) and the list of storage
keys; then, for each key, an int64 element count and the raw little-endian bytes. PyTorch's own
reader reserves each storage at the size the object pickle claims before reading its bytes, so a
small file can reserve gigabytes: here every claim is checked against the bytes that follow and the
bounds of :mod:`~olam_edit.adapters.stylegan2.safety` first.

The zip format (PyTorch 1.6 and later) keeps each storage as an archive entry whose size PyTorch
checks; its entries are held to the same bounds before ``torch.load`` reads them.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from olam_edit.adapters.stylegan2.opscan import scan_pickle
from olam_edit.adapters.stylegan2.safety import (
    check_storage_bytes,
    check_view,
    clip,
    is_tensorflow_module,
    summary,
    tensorflow_pickle_error,
)
from olam_edit.errors import UnsafePickleError, WeightFileError, explain

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_STORAGE_MODULES = ("torch", "torch.cuda")  # a storage saved from the GPU names torch.cuda.FloatStorage


@dataclass(frozen=True)
class _StorageType:
    """What a storage class of the file resolves to: its element type only."""

    dtype: torch.dtype


@dataclass(frozen=True)
class StorageClaim:
    """A storage as the object pickle declares it: key, element type and element count."""

    key: str
    dtype: torch.dtype
    numel: int

    @property
    def nbytes(self) -> int:
        """Bytes the claim asks for."""
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class LoadedStorage:
    """A storage read from the file, as a flat tensor: [numel] of its dtype."""

    flat: torch.Tensor


class _HeaderUnpickler(pickle.Unpickler):
    """Reads the plain pickles around the object: numbers, dicts, strings; no global, no persistent id."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if is_tensorflow_module(module):
            raise tensorflow_pickle_error(self.source, module, name)
        raise UnsafePickleError(explain(f"{self.source}: the pickle asks to import {clip(module)}.{clip(name)}",
                                        expected="torch.save data (tensors and containers) only",
                                        fix="Nothing was run; only load checkpoints from sources you trust."))

    def persistent_load(self, pid: Any) -> Any:
        raise WeightFileError(explain(f"{self.source}: malformed torch.save header", got=summary(pid)))


class _StorageUnpickler(_HeaderUnpickler):
    """The object pickle of a storage: storage classes resolve to dtypes, persistent ids to claims."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file, source)
        self.claims: dict[str, StorageClaim] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module in _STORAGE_MODULES and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (type(pid) is tuple and len(pid) == 6 and pid[0] == "storage"):
            return super().persistent_load(pid)
        _, kind, key, location, numel, view = pid
        if (not isinstance(kind, _StorageType) or type(key) is not str or len(key) > 64
                or type(location) not in (str, bytes) or type(numel) is not int or numel < 0 or view is not None):
            raise WeightFileError(explain(f"{self.source}: malformed tensor storage record",
                                          got=f"key {summary(key)}, count {summary(numel)}"))
        claim = StorageClaim(key, kind.dtype, numel)
        if self.claims.setdefault(key, claim) != claim:
            raise WeightFileError(explain(f"{self.source}: two different records for one tensor storage",
                                          got=summary(key)))
        return claim


class _Stub:
    """Any object of a legacy checkpoint during its pre-flight: takes every construction step, keeps nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        """Accept an item (APPEND)."""

    def extend(self, items: Any) -> None:
        """Accept items (APPENDS)."""

    def add(self, item: Any) -> None:
        """Accept an item (ADDITEMS)."""


class _ScanUnpickler(_StorageUnpickler):
    """Pre-flight of a legacy checkpoint's object pickle: globals other than storage classes are stubs
    (nothing of the file's runs), and every ``_rebuild_tensor_v2`` view is checked against its claim."""

    def find_class(self, module: str, name: str) -> Any:
        if (module in _STORAGE_MODULES and name in STORAGE_DTYPES) or is_tensorflow_module(module):
            return super().find_class(module, name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._check_rebuild
        if module == "torch._utils" and name.startswith("_rebuild_") and not name.startswith("_rebuild_param"):
            raise WeightFileError(explain(f"{self.source}: a kind of tensor this loader does not read",
                                          got=f"torch._utils.{clip(name)}", expected="plain dense tensors"))
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and pid[:1] == ("storage",):
            return super().persistent_load(pid)
        return _Stub()

    def _check_rebuild(self, storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any) -> _Stub:
        if isinstance(storage, StorageClaim):
            check_view(storage.numel, offset, size, stride, source=self.source)
        return _Stub()


def _scanned_load(reader: _HeaderUnpickler, stream: BinaryIO, source: str) -> Any:
    """``reader.load()`` after :func:`~olam_edit.adapters.stylegan2.opscan.scan_pickle` checked the
    pickle at the stream's position within bounds."""
    start = stream.tell()
    scan_pickle(stream, source=source)
    stream.seek(start)
    return reader.load()


def _read_frame(stream: BinaryIO, unpickler: type[_StorageUnpickler], source: str) -> tuple[Any, list[StorageClaim]]:
    """The five pickles of the legacy format: the object and its storage claims in the keys' order."""
    magic = _scanned_load(_HeaderUnpickler(stream, source), stream, source)
    protocol = _scanned_load(_HeaderUnpickler(stream, source), stream, source)
    if type(magic) is not int or magic != torch.serialization.MAGIC_NUMBER or protocol != 1001:
        raise WeightFileError(explain(f"{source}: not a torch.save file (legacy format)",
                                      got=f"header {summary(magic)}", fix="Download the file again."))
    _scanned_load(_HeaderUnpickler(stream, source), stream, source)  # system info; bytes are little-endian
    reader = unpickler(stream, source)
    obj = _scanned_load(reader, stream, source)
    keys = _scanned_load(_HeaderUnpickler(stream, source), stream, source)
    if type(keys) is not list or not all(type(k) is str for k in keys) or sorted(keys) != sorted(reader.claims):
        raise WeightFileError(explain(f"{source}: the storage list does not match the tensors",
                                      got=summary(keys), expected=f"the {len(reader.claims)} keys the tensors use"))
    return obj, [reader.claims[k] for k in keys]


def _storage_nbytes(stream: BinaryIO, claim: StorageClaim, *, used: int, available: int, source: str) -> int:
    """Read a storage's int64 element count, check it against its claim and the bounds; its byte size."""
    head = stream.read(8)
    count = int.from_bytes(head, "little", signed=True) if len(head) == 8 else None
    if count != claim.numel:
        raise WeightFileError(explain(f"{source}: a tensor storage does not match its record",
                                      got="a truncated count" if count is None else f"{count} elements",
                                      expected=f"{claim.numel} elements", fix="Download the file again."))
    check_storage_bytes(claim.nbytes, used=used, available=available - 8, source=source)
    return claim.nbytes


def load_storage_blob(data: Any, *, used: int, source: str) -> LoadedStorage:
    """A storage from the bytes of ``torch.storage._load_from_bytes`` (how NVlabs pickles hold tensors).

    ``used``: storage bytes the file has loaded before (for the per-file bound). Exactly one storage;
    its bytes are read only after their count passed the checks. Little-endian hosts.
    """
    if type(data) not in (bytes, bytearray):
        raise WeightFileError(explain(f"{source}: malformed tensor storage", got=summary(data)))
    stream = io.BytesIO(data)
    obj, claims = _read_frame(stream, _StorageUnpickler, source)
    if len(claims) != 1 or obj is not claims[0]:
        raise WeightFileError(explain(f"{source}: malformed tensor storage", got=summary(obj),
                                      expected="exactly one storage"))
    claim = claims[0]
    nbytes = _storage_nbytes(stream, claim, used=used, available=len(data) - stream.tell(), source=source)
    start = stream.tell()
    raw = bytearray(memoryview(data)[start:start + nbytes])
    flat = torch.frombuffer(raw, dtype=claim.dtype) if nbytes else torch.empty(0, dtype=claim.dtype)  # [numel]
    return LoadedStorage(flat)


def check_torch_file(path: Path, *, source: str) -> None:
    """Pre-flight of a ``.pt`` before ``torch.load``: a zip's entries within the bounds, or a legacy
    file's storage claims matching its data (and within the bounds) with every tensor inside its storage.

    Raises WeightFileError (TensorFlowPickleError for a TensorFlow pickle); a truncated file raises
    what the reading raised (``zipfile.BadZipFile``, ``EOFError``, ``pickle.UnpicklingError``).
    """
    with open(path, "rb") as handle:
        head = handle.read(512)
        if head.startswith(b"PK\x03\x04"):
            _check_zip(handle, source)
        else:
            _refuse_tar(head, source)
            handle.seek(0)
            _check_legacy(handle, source)


def _check_zip(handle: BinaryIO, source: str) -> None:
    """Every archive entry (its stated uncompressed size) within the per-storage and per-file bounds, and
    every object pickle (data.pkl) through the opcode scan."""
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        used = 0
        for info in archive.infolist():
            check_storage_bytes(info.file_size, used=used, available=None, source=source)
            used += info.file_size
        for info in archive.infolist():
            if info.filename.endswith(".pkl"):  # data.pkl: the object pickle torch.load will read
                with archive.open(info) as entry:  # streamed: payloads are skipped, never held
                    scan_pickle(entry, source=source, end=info.file_size)


def _refuse_tar(head: bytes, source: str) -> None:
    """PyTorch reads a file whose first block is a tar header as the pre-0.4 tar format: refuse it."""
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return
    raise WeightFileError(explain(f"{source}: a tar-format torch checkpoint (PyTorch before 0.4)",
                                  expected="a zip or legacy torch.save file",
                                  fix="Load it with a trusted PyTorch and save its state dict again."))


def _check_legacy(handle: BinaryIO, source: str) -> None:
    """Walk a legacy file's storages without reading them: each count matches its claim and fits."""
    size = os.fstat(handle.fileno()).st_size
    _, claims = _read_frame(handle, _ScanUnpickler, source)
    used = 0
    for claim in claims:
        used += _storage_nbytes(handle, claim, used=used, available=size - handle.tell(), source=source)
        handle.seek(claim.nbytes, io.SEEK_CUR)
