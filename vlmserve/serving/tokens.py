"""``TokenService``: what a chat request with these messages would be billed as prompt tokens."""

from __future__ import annotations

from vlmserve.engine.types import PromptUsage
from vlmserve.protocol.tokens import TokenCountRequest
from vlmserve.serving.prepare import PromptPreparer


class TokenService:
    def __init__(self, preparer: PromptPreparer) -> None:
        self._preparer = preparer

    async def count(self, req: TokenCountRequest, tenant: str = "") -> PromptUsage:
        prepared = await self._preparer.prepare(req.model, req.messages, tenant)
        return await prepared.engine.count_tokens(prepared.prompt)
