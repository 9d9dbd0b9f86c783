"""The model slots of a tenant, named once: the control plane, the agent and the node use them."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["MODEL_SLOTS", "ModelSlot"]


class ModelSlot(StrEnum):
    """Which model of a tenant a bundle serves (equal to its plain string: ``"intent"``)."""

    INTENT = "intent"
    SENTIMENT = "sentiment"
    ENCODER = "encoder"


#: Every slot, in the order the CLI and errors list them.
MODEL_SLOTS: tuple[str, ...] = tuple(slot.value for slot in ModelSlot)
