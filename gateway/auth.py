"""Bearer tokens with roles. ``reader`` may call read-only RPCs, ``operator`` everything."""

from __future__ import annotations

import hmac

from gateway.errors import PermissionDenied, Unauthenticated
from gateway.settings import TokenSettings

_RANK = {"reader": 0, "operator": 1}


class TokenAuthority:
    def __init__(self, tokens: tuple[TokenSettings, ...]) -> None:
        self._tokens = [(t.token.encode(), t.name, t.role) for t in tokens]

    def authorize(self, authorization: str | None, role: str) -> str:
        """Return the token's name if it grants ``role``; raise otherwise.

        Compares every configured token in constant time, so timing does not reveal which
        prefix matched.
        """
        if not authorization:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        presented = value.strip().encode()
        match: tuple[str, str] | None = None
        for token, name, token_role in self._tokens:
            if hmac.compare_digest(token, presented):
                match = (name, token_role)
        if match is None:
            raise Unauthenticated("invalid token")
        name, token_role = match
        if _RANK[token_role] < _RANK[role]:
            raise PermissionDenied(f"token '{name}' has role '{token_role}'; this needs '{role}'")
        return name
