"""``TokenService``: what a chat request with this body would be billed as prompt tokens.

The body is checked as chat checks it (the same 400s), and the tools section the prompt gets
from ``tools`` is counted, as chat bills it.
"""

from __future__ import annotations

from vlmserve.engine.types import PromptUsage
from vlmserve.protocol.tokens import TokenCountRequest
from vlmserve.serving.prepare import PromptPreparer
from vlmserve.serving.tools import check_tool_history, output_constraints


class TokenService:
    def __init__(self, preparer: PromptPreparer) -> None:
        self._preparer = preparer

    async def count(self, req: TokenCountRequest, tenant: str = "") -> PromptUsage:
        constraints = output_constraints(req)
        check_tool_history(req.messages)
        prepared = await self._preparer.prepare(req.model, req.messages, tenant)
        return await prepared.engine.count_tokens(prepared.prompt, constraints.tools or ())
