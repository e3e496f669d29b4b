"""Logging in with OpenID Connect: verified ID tokens, a second factor, the registry's people.

:class:`SDEOAuthenticator` is oauthenticator's ``GenericOAuthenticator`` composed with the
workspace gate and the audited logout. It keeps oauthenticator's authorisation-code flow (state
cookie, PKCE, the token request) and replaces what decides *who* logged in:

* the ID token from the token endpoint is verified here (:func:`verify_id_token`): signature
  against the provider's published keys (JWKS, from its discovery document), issuer, audience,
  expiry and the nonce this hub put in the request. oauthenticator itself only *decodes* ID
  tokens (``verify_signature=False``), and its userinfo path carries no ``amr``/``acr``;
* the verified claims must show a second factor (``amr``/``acr``, :func:`has_second_factor`),
  as the UK TRE standard requires;
* the person is found in the registry by the token's subject (``Person.idp_subject``), or by
  its e-mail when the provider says it verified it (:func:`identify`), and must be active. The
  hub username is the registry's; the token's names, groups or roles grant nothing.

The pure decision is :func:`decide`; every refusal is a clear 403 page and a ``login.refused``
audit event with the reason, every success a ``login`` event. Settings come from the
environment through :func:`oidc_settings` (``SDE_OIDC_*``, see README), which
:func:`sde_spawner.auth.choose_login` calls for ``SDE_AUTHENTICATOR=oidc``.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import jwt
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from sqlalchemy import func, select
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Bool, Float, List, Unicode, default, validate

from sde_spawner import audit
from sde_spawner.hub_events import AuditedLogoutMixin
from sde_spawner.hub_gate import WorkspaceGateMixin
from sde_spawner.registry.models import Person, PersonStatus

#: Asymmetric signatures only: a token signed with "none" or a shared secret is refused.
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
NONCE_COOKIE = "sde-oidc-nonce"
CLASS = "sde_spawner.oidc.SDEOAuthenticator"
TRUTHY = {"1", "true", "yes", "on"}
FALSY = {"0", "false", "no", "off"}


class Refusal(enum.StrEnum):
    """Why a login was refused (``details.code`` of its ``login.refused`` event)."""

    code_exchange_failed = "code_exchange_failed"
    id_token_invalid = "id_token_invalid"  # noqa: S105 - a reason code, not a secret
    no_second_factor = "no_second_factor"
    unknown_person = "unknown_person"
    ambiguous_email = "ambiguous_email"
    subject_mismatch = "subject_mismatch"
    suspended = "suspended"


#: What the refusal page says (the audit reason adds the facts: amr, acr, subject...).
PAGES = {
    Refusal.code_exchange_failed: "The identity provider did not accept this login's code "
    "(it may have been used already, or have expired), so you are not logged in. Start the "
    "login again.",
    Refusal.id_token_invalid: "The identity provider's answer could not be verified, so you "
    "are not logged in. Try again; if it keeps happening, tell the environment's "
    "administrators.",
    Refusal.no_second_factor: "This research environment needs multi-factor authentication, "
    "and this login did not use a second factor. Sign in again with your second factor (for "
    "example an authenticator app or a security key); if your account has none, ask your "
    "organisation's IT service to set one up.",
    Refusal.unknown_person: "Your account at the identity provider is not registered with "
    "this research environment. Only people the environment's administrators have registered "
    "may log in: ask them to register you.",
    Refusal.ambiguous_email: "Your e-mail address belongs to more than one person registered "
    "with this research environment, so it cannot tell who you are. Ask its administrators to "
    "record your identity-provider account.",
    Refusal.subject_mismatch: "Your e-mail address is registered with this research "
    "environment for a different identity-provider account, so you are not logged in. Ask "
    "its administrators.",
    Refusal.suspended: "Your access to this research environment is suspended, so you cannot "
    "log in. Ask the environment's administrators why, and what would lift the suspension.",
}


class IdTokenInvalid(ValueError):
    """The ID token failed verification; the message says which check."""


# ---- pure rules --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MfaRule:
    """Which ``amr`` values (any one) or ``acr`` values show a second factor."""

    amr: frozenset[str]
    acr: frozenset[str]


@dataclass(frozen=True)
class PersonFacts:
    username: str
    status: PersonStatus
    idp_subject: str | None
    email: str


@dataclass(frozen=True)
class LoginDecision:
    username: str | None  # the registry's username of the person (if identified)
    refusal: Refusal | None
    reason: str | None  # for the audit trail

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def _amr(claims: dict) -> list[str]:
    amr = claims.get("amr")
    if isinstance(amr, str):
        return [amr]
    return [a for a in amr if isinstance(a, str)] if isinstance(amr, list) else []


def has_second_factor(claims: dict, rule: MfaRule) -> bool:
    """Do the (verified) claims show a second factor under ``rule``?"""
    if any(a in rule.amr for a in _amr(claims)):
        return True
    acr = claims.get("acr")
    return isinstance(acr, str) and acr in rule.acr


def verified_email(claims: dict) -> str | None:
    """The e-mail, lower-cased, only when the provider says it verified it."""
    email = claims.get("email")
    if claims.get("email_verified") is True and isinstance(email, str) and "@" in email:
        return email.strip().lower()
    return None


def identify(
    claims: dict, by_subject: PersonFacts | None, by_email: list[PersonFacts], match_email: bool
) -> tuple[PersonFacts | None, Refusal | None, str | None]:
    """The registry person these claims are: (person, None, None) or (None, refusal, reason)."""
    sub = claims.get("sub")
    if by_subject is not None:
        return by_subject, None, None
    email = verified_email(claims) if match_email else None
    if email is None:
        how = "verified e-mail" if match_email else "e-mail matching off"
        return None, Refusal.unknown_person, f"subject {sub!r} is nobody's ({how}: {email!r})"
    if not by_email:
        return None, Refusal.unknown_person, f"neither subject {sub!r} nor {email} is registered"
    if len(by_email) > 1:
        names = ", ".join(sorted(p.username for p in by_email))
        return None, Refusal.ambiguous_email, f"{email} is the e-mail of {names}"
    person = by_email[0]
    if person.idp_subject is not None:
        return (
            None,
            Refusal.subject_mismatch,
            f"{email} is {person.username}'s, who is bound to another subject, not {sub!r}",
        )
    return person, None, None


def decide(
    claims: dict,
    by_subject: PersonFacts | None,
    by_email: list[PersonFacts],
    *,
    mfa: MfaRule,
    match_email: bool,
) -> LoginDecision:
    """May the person of these verified claims log in? Second factor first (how strongly
    they authenticated), then who they are in the registry, then whether they are active."""
    if not has_second_factor(claims, mfa):
        shown = f"amr {_amr(claims)}, acr {claims.get('acr')!r}"
        who = by_subject.username if by_subject else None
        return LoginDecision(
            who, Refusal.no_second_factor, f"no second factor in the login ({shown})"
        )
    person, refusal, reason = identify(claims, by_subject, by_email, match_email)
    if person is None:
        return LoginDecision(None, refusal, reason)
    if person.status != PersonStatus.active:
        return LoginDecision(person.username, Refusal.suspended, f"account {person.status.value}")
    return LoginDecision(person.username, None, None)


def verify_id_token(
    token: str | None,
    jwks: dict,
    *,
    issuer: str,
    client_id: str,
    nonce: str | None,
    algorithms=ID_TOKEN_ALGORITHMS,
    leeway: float = 60,
) -> dict:
    """The claims of a valid ID token (OIDC Core 3.1.3.7), or :class:`IdTokenInvalid`."""
    if not token:
        raise IdTokenInvalid("the token response holds no ID token (is 'openid' in the scope?)")
    try:
        header = jwt.get_unverified_header(token)
        keys = jwt.PyJWKSet.from_dict(jwks).keys
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise IdTokenInvalid(f"unreadable ID token or key set: {exc}") from None
    kid = header.get("kid")
    usable = [k for k in keys if (kid is None or k.key_id == kid) and k.public_key_use != "enc"]
    if len(usable) != 1:
        raise IdTokenInvalid(f"no single signing key {kid!r} in the provider's key set")
    try:
        claims = jwt.decode(
            token,
            usable[0].key,
            algorithms=list(algorithms),
            audience=client_id,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError as exc:
        raise IdTokenInvalid(f"ID token rejected: {exc}") from None
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
        raise IdTokenInvalid("ID token for several audiences without this hub as its azp")
    if nonce is not None and not hmac.compare_digest(
        str(claims.get("nonce", "")).encode(), nonce.encode()
    ):
        raise IdTokenInvalid("ID token nonce does not match this browser's login")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise IdTokenInvalid("ID token without a subject")
    return claims


def is_safe_endpoint(url: str) -> bool:
    """HTTPS, or plain HTTP to a loopback address (a provider on this machine, as in tests)."""
    parsed = urlparse(url or "")
    if parsed.scheme == "https" and parsed.hostname:
        return True
    try:
        return parsed.scheme == "http" and ipaddress.ip_address(parsed.hostname or "").is_loopback
    except ValueError:
        return False


def _words(value: str) -> list[str]:
    return [w for w in (value or "").replace(",", " ").split() if w]


def oidc_settings(environ) -> dict:
    """``SDEOAuthenticator`` traits from ``SDE_OIDC_*`` settings, or ValueError naming the
    setting. Reads the client secret from its file (never from the environment itself)."""
    missing = [
        k
        for k in ("SDE_OIDC_ISSUER", "SDE_OIDC_CLIENT_ID", "SDE_OIDC_CLIENT_SECRET_FILE")
        if not environ.get(k, "").strip()
    ]
    if missing:
        raise ValueError(f"the OpenID Connect login needs {', '.join(missing)}")
    issuer = environ["SDE_OIDC_ISSUER"].strip().rstrip("/")
    if not is_safe_endpoint(issuer):
        raise ValueError(f"SDE_OIDC_ISSUER={issuer} must be https:// (or http:// on loopback)")
    secret_file = Path(environ["SDE_OIDC_CLIENT_SECRET_FILE"].strip())
    try:
        secret = secret_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"SDE_OIDC_CLIENT_SECRET_FILE cannot be read: {exc}") from None
    if not secret:
        raise ValueError(f"SDE_OIDC_CLIENT_SECRET_FILE {secret_file} is empty")
    amr = _words(environ.get("SDE_OIDC_MFA_AMR", "mfa"))
    acr = _words(environ.get("SDE_OIDC_MFA_ACR", ""))
    if not amr and not acr:
        raise ValueError(
            "SDE_OIDC_MFA_AMR and SDE_OIDC_MFA_ACR are both empty: multi-factor authentication "
            "is required, so name the amr or acr values that show a second factor"
        )
    match = environ.get("SDE_OIDC_MATCH_EMAIL", "true").strip().lower()
    if match not in TRUTHY | FALSY:
        raise ValueError(f"SDE_OIDC_MATCH_EMAIL={match!r} must be true or false")
    settings = {
        "issuer": issuer,
        "client_id": environ["SDE_OIDC_CLIENT_ID"].strip(),
        "client_secret": secret,
        "mfa_amr_values": amr,
        "mfa_acr_values": acr,
        "match_email": match in TRUTHY,
    }
    if environ.get("SDE_OIDC_CALLBACK_URL", "").strip():
        settings["oauth_callback_url"] = environ["SDE_OIDC_CALLBACK_URL"].strip()
    if environ.get("SDE_OIDC_LOGIN_SERVICE", "").strip():
        settings["login_service"] = environ["SDE_OIDC_LOGIN_SERVICE"].strip()
    return settings


# ---- the registry side -------------------------------------------------------------------------
def _facts(p: Person) -> PersonFacts:
    return PersonFacts(p.username, p.status, p.idp_subject, p.email or "")


def registry_candidates(session, claims: dict) -> tuple[PersonFacts | None, list[PersonFacts]]:
    """The person bound to the claims' subject, and the people with their verified e-mail."""
    sub = claims.get("sub")
    bound = session.scalar(select(Person).where(Person.idp_subject == sub)) if sub else None
    email = verified_email(claims)
    by_email = (
        session.scalars(select(Person).where(func.lower(Person.email) == email)).all()
        if email
        else []
    )
    return (_facts(bound) if bound else None), [_facts(p) for p in by_email]


def _login_details(claims: dict | None, decision: LoginDecision | None) -> dict:
    claims = claims or {}
    details = {
        "method": "oidc",
        "subject": str(claims.get("sub", ""))[:255] or None,
        "email": str(claims.get("email", ""))[:200] or None,
        "amr": _amr(claims)[:10],
        "acr": str(claims.get("acr", ""))[:200] or None,
    }
    if decision is not None and decision.refusal is not None:
        details["code"] = decision.refusal.value
    return details


# ---- the authenticator -------------------------------------------------------------------------
class NonceLoginHandler(OAuthLoginHandler):
    """oauthenticator's login redirect, after discovery, with a nonce bound to the browser."""

    async def get(self):
        try:
            await self.authenticator.discover()
        except IdTokenInvalid as exc:
            raise web.HTTPError(503, f"The identity provider cannot be used: {exc}") from None
        super().get()

    def authorize_redirect(self, *args, extra_params=None, **kwargs):
        nonce = secrets.token_urlsafe(32)
        self._set_cookie(NONCE_COOKIE, nonce, expires_days=1, httponly=True)
        return super().authorize_redirect(
            *args, extra_params={**(extra_params or {}), "nonce": nonce}, **kwargs
        )


class SDEOAuthenticator(WorkspaceGateMixin, AuditedLogoutMixin, GenericOAuthenticator):
    """OpenID Connect login for registered, active people who used a second factor."""

    login_handler = NonceLoginHandler

    registry_url = Unicode(help="SQLAlchemy URL of the registry.").tag(config=True)
    issuer = Unicode(
        help="The provider's issuer URL (SDE_OIDC_ISSUER); its discovery document "
        "(ISSUER/.well-known/openid-configuration) gives the endpoints and the signing keys."
    ).tag(config=True)
    mfa_amr_values = List(
        Unicode(),
        ["mfa"],
        help="ID token 'amr' values (any one) that show a second factor (SDE_OIDC_MFA_AMR; "
        "RFC 8176 names, e.g. mfa, otp, hwk).",
    ).tag(config=True)
    mfa_acr_values = List(
        Unicode(),
        [],
        help="ID token 'acr' values that show a second factor (SDE_OIDC_MFA_ACR), for "
        "providers that state assurance levels instead of methods.",
    ).tag(config=True)
    match_email = Bool(
        True,
        help="Find a person with no recorded subject by the token's e-mail, when the provider "
        "says it verified it (SDE_OIDC_MATCH_EMAIL). Off: only Person.idp_subject counts.",
    ).tag(config=True)
    id_token_leeway = Float(
        60, help="Seconds of clock skew allowed on the ID token's exp and iat."
    ).tag(config=True)

    @default("scope")
    def _scope_default(self):
        return ["openid", "email", "profile"]

    @default("login_service")
    def _login_service_default(self):
        return "your organisation's login"

    @validate("issuer")
    def _check_issuer(self, proposal):
        if not is_safe_endpoint(proposal.value):
            raise ValueError(f"issuer {proposal.value!r} must be https:// (or http:// on loopback)")
        return proposal.value.rstrip("/")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._discovery: dict | None = None
        self._jwks: dict | None = None
        self._jwks_at = 0.0
        self._sessionmaker = None

    # -- the provider: discovery and keys
    async def discover(self) -> dict:
        """The provider's discovery document, fetched once; endpoints set from it. Its issuer
        must be ours (a trailing slash aside: providers differ on it)."""
        if self._discovery is None:
            url = f"{self.issuer}/.well-known/openid-configuration"
            doc = await self.httpfetch(url, "Fetching OpenID Connect discovery", method="GET")
            if doc.get("issuer", "").rstrip("/") != self.issuer:
                raise IdTokenInvalid(f"the discovery document names issuer {doc.get('issuer')!r}")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not is_safe_endpoint(doc.get(key, "")):
                    raise IdTokenInvalid(f"its {key} {doc.get(key)!r} is not https")
            self.authorize_url = doc["authorization_endpoint"]
            self.token_url = doc["token_endpoint"]
            self._discovery = doc
        return self._discovery

    async def signing_keys(self, kid: str | None) -> dict:
        """The provider's JWKS; fetched again (at most once a minute) for an unknown key id."""
        known = {k.get("kid") for k in (self._jwks or {}).get("keys", [])}
        stale = self._jwks is None or (kid is not None and kid not in known)
        if stale and (self._jwks is None or time.monotonic() - self._jwks_at > 60):
            doc = await self.discover()
            self._jwks = await self.httpfetch(doc["jwks_uri"], "Fetching JWKS", method="GET")
            self._jwks_at = time.monotonic()
        return self._jwks

    # -- the login
    def _session(self):
        if self._sessionmaker is None:
            from sde_spawner.spawner import _sessionmaker

            self._sessionmaker = _sessionmaker(self.registry_url)
        return self._sessionmaker()

    def _take_nonce(self, handler) -> str | None:
        value = handler.get_secure_cookie(NONCE_COOKIE, max_age_days=1)
        handler.clear_cookie(NONCE_COOKIE)
        return value.decode() if value else None

    def _decide_and_record(
        self, claims: dict | None, error: tuple[Refusal, str] | None
    ) -> LoginDecision:
        """The registry decision for verified claims (or the protocol error), audited."""
        with self._session() as session, session.begin():
            if error is not None:
                decision = LoginDecision(None, *error)
            else:
                by_subject, by_email = registry_candidates(session, claims)
                decision = decide(
                    claims,
                    by_subject,
                    by_email,
                    mfa=MfaRule(frozenset(self.mfa_amr_values), frozenset(self.mfa_acr_values)),
                    match_email=self.match_email,
                )
            audit.append(
                session,
                "login" if decision.allowed else "login.refused",
                actor=decision.username or "(unknown)",
                outcome="allowed" if decision.allowed else "denied",
                reason=decision.reason,
                details=_login_details(claims, decision),
            )
        return decision

    async def _verified_claims(self, token_info: dict, nonce: str | None) -> dict:
        """The claims of the token response's ID token, verified; or IdTokenInvalid."""
        if nonce is None:
            raise IdTokenInvalid("this browser holds no login nonce (start the login again)")
        token = token_info.get("id_token")
        try:
            kid = jwt.get_unverified_header(token).get("kid") if token else None
        except jwt.PyJWTError as exc:
            raise IdTokenInvalid(f"unreadable ID token: {exc}") from None
        try:
            keys = await self.signing_keys(kid)
        except (HTTPClientError, OSError) as exc:
            raise IdTokenInvalid(
                f"the provider's signing keys could not be fetched: {exc}"
            ) from None
        return verify_id_token(
            token,
            keys,
            issuer=(await self.discover())["issuer"],  # exactly as the provider spells it
            client_id=self.client_id,
            nonce=nonce,
            leeway=self.id_token_leeway,
        )

    async def authenticate(self, handler, data=None):
        """The code exchange of oauthenticator, then our checks on the verified ID token."""
        await self.discover()
        nonce = self._take_nonce(handler)
        params = self.build_access_tokens_request_params(handler, data)
        token_info, claims, error = {}, None, None
        try:
            token_info = await self.get_token_info(handler, params)
            claims = await self._verified_claims(token_info, nonce)
        except (web.HTTPError, HTTPClientError) as exc:
            error = (Refusal.code_exchange_failed, f"token endpoint: {exc}"[:500])
        except IdTokenInvalid as exc:
            error = (Refusal.id_token_invalid, str(exc))
        decision = await asyncio.to_thread(self._decide_and_record, claims, error)
        if not decision.allowed:
            self.log.warning("login refused (%s): %s", decision.refusal, decision.reason)
            raise web.HTTPError(403, PAGES[decision.refusal])
        username = decision.username
        return {
            "name": username,
            "admin": True if username in self.admin_users else None,
            "auth_state": self.build_auth_state_dict(token_info, claims),
        }

    def check_allowed(self, username, authentication=None):
        return True  # authenticate() already consulted the registry

    def _still_active(self, username: str) -> bool:
        with self._session() as session:
            person = session.scalar(select(Person).where(Person.username == username))
            return person is not None and person.status == PersonStatus.active

    async def refresh_user(self, user, handler=None, **kwargs):
        """A person suspended since logging in must log in again (and is then refused)."""
        return await asyncio.to_thread(self._still_active, user.name)
