"""Error classes of olam-edit.

Each class also inherits the builtin a caller would expect, so ``except KeyError`` and friends keep
working. Messages say what was got, what was expected and how to fix it; build them with
:func:`explain`.
"""

from __future__ import annotations


def explain(what: str, *, got: object = None, expected: object = None, fix: str | None = None) -> str:
    """Format an error message as ``what (got ..., expected ...). fix``."""
    parts = [what]
    detail = []
    if got is not None:
        detail.append(f"got {got}")
    if expected is not None:
        detail.append(f"expected {expected}")
    if detail:
        parts.append(f"({'; '.join(detail)})")
    text = " ".join(parts)
    return f"{text}. {fix}" if fix else text


class OlamEditError(Exception):
    """Base class of every error this package raises on purpose."""


class LayerNotFoundError(OlamEditError, KeyError):
    """A layer name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnsupportedLayerError(OlamEditError, TypeError):
    """A layer exists but cannot be edited (kind, groups, missing weight...)."""


class ShapeMismatchError(OlamEditError, ValueError):
    """A tensor, mask or file entry of the wrong shape."""


class DTypeMismatchError(OlamEditError, ValueError):
    """A tensor or file entry of the wrong dtype."""


class NonFiniteError(OlamEditError, ValueError):
    """NaN or Inf where finite numbers are required."""


class SingularStatisticError(OlamEditError, ValueError):
    """A second moment too degenerate to whiten or solve with."""


class EmptySelectionError(OlamEditError, ValueError):
    """A context, copy or paste selection that selects nothing."""


class BaseMismatchError(OlamEditError, ValueError):
    """An edit made for another base model (layer fingerprint differs)."""


class EditStateError(OlamEditError, RuntimeError):
    """Applying an edit twice, or reverting one that is not applied."""


class EditFileError(OlamEditError, ValueError):
    """An edit or statistics file that is truncated, inconsistent or foreign."""


class WeightFileError(OlamEditError, ValueError):
    """A model weight file that is unreadable or has missing, extra or malformed entries."""


class SchemaVersionError(EditFileError):
    """A file written by a newer schema than this version understands."""


class StaleStatisticsError(OlamEditError, ValueError):
    """Statistics whose fingerprint does not match what they are used with."""


class UnsafePickleError(OlamEditError, ValueError):
    """A pickle that asks to import or run code the safe loader does not allow."""


class RequestError(OlamEditError, ValueError):
    """An edit request that is malformed (seed, mask, layer, model)."""


class OutputExistsError(OlamEditError, FileExistsError):
    """An output folder that already exists and would be overwritten."""


class ChecksumMismatchError(EditFileError):
    """A file whose bytes differ from the checksum its folder or Hub repo records for it."""


class HubError(OlamEditError, OSError):
    """A Hugging Face Hub operation that failed (server error, unexpected answer)."""


class HubAuthError(HubError, PermissionError):
    """A missing or invalid token, or a token without the access the operation needs."""


class HubNotFoundError(HubError, FileNotFoundError):
    """A repo, revision or file that does not exist on the Hub."""


class HubConnectionError(HubError, ConnectionError):
    """The Hub could not be reached (network error, or offline mode without a cached copy)."""


class TokenAlignmentError(RequestError):
    """A text rule whose source tokens cannot be found, in order, among the destination's tokens."""


class UnsupportedModelError(OlamEditError, TypeError):
    """A model or pipeline that lacks what an operation needs (a pipeline without a UNet, say)."""


class LoraExportError(OlamEditError, ValueError):
    """An edit that cannot be written as a LoRA (a layer PEFT cannot wrap, an unknown format)."""
