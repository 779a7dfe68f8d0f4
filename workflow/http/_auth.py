"""Bearer tokens and their scopes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

__all__ = ["ADMIN", "DISPATCH", "READ", "SCOPES", "Tokens", "tokens_from_env"]

READ = "read"
ADMIN = "admin"
DISPATCH = "dispatch"
SCOPES = frozenset({READ, ADMIN, DISPATCH})
MIN_LENGTH = 16
"""The shortest token accepted: ``secrets.token_urlsafe(32)`` makes 43 characters."""


class Tokens:
    """The configured tokens, kept as SHA-256 digests. :meth:`scopes` compares a presented
    token with every configured one (``hmac.compare_digest`` over equal-length digests, no
    early exit), so the time taken tells nothing about which token, or how much of one,
    matched."""

    def __init__(self, tokens: Mapping[str, Iterable[str]]) -> None:
        if not tokens:
            raise ValueError(
                "no tokens: every endpoint but /healthz needs one; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        self._digests: list[tuple[bytes, frozenset[str]]] = []
        for token, scopes in tokens.items():
            if not isinstance(token, str) or len(token) < MIN_LENGTH:
                raise ValueError(f"a token needs at least {MIN_LENGTH} characters")
            if any(c.isspace() or c in ",:" for c in token) or not token.isascii():
                raise ValueError("a token is printable ASCII without spaces, ',' or ':'")
            given = frozenset([scopes] if isinstance(scopes, str) else scopes)
            unknown = given - SCOPES
            if unknown or not given:
                raise ValueError(
                    f"token scopes must be some of {sorted(SCOPES)}, got {sorted(given)}"
                )
            if ADMIN in given:
                given |= {READ}
            self._digests.append((_digest(token), given))

    def scopes(self, authorization: str | None) -> frozenset[str] | None:
        """The scopes of the ``Authorization: Bearer <token>`` header's token; ``None`` when
        there is no such header or the token is not configured."""
        if not authorization:
            return None
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return None
        given = _digest(credential)
        found: frozenset[str] | None = None
        for digest, scopes in self._digests:  # every one, whether or not one matched
            if hmac.compare_digest(given, digest):
                found = scopes
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def tokens_from_env(variable: str = "AIOWORKFLOW_TOKENS") -> dict[str, set[str]]:
    """Tokens from an environment variable: ``token:scope[+scope...]`` items separated by
    commas, e.g. ``"tok1:read,tok2:admin+dispatch"``. Raises ``ValueError`` when it is unset,
    empty or malformed."""
    raw = os.environ.get(variable, "")
    out: dict[str, set[str]] = {}
    for n, item in enumerate(raw.split(","), 1):
        item = item.strip()
        if not item:
            continue
        token, sep, scopes = item.partition(":")
        if not sep or not token or not scopes:
            # the item itself is not quoted: it may be a secret
            raise ValueError(f"{variable}: item {n} is not token:scope[+scope]")
        out.setdefault(token, set()).update(s.strip() for s in scopes.split("+"))
    if not out:
        raise ValueError(f"{variable} is unset or empty: no tokens")
    try:
        Tokens(out)  # the same checks as make_app, with the variable's name in the message
    except ValueError as err:
        raise ValueError(f"{variable}: {err}") from None
    return out
