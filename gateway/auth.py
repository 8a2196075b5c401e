"""Who is calling: a static bearer token, or a JWT whose ``sub`` is the identity.

Only the identity goes further (into the log, as the session's user); the
credentials themselves are never stored or logged.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import jwt

__all__ = ["AuthError", "Authenticator", "build_authenticator"]

# The identity every holder of the static token shares.
TOKEN_IDENTITY = "token"
HMAC_ALGORITHMS = ["HS256"]
KEY_ALGORITHMS = ["RS256", "ES256"]


class AuthError(Exception):
    """Missing or bad credentials; ``error`` is the RFC 6750 error code."""

    def __init__(self, message: str, error: str = "invalid_token") -> None:
        super().__init__(message)
        self.error = error


class Authenticator:
    def __init__(
        self,
        *,
        token: str | None = None,
        jwt_key: str | bytes | None = None,
        jwt_algorithms: list[str] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._token = token.encode() if token else None
        self._jwt_key = jwt_key
        self._jwt_algorithms = jwt_algorithms or []
        self._audience = audience
        self._issuer = issuer

    def identify(self, authorization: str | None) -> str:
        """The caller's identity from an ``Authorization`` header value.

        Raises:
            AuthError: no bearer credentials, or they do not check out.
        """
        if not authorization:
            raise AuthError("credentials required: Authorization: Bearer <token>", "")
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise AuthError("the Authorization header must be 'Bearer <token>'", "invalid_request")
        if self._token is not None and hmac.compare_digest(credentials.encode(), self._token):
            return TOKEN_IDENTITY
        if self._jwt_key is None:
            raise AuthError("invalid bearer token")
        try:
            claims = jwt.decode(
                credentials,
                self._jwt_key,
                algorithms=self._jwt_algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["sub", "exp"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid token: 'sub' must be a non-empty string")
        if self._token is not None and subject == TOKEN_IDENTITY:
            # Else a JWT could claim the static token holders' sessions.
            raise AuthError(f"invalid token: 'sub' {TOKEN_IDENTITY!r} is reserved")
        return subject


def build_authenticator(
    *,
    token: str | None = None,
    jwt_secret: str | None = None,
    jwt_public_key: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> Authenticator | None:
    """An authenticator for the options given, or None when auth is off.

    ``jwt_public_key`` is PEM text or the path of a PEM file.

    Raises:
        ValueError: both a JWT secret and a public key, or an unreadable key.
    """
    if jwt_secret and jwt_public_key:
        raise ValueError("give a JWT secret or a JWT public key, not both")
    key: str | None = None
    algorithms: list[str] = []
    if jwt_secret:
        key, algorithms = jwt_secret, HMAC_ALGORITHMS
    elif jwt_public_key:
        key = jwt_public_key
        if "-----BEGIN" not in key:
            try:
                key = Path(key).read_text()
            except OSError as exc:
                raise ValueError(f"cannot read the JWT public key: {exc}") from None
        algorithms = KEY_ALGORITHMS
    if not token and key is None:
        return None
    return Authenticator(
        token=token, jwt_key=key, jwt_algorithms=algorithms, audience=audience, issuer=issuer
    )
