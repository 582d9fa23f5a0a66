"""The error envelope clients see: ``{"error": {"message", "type", "code", "param"}}``."""

from __future__ import annotations

from vlmserve.protocol.common import WireModel


class ErrorDetail(WireModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(WireModel):
    error: ErrorDetail
