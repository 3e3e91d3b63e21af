"""Sign-in with the site's identity provider (OpenID Connect, authorization code with
PKCE, through Authlib), sign-out there too (RP-initiated logout), and its access tokens
checked as bearer JWTs against its published keys (signature, issuer, audience,
expiry)."""

from __future__ import annotations

import logging

import requests
from authlib.common.urls import add_params_to_uri
from authlib.integrations.base_client.errors import OAuthError
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from extensions import oauth

from . import accounts
from .errors import NotSignedIn, ProviderUnavailable, SignInFailed
from .models import User
from .roles import role_from_claim
from .settings import OidcSettings

PROVIDER = "idp"
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
NO_ROLE = ("Your account at the identity provider has no role in this tool: ask the "
           "administrator for one.")
NOT_ANSWERING = "The identity provider is not answering just now: try again in a moment."
UNREACHABLE = (requests.RequestException, OSError, RuntimeError)

log = logging.getLogger(__name__)


def register_provider(app, settings: OidcSettings) -> None:
    oauth.init_app(app)
    oauth.register(PROVIDER, client_id=settings.client_id,
                   client_secret=settings.client_secret,
                   server_metadata_url=settings.metadata_url,
                   client_kwargs={"scope": settings.scopes, "code_challenge_method": "S256"})


def provider():
    return oauth.create_client(PROVIDER)


def start_sign_in(redirect_uri: str):
    """The redirect to the provider's sign-in page (state, nonce and PKCE verifier kept
    in the session by Authlib)."""
    try:
        return provider().authorize_redirect(redirect_uri)
    except UNREACHABLE as exc:
        raise ProviderUnavailable(NOT_ANSWERING) from exc


def finish_sign_in(settings: OidcSettings) -> tuple[User, str | None]:
    """The account the provider vouched for on its callback, and the ID token it sent
    (kept to sign out there later); SignInFailed otherwise."""
    client = provider()
    try:
        token = client.authorize_access_token()
        claims = dict(token.get("userinfo") or {})
        if settings.roles_claim not in claims:
            claims.update(client.userinfo(token=token))
    except OAuthError as exc:
        log.info("identity provider sign-in refused: %s", exc.error)
        raise SignInFailed() from exc
    except UNREACHABLE as exc:
        raise ProviderUnavailable(NOT_ANSWERING) from exc
    user = provider_account(claims, settings)
    if user is None:
        raise SignInFailed(NO_ROLE)
    return user, token.get("id_token")


def end_session_url(id_token: str | None, back_to: str, settings: OidcSettings) -> str | None:
    """Where to send the browser to end its session at the provider too (OpenID Connect
    RP-Initiated Logout 1.0): with the sign-in's ID token as the hint (when one was
    kept) and this client's id, coming back to ``back_to`` (an absolute URL the client
    registered as a post-logout redirect URI); None when the provider names no
    ``end_session_endpoint`` in its discovery document or cannot be asked."""
    try:
        endpoint = provider().load_server_metadata().get("end_session_endpoint")
    except UNREACHABLE as exc:
        log.warning("identity provider metadata unavailable at sign-out (%s): signed out "
                    "here only", type(exc).__name__)
        return None
    if not endpoint:
        return None
    params = {"client_id": settings.client_id, "post_logout_redirect_uri": back_to}
    if id_token:
        params["id_token_hint"] = id_token
    return add_params_to_uri(endpoint, params)


def provider_account(claims: dict, settings: OidcSettings) -> User | None:
    """The enabled account for these claims (made at its first sign-in), None when the
    claims map to no role of this tool or the account is disabled."""
    role = role_from_claim(claims.get(settings.roles_claim), settings.role_map)
    subject = claims.get("sub") or claims.get("client_id")
    if role is None or not subject:
        return None
    name = claims.get("preferred_username") or claims.get("email") or str(subject)
    user = accounts.provider_user(f"{claims.get('iss', settings.issuer)} {subject}",
                                  str(name), role)
    return None if user.disabled else user


def key_set(force: bool = False) -> KeySet:
    try:
        return KeySet.import_key_set(provider().fetch_jwk_set(force=force))
    except UNREACHABLE as exc:
        raise ProviderUnavailable("The identity provider's keys cannot be fetched just "
                                  "now, so the token cannot be checked.") from exc


def verified_claims(value: str, settings: OidcSettings) -> dict:
    """The access token's claims once its signature, issuer, audience and expiry hold."""
    try:
        try:
            token = jwt.decode(value, key_set(), algorithms=ALGORITHMS)
        except InvalidKeyIdError:  # the provider may have rotated its keys
            token = jwt.decode(value, key_set(force=True), algorithms=ALGORITHMS)
        issuer = provider().load_server_metadata().get("issuer") or settings.issuer
        jwt.JWTClaimsRegistry(iss={"essential": True, "value": issuer},
                              aud={"essential": True, "value": settings.audience},
                              exp={"essential": True}).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise NotSignedIn("The bearer token is not valid here (signature, issuer, "
                          "audience or expiry).") from exc
    return token.claims


def token_user(value: str, settings: OidcSettings) -> User:
    user = provider_account(verified_claims(value, settings), settings)
    if user is None:
        raise NotSignedIn("The bearer token's account has no role in this tool, or is "
                          "disabled.")
    return user
