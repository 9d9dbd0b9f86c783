"""One exception hierarchy for all of Kefu.

Adapters (CLI, gRPC, NATS, HTTP) translate these into user-facing answers; library code
raises them with ``raise ... from exc`` so the cause is kept for logs, never shown as a
stack trace to a user.

``KefuError``
    ``PermanentError`` — retrying will not help (bad input, bad config, tampered bundle).
        ``DatasetError`` — a labelled data file is unusable; names file and line.
        ``ConfigError`` — a config file is invalid; names file, line and field.
        ``BundleError`` — a model bundle is missing, truncated, tampered or untrusted.
            ``SignatureError`` — the manifest signature does not verify with a trusted key.
        ``ProviderUnavailable`` — an execution provider (TensorRT, CUDA) is absent.
    ``TemporaryError`` — may succeed later (a remote is unreachable, a resource is busy).
"""

from __future__ import annotations

from pathlib import Path


class KefuError(Exception):
    """Base of every error Kefu raises on purpose."""

    #: Process exit code the CLI uses for this error class.
    exit_code = 1


class PermanentError(KefuError):
    """Retrying the same operation will fail the same way."""


class TemporaryError(KefuError):
    """The operation may succeed if retried later."""

    exit_code = 75  # EX_TEMPFAIL


def _where(path: str | Path | None, line: int | None) -> str:
    if path is None:
        return ""
    return f"{path}:{line}: " if line is not None else f"{path}: "


class DatasetError(PermanentError):
    """A labelled dataset file cannot be used as given."""

    exit_code = 65  # EX_DATAERR

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        super().__init__(f"{_where(path, line)}{message}")


class ConfigError(PermanentError):
    """A configuration file is invalid."""

    exit_code = 78  # EX_CONFIG

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = _where(path, line)
        if field:
            where += f"field '{field}': "
        super().__init__(f"{where}{message}")


class BundleError(PermanentError):
    """A model bundle cannot be trusted or loaded; ``path`` names the offending file."""

    exit_code = 65

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{_where(path, None)}{message}")


class SignatureError(BundleError):
    """The bundle's manifest signature is missing, malformed or from an untrusted key."""


class ProviderUnavailable(PermanentError):
    """A requested ONNX Runtime execution provider is not available on this machine."""

    exit_code = 69  # EX_UNAVAILABLE
