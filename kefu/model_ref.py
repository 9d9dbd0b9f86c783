"""Model slots and model version references, named once: the control plane, the agent and the
node use them.

A reference travels from the control plane to inference as one type, :class:`VersionRef`
(``name@version``): an assignment stores its text, the desired document's
:class:`~kefu.wire.BundleRef` and the tenant config's :class:`~kefu.config.ModelRef` expose it
as ``.version_ref``. :func:`validate_name` and :func:`validate_ref` are the one validation of
model names and versions (also used for bundle manifests and store paths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from kefu.errors import BundleError

__all__ = [
    "MODEL_SLOTS",
    "ModelSlot",
    "VersionRef",
    "format_ref",
    "validate_name",
    "validate_ref",
]


class ModelSlot(StrEnum):
    """Which model of a tenant a bundle serves (equal to its plain string: ``"intent"``)."""

    INTENT = "intent"
    SENTIMENT = "sentiment"
    ENCODER = "encoder"


#: Every slot, in the order the CLI and errors list them.
MODEL_SLOTS: tuple[str, ...] = tuple(slot.value for slot in ModelSlot)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_name(name: object, *, what: str = "name") -> str:
    """A model name or version: 1-64 chars of a-z, 0-9, '.', '_', '-', starting with a letter
    or digit (so never a path, ``..`` or hidden file). Raises :class:`BundleError`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise BundleError(
            f"invalid model {what} {shown}: use 1-64 chars of a-z, 0-9, '.', '_', '-' "
            f"starting with a letter or digit / 模型{'名称' if what == 'name' else '版本'}无效"
        )
    return name


def validate_ref(ref: str) -> tuple[str, str]:
    """``name`` or ``name@version`` → (name, version or ""), both validated."""
    name, sep, version = ref.partition("@")
    validate_name(name)
    if sep:
        validate_name(version, what="version")
    return name, version


def format_ref(name: str, version: str | None) -> str:
    """``name@version`` (``name`` alone without a version); no validation (for display and
    dictionary keys of documents already read)."""
    return f"{name}@{version}" if version else name


@dataclass(frozen=True, order=True)
class VersionRef:
    """One model version: ``name@version`` (``version`` "" = not yet resolved: the newest)."""

    name: str
    version: str = ""

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.version:
            validate_name(self.version, what="version")

    @classmethod
    def parse(cls, text: str, *, require_version: bool = False) -> VersionRef:
        """``name`` or ``name@version``; with ``require_version`` a bare name is refused."""
        name, version = validate_ref(text)
        if require_version and not version:
            raise BundleError(
                f"model reference {text!r} needs a version (name@version) / 模型引用缺少版本"
            )
        return cls(name, version)

    @property
    def ref(self) -> str:
        return format_ref(self.name, self.version)

    def __str__(self) -> str:
        return self.ref
