"""SecondMoment: the uncentred key statistic C = E[k k^T], accumulated in float64.

It keeps the sum of outer products and the count, so partial results merge exactly (sum and count),
resume, and all-reduce across processes. Files are safetensors with a JSON manifest that says what
the statistic depends on; :meth:`SecondMoment.load` refuses a file whose fingerprint differs from
the one the caller expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor

from olam_edit.errors import (
    NonFiniteError,
    ShapeMismatchError,
    SingularStatisticError,
    StaleStatisticsError,
    StatsFileError,
    explain,
)
from olam_edit.files.atomic import atomic_save_safetensors

STATS_SCHEMA = 1


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
        """Write ``path`` atomically: tensors ``sum`` and ``count`` plus the JSON manifest."""
        meta = {**self.manifest, **(manifest or {}), "schema_version": STATS_SCHEMA, "dim": self.dim}
        self.manifest = meta
        tensors = {"sum": self.sum.cpu().contiguous(), "count": torch.tensor([self.count], dtype=torch.int64)}
        return atomic_save_safetensors(tensors, Path(path), {"olam_edit_stats": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path, *, expect_fingerprint: str | None = None) -> SecondMoment:
        """Read a statistics file; with ``expect_fingerprint``, refuse one made for something else."""
        meta, tensors = _read_stats_file(Path(path))
        got = meta.get("fingerprint")
        if expect_fingerprint is not None and got != expect_fingerprint:
            raise StaleStatisticsError(
                explain(
                    f"statistics in {path} were collected for something else",
                    got=got,
                    expected=expect_fingerprint,
                    fix="Recollect them (olam-edit stats) or point at the matching file.",
                )
            )
        sm = cls(int(meta["dim"]))
        sm.sum.copy_(tensors["sum"])
        sm.count = int(tensors["count"][0])
        sm.manifest = meta
        return sm

    def __repr__(self) -> str:
        return f"SecondMoment(dim={self.dim}, count={self.count})"


_EXPECTED = "a safetensors file written by SecondMoment.save (olam-edit stats)"


def _read_stats_file(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Parse and validate a statistics file: names, dtypes, shapes, schema."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("olam_edit_stats", "null"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise StatsFileError(explain(f"cannot read statistics file {path}", got=str(e), expected=_EXPECTED,
                                     fix="Collect the statistics again (olam-edit stats).")) from e
    if not isinstance(meta, dict) or "dim" not in meta:
        raise StatsFileError(explain(f"{path} is not an olam-edit statistics file", got="no statistics manifest",
                                     expected=_EXPECTED, fix="Point at a statistics file, not an edit or model file."))
    if int(meta.get("schema_version", 0)) > STATS_SCHEMA:
        raise StatsFileError(
            explain("statistics schema is newer", got=meta.get("schema_version"), expected=STATS_SCHEMA,
                    fix="Upgrade olam-edit.")
        )
    d = int(meta["dim"])
    s, c = tensors.get("sum"), tensors.get("count")
    if s is None or c is None or s.shape != (d, d) or s.dtype != torch.float64 or c.shape != (1,):
        raise StatsFileError(
            explain(f"statistics file {path} is inconsistent", got={k: tuple(v.shape) for k, v in tensors.items()},
                    expected=f"sum float64 [{d}, {d}] and count [1]")
        )
    return meta, tensors
