"""Base model for every wire object: unknown request fields are ignored, as the hosted API does;
``NaN`` and ``Infinity`` (which Python's JSON parser accepts) are never a number."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)
