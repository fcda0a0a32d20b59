"""What every part of the protocol builds on: strict request models and the names' rules."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

POOL_NAME = r"^[A-Za-z0-9_.-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_dotdot(value: str) -> str:
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    return value
