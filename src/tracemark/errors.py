"""One exception tree for the whole package.

Every error tracemark raises on purpose is a :class:`TracemarkError`; each subclass names
a problem a user can act on, and its message says what to do next.
"""

from __future__ import annotations


class TracemarkError(Exception):
    """Base class of every error tracemark raises on purpose."""


class KeyFileError(TracemarkError):
    """A watermark key file cannot be read: corrupt, truncated, or of an unknown format."""


class WrongPassphraseError(KeyFileError):
    """The passphrase does not open this encrypted file."""


class SecretMissingError(WrongPassphraseError):
    """A passphrase or token is needed and none was given: no environment variable, no file, no terminal to ask on."""


class InvalidOptionError(TracemarkError):
    """A command-line option has a value the command cannot use; the message names the option and what to give."""


class TamperedError(TracemarkError):
    """Content does not match its recorded hash or signature."""


class FormatVersionError(TracemarkError):
    """A file declares a format version this release cannot read."""


class ShapeMismatchError(TracemarkError):
    """Inputs do not have the shape the model (or key) expects."""


class ClassCountMismatchError(TracemarkError):
    """The model's number of output classes differs from the key's."""


class UnsafeFileError(TracemarkError):
    """A suspect file would need unpickling (arbitrary code) to load; tracemark refuses."""


class ModelFileError(TracemarkError):
    """A model file cannot be loaded (missing, unknown format, or missing architecture)."""


class WeightsMismatchError(ModelFileError):
    """A weights file does not fit the module it is loaded into (missing or unexpected keys, other shapes)."""


class ModelFactoryError(TracemarkError):
    """A ``--arch package.module:factory`` import string cannot build a model."""


class FactoryStringError(ModelFactoryError):
    """An ``--arch`` value is neither a built-in architecture nor of the form ``package.module:factory``."""


class FactoryImportError(ModelFactoryError):
    """The module named by an ``--arch`` import string does not import."""


class FactoryNotFoundError(ModelFactoryError):
    """The module of an ``--arch`` import string has no attribute of the factory's name."""


class FactoryResultError(ModelFactoryError):
    """A factory cannot be called as documented, or does not return a ``torch.nn.Module``."""


class TargetError(TracemarkError):
    """A target (local model or remote API) could not answer."""


class TargetUnreachableError(TargetError):
    """A remote target could not be reached (connection refused, DNS, time-out)."""


class TargetNotFoundError(TargetUnreachableError):
    """A remote target's host name does not resolve, or nothing accepts connections there; retrying cannot help."""


class TargetResponseError(TargetError):
    """A remote target answered, but not with what was expected (HTTP error, non-JSON, missing field)."""


class QueryBudgetExceededError(TargetError):
    """A target's query budget is spent."""


class DatasetError(TracemarkError):
    """A dataset cannot be found or loaded."""


class DatasetItemError(DatasetError):
    """A dataset's items are not ``(image, label)`` pairs with a floating-point image and an integer label."""


class DeviceUnavailableError(TracemarkError):
    """The requested torch device (``cuda``, ``cuda:3``, ``mps``) is not present on this machine."""


class EmbeddingError(TracemarkError):
    """Embedding did not reach its goals within the budget it was given."""


class SignatureError(TamperedError):
    """A signature does not verify under the expected public key."""


class LedgerError(TracemarkError):
    """A ledger cannot be read or appended to."""


class ChainBrokenError(LedgerError):
    """A ledger's hash chain is broken: an entry was edited, dropped, reordered or truncated."""


class TimestampError(TracemarkError):
    """An RFC 3161 time-stamp could not be obtained or does not verify."""


class BundleError(TracemarkError):
    """An evidence bundle is malformed or fails verification."""


class ArchiveError(TracemarkError):
    """A zip archive from someone else cannot be read (corrupt, truncated, not a zip)."""


class ArchiveBoundsError(ArchiveError):
    """A zip archive declares or inflates to more members or bytes than allowed (a zip bomb); refused unread."""


class ArchiveFeatureError(ArchiveError):
    """A zip archive uses a feature tracemark refuses (encryption, an unsupported compression method)."""


class PackageError(TracemarkError):
    """A protected model package cannot be built or opened."""


class LicenceError(PackageError):
    """A package's licence forbids this use (expired, not yet valid, wrong device)."""


class DeviceError(PackageError):
    """The device-bound key cannot be unwrapped here (TPM absent, PCRs changed, machine differs)."""


class KdfBoundsError(TracemarkError):
    """A file asks for key-derivation parameters outside the accepted bounds (malformed, or too costly)."""


__all__ = [
    "TracemarkError",
    "KeyFileError",
    "WrongPassphraseError",
    "SecretMissingError",
    "InvalidOptionError",
    "TamperedError",
    "FormatVersionError",
    "ShapeMismatchError",
    "ClassCountMismatchError",
    "UnsafeFileError",
    "ModelFileError",
    "WeightsMismatchError",
    "ModelFactoryError",
    "FactoryStringError",
    "FactoryImportError",
    "FactoryNotFoundError",
    "FactoryResultError",
    "TargetError",
    "TargetUnreachableError",
    "TargetNotFoundError",
    "TargetResponseError",
    "QueryBudgetExceededError",
    "DatasetError",
    "DatasetItemError",
    "DeviceUnavailableError",
    "EmbeddingError",
    "SignatureError",
    "LedgerError",
    "ChainBrokenError",
    "TimestampError",
    "BundleError",
    "ArchiveError",
    "ArchiveBoundsError",
    "ArchiveFeatureError",
    "PackageError",
    "LicenceError",
    "DeviceError",
    "KdfBoundsError",
]
