"""SecondMoment: the uncentred key statistic C = E[k k^T], accumulated in float64.

It keeps the sum of outer products and the count, so partial results merge exactly (sum and count),
resume, and all-reduce across processes. Files are safetensors with a JSON manifest that says what
the statistic depends on; :meth:`SecondMoment.load` refuses a file whose fingerprint differs from
the one the caller expects.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open
from torch import Tensor

from olam_edit.errors import (
    NonFiniteError,
    ShapeMismatchError,
    SingularStatisticError,
    StaleStatisticsError,
    StatsFileError,
    explain,
)
from olam_edit.files import validate as V
from olam_edit.files.atomic import atomic_save_safetensors
from olam_edit.files.validate import summary

STATS_SCHEMA = 2  # 2: the manifest carries the content digest of sum and count
MAX_STATS_DIM = 1 << 15  # keys of up to 32768 dimensions (a sum of 8 GB); real layers have <= 4096
SYMMETRY_TOL = 1e-9  # max |S - S^T| relative to max |S| (X^T X is symmetric up to BLAS round-off)


class SecondMoment:
    """Running sum of k k^T over keys of dimension ``dim`` (float64) and their count."""

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        self.dim = int(dim)
        self.sum = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=device)  # [d, d]
        self.count = 0
        self.manifest: dict[str, Any] = {}

    def add(self, keys: Tensor, chunk: int | None = None) -> SecondMoment:
        """Accumulate keys ``[n, dim]`` (any float dtype) as X^T X in float64, ``chunk`` rows at a time.

        NaN or Inf anywhere in ``keys`` raises NonFiniteError and leaves the statistic unchanged
        (a non-finite key makes the diagonal of X^T X non-finite, so the check costs nothing).
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ShapeMismatchError(
                explain("keys have the wrong shape", got=tuple(keys.shape), expected=f"[n, {self.dim}]")
            )
        chunk = chunk or max(1024, (1 << 25) // max(self.dim, 1))  # about 256 MB of float64 per chunk
        total = torch.zeros_like(self.sum)  # [d, d]
        for start in range(0, keys.shape[0], chunk):
            X = keys[start : start + chunk].to(self.sum.device, torch.float64)  # [m, d]
            total += X.T @ X
        if not torch.isfinite(total.diagonal()).all():
            raise NonFiniteError(explain("keys contain NaN or Inf", fix="Check the model's inputs."))
        self.sum += total
        self.count += int(keys.shape[0])
        return self

    def merge(self, other: SecondMoment) -> SecondMoment:
        """Add another statistic of the same dimension (exact: sums and counts add)."""
        if other.dim != self.dim:
            raise ShapeMismatchError(explain("cannot merge statistics", got=other.dim, expected=self.dim))
        self.sum += other.sum.to(self.sum.device)
        self.count += other.count
        return self

    def moment(self) -> Tensor:
        """C = sum / count, float64 ``[dim, dim]``."""
        if self.count == 0:
            raise SingularStatisticError(
                explain("no keys were accumulated", fix="Collect statistics over at least one sample.")
            )
        return self.sum / self.count

    def all_reduce(self) -> SecondMoment:
        """Sum ``sum`` and ``count`` over every process of an initialised torch.distributed group."""
        import torch.distributed as dist

        dist.all_reduce(self.sum)
        n = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        dist.all_reduce(n)
        self.count = int(n.item())
        return self

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path, manifest: dict[str, Any] | None = None) -> Path:
        """Write ``path`` atomically: tensors ``sum`` and ``count`` plus the JSON manifest.

        The manifest carries ``digest``, the :func:`stats_digest` of the sum and count, which
        :meth:`load` recomputes (a flipped bit in the tensor data is refused, not used).
        """
        S = self.sum.cpu().contiguous()  # [d, d]
        meta = {**self.manifest, **(manifest or {}), "schema_version": STATS_SCHEMA, "dim": self.dim,
                "digest": stats_digest(S, self.count)}
        self.manifest = meta
        tensors = {"sum": S, "count": torch.tensor([self.count], dtype=torch.int64)}
        return atomic_save_safetensors(tensors, Path(path), {"olam_edit_stats": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, *, expect_fingerprint: str | None = None) -> SecondMoment:
        """Read a statistics file; with ``expect_fingerprint``, refuse one made for something else.

        Everything is checked before use (StatsFileError with got / expected / fix): the manifest's
        schema (:func:`check_stats_manifest`), tensor names, dtypes and shapes (from the header,
        before any tensor is read), ``count > 0``, a finite, symmetric (to SYMMETRY_TOL), non-zero
        sum, and the digest of sum and count.
        """
        meta, S, count = _read_stats_file(Path(path))
        got = meta.get("fingerprint")
        if expect_fingerprint is not None and got != expect_fingerprint:
            raise StaleStatisticsError(
                explain(
                    f"statistics in {path} were collected for something else",
                    got=summary(got),
                    expected=expect_fingerprint,
                    fix="Recollect them (olam-edit stats) or point at the matching file.",
                )
            )
        sm = cls(int(meta["dim"]))
        sm.sum.copy_(S)
        sm.count = count
        sm.manifest = meta
        return sm

    def __repr__(self) -> str:
        return f"SecondMoment(dim={self.dim}, count={self.count})"


def stats_digest(S: Tensor, count: int) -> str:
    """SHA-256 (hex) of a statistic's content: the count (int64) and the float64 sum ``[d, d]``."""
    h = hashlib.sha256(b"olam-edit second moment\0")
    h.update(struct.pack("<q", int(count)))
    arr = S.detach().to("cpu", torch.float64).contiguous().numpy()  # [d, d]
    h.update(struct.pack("<q", arr.shape[0]))
    h.update(arr.astype("<f8", copy=False).data)
    return h.hexdigest()


_EXPECTED = "a safetensors file written by SecondMoment.save (olam-edit stats)"
_RECOLLECT = "Collect the statistics again (olam-edit stats); a cache entry is recomputed automatically."


def check_stats_manifest(meta: object, where: str) -> dict[str, Any]:
    """The one check of a statistics manifest (the JSON in a file's ``olam_edit_stats`` metadata).

    Required: ``schema_version`` (int, 2..STATS_SCHEMA: older files carry no digest), ``dim`` (int,
    1..MAX_STATS_DIM), ``digest`` (64 hex characters). Optional: ``fingerprint``, ``layer``,
    ``olam_edit_version`` (strings or null), ``batches_done`` (int >= 0), ``world_size`` (int >= 1).
    Returns ``meta`` unchanged; anything else raises StatsFileError.
    """
    try:
        return _check_fields(meta, where)
    except StatsFileError as e:
        if e.fix:
            raise
        raise StatsFileError(e.what, got=e.got, expected=e.expected, fix=_RECOLLECT) from None


def _check_fields(meta: object, where: str) -> dict[str, Any]:
    E = StatsFileError
    if not isinstance(meta, dict):
        raise E(explain(f"{where} has no statistics manifest", got=summary(meta), expected="a JSON object",
                        fix=_RECOLLECT))
    version = V.field(meta, "schema_version", int, E, where=where)
    if version > STATS_SCHEMA:
        raise E(explain("statistics schema is newer", got=version, expected=STATS_SCHEMA, fix="Upgrade olam-edit."))
    if version < STATS_SCHEMA:
        raise E(explain(f"{where} was written by an older olam-edit without a content digest", got=version,
                        expected=STATS_SCHEMA, fix=_RECOLLECT))
    V.number(V.field(meta, "dim", int, E, where=where), E, where=f"{where}.dim", lo=1, hi=MAX_STATS_DIM, integer=True)
    digest = V.text(V.field(meta, "digest", str, E, where=where), E, where=f"{where}.digest", max_len=64)
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise V.fail(E, f"{where}.digest", digest, "64 lowercase hex characters", _RECOLLECT)
    for key in ("fingerprint", "layer", "olam_edit_version"):
        value = V.field(meta, key, (str, type(None)), E, where=where, required=False)
        if value is not None:
            V.text(value, E, where=f"{where}.{key}")
    for key, lo in (("batches_done", 0), ("world_size", 1)):
        value = V.field(meta, key, int, E, where=where, required=False)
        if value is not None:
            V.number(value, E, where=f"{where}.{key}", lo=lo, hi=1 << 62, integer=True)
    return meta


def _read_stats_file(path: Path) -> tuple[dict[str, Any], Tensor, int]:
    """Parse and validate a statistics file: manifest, names, dtypes, shapes, then the content."""
    V.regular_file(path, StatsFileError)  # a FIFO would block safe_open forever
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("olam_edit_stats")
            header = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
            meta = None if raw is None else _parse_manifest(raw, f"{path} manifest")
            if _layout_ok(meta, header):  # read the tensors only once their header is known to be ours
                S, c = f.get_tensor("sum"), f.get_tensor("count")  # [d, d] float64, [1] int64
    except (SafetensorError, OSError) as e:
        raise StatsFileError(explain(f"cannot read statistics file {path}", got=str(e)[:160], expected=_EXPECTED,
                                     fix=_RECOLLECT)) from e
    if raw is None:
        raise StatsFileError(explain(f"{path} is not an olam-edit statistics file", got="no statistics manifest",
                                     expected=_EXPECTED, fix="Point at a statistics file, not an edit or model file."))
    meta = check_stats_manifest(meta, str(path))
    if not _layout_ok(meta, header):
        d = meta["dim"]
        raise StatsFileError(explain(f"statistics file {path} is inconsistent", got=str(header)[:200],
                                     expected=f"sum F64 [{d}, {d}] and count I64 [1]", fix=_RECOLLECT))
    count = int(c[0])
    _check_content(S, count, meta, path)
    return meta, S, count


def _parse_manifest(raw: str, where: str) -> Any:
    """The manifest's JSON (UTF-8, at most 16 levels deep), errors carrying the fix."""
    try:
        return V.parse_json(raw, StatsFileError, where=where, max_depth=16)
    except StatsFileError as e:
        raise StatsFileError(e.what, got=e.got or "unparseable JSON", expected=e.expected or "a JSON object",
                             fix=_RECOLLECT) from None


def _layout_ok(meta: object, header: dict[str, tuple[str, tuple[int, ...]]]) -> bool:
    """True when ``header`` holds exactly ``sum`` F64 ``[dim, dim]`` and ``count`` I64 ``[1]``."""
    d = meta.get("dim") if isinstance(meta, dict) else None
    if not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= MAX_STATS_DIM:
        return False
    return header == {"sum": ("F64", (d, d)), "count": ("I64", (1,))}


def _check_content(S: Tensor, count: int, meta: dict[str, Any], path: Path) -> None:
    """count > 0; S finite, symmetric to SYMMETRY_TOL, non-zero with a non-negative diagonal; digest."""
    def bad(what: str, got: object, expected: str) -> StatsFileError:
        return StatsFileError(explain(f"statistics file {path} is corrupt: {what}", got=got, expected=expected,
                                      fix=_RECOLLECT))

    if count <= 0:
        raise bad("the key count is not positive", count, "count > 0")
    if not bool(torch.isfinite(S).all()):
        raise bad("the sum contains NaN or Inf", f"{int((~torch.isfinite(S)).sum())} non-finite entries",
                  "finite numbers")
    scale = float(S.abs().max())
    if scale == 0.0 or float(S.diagonal().min()) < 0:
        raise bad("the sum is zero or has a negative diagonal", f"max |sum| = {scale:g}",
                  "a sum of outer products k k^T")
    asym = float((S - S.T).abs().max()) / scale
    if asym > SYMMETRY_TOL:
        raise bad("the sum is not symmetric", f"max |S - S^T| / max |S| = {asym:.3g}", f"at most {SYMMETRY_TOL:g}")
    if stats_digest(S, count) != meta["digest"]:
        raise bad("its content does not match its digest", "a different sum or count",
                  "the digest written by SecondMoment.save")
