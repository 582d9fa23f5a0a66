"""Bearer API keys: off when no key is configured; the key's hash names the tenant."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from vlmserve.errors import AuthenticationError


class KeyChecker:
    def __init__(self, api_keys: tuple[str, ...]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in api_keys)

    def tenant(self, request: Request) -> str:
        """The caller's tenant id ("" when authentication is off); raises on a bad key."""
        if not self._digests:
            return ""
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError(
                "Missing API key: send the header 'Authorization: Bearer <API key>'."
            )
        digest = hashlib.sha256(key.strip().encode()).digest()
        if not any(hmac.compare_digest(digest, d) for d in self._digests):
            raise AuthenticationError("Invalid API key.")
        return digest.hex()[:16]
