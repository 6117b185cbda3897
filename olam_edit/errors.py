"""Error classes of olam-edit: one class per kind of failure, all under :class:`OlamEditError`.

Each class also inherits the builtin a caller would expect, so ``except KeyError`` and friends keep
working. Every error carries the structured fields ``got``, ``expected`` and ``fix`` (None when
absent) besides its one-line message. Build a message with :func:`explain` (the error picks the
fields up from it) or pass them to the class: ``StatsFileError("bad file", got=..., fix=...)``.

Kinds of failure: an edit file or folder (:class:`EditFileError`), a model weight or checkpoint
file (:class:`WeightFileError`), a statistics file (:class:`StatsFileError`), a malformed request
(:class:`RequestError`), a generator no adapter can load (:class:`GeneratorLoadError`), and the
more specific classes below.
"""

from __future__ import annotations


class Explanation(str):
    """A message built by :func:`explain`: the text itself, keeping its parts as attributes.

    ``what`` is the headline; ``got``, ``expected`` and ``fix`` are the raw values (None when absent).
    It is a ``str``, so it goes wherever a message does (builtin exceptions included).
    """

    what: str
    got: object
    expected: object
    fix: str | None

    def __new__(cls, text: str, what: str | None = None, got: object = None, expected: object = None,
                fix: str | None = None) -> Explanation:
        self = super().__new__(cls, text)
        self.what = text if what is None else what
        self.got, self.expected, self.fix = got, expected, fix
        return self


def explain(what: str, *, got: object = None, expected: object = None, fix: str | None = None) -> Explanation:
    """Format an error message as ``what (got ..., expected ...). fix``, keeping the parts."""
    parts = [what]
    detail = []
    if got is not None:
        detail.append(f"got {got}")
    if expected is not None:
        detail.append(f"expected {expected}")
    if detail:
        parts.append(f"({'; '.join(detail)})")
    text = " ".join(parts)
    return Explanation(f"{text}. {fix}" if fix else text, what, got, expected, fix)


class OlamEditError(Exception):
    """Base class of every error this package raises on purpose.

    ``OlamEditError(message, got=, expected=, fix=)``: ``message`` is a plain headline or an
    :class:`Explanation`; keywords given here override the explanation's fields and the message is
    rebuilt from them. Attributes ``what``, ``got``, ``expected``, ``fix``; ``str(error)`` is the
    full message.
    """

    what: str
    got: object
    expected: object
    fix: str | None

    def __init__(self, message: object = "", *args: object, got: object = None, expected: object = None,
                 fix: str | None = None) -> None:
        base = message if isinstance(message, Explanation) else explain(str(message))
        self.what = base.what
        self.got = base.got if got is None else got
        self.expected = base.expected if expected is None else expected
        self.fix = base.fix if fix is None else fix
        given = (got, expected, fix) != (None, None, None)
        text = explain(self.what, got=self.got, expected=self.expected, fix=self.fix) if given else base
        super().__init__(str(text), *args)


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
    """An edit file or folder (edit.safetensors, its config, its checksums) that is truncated, inconsistent
    or foreign."""


class WeightFileError(OlamEditError, ValueError):
    """A model weight or checkpoint file (StyleGAN2 checkpoints and configs, the face DCGAN weights) that is
    unreadable, of an unknown or unsupported format, or has missing, extra or malformed entries."""


class StatsFileError(OlamEditError, ValueError):
    """A statistics file (SecondMoment) that is unreadable, foreign, inconsistent or of a newer schema."""


class SchemaVersionError(EditFileError):
    """An edit file written by a newer schema than this version understands."""


class StaleStatisticsError(OlamEditError, ValueError):
    """Statistics whose fingerprint does not match what they are used with."""


class UnsafePickleError(WeightFileError):
    """A pickle that asks to import or run code the safe loader does not allow."""


class RequestError(OlamEditError, ValueError):
    """An edit request that is malformed (seed, mask, layer, model)."""


class GeneratorLoadError(OlamEditError, ValueError):
    """A generator that cannot be loaded: an unknown name, or a path or Hub id no adapter recognises."""


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
