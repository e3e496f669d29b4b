"""The OpenID Connect login's rules: ID token verification, the second factor, the registry.

The pure parts (:func:`~sde_spawner.oidc.verify_id_token`, :func:`~sde_spawner.oidc.decide`,
:func:`~sde_spawner.oidc.oidc_settings`) are tested whole here, with tokens signed by keys made
in the test; the registry lookup runs against a registry built by the real migrations. The
login through a real provider in Chromium is tests/browser/test_oidc_login.py.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sde_spawner.auth import OIDC_CLASS, LoginRefused, choose_login
from sde_spawner.db import make_engine, make_sessionmaker, upgrade
from sde_spawner.oidc import (
    IdTokenInvalid,
    LoginDecision,
    MfaRule,
    PersonFacts,
    Refusal,
    decide,
    has_second_factor,
    identify,
    is_safe_endpoint,
    oidc_settings,
    registry_candidates,
    verify_id_token,
)
from sde_spawner.registry import ops
from sde_spawner.registry.models import PersonStatus

ISSUER = "https://idp.example.org"
CLIENT = "tre-hub"
MFA = MfaRule(frozenset({"mfa"}), frozenset({"urn:loa:2"}))


def _key(kid: str):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private, {**public, "kid": kid, "use": "sig", "alg": "RS256"}


KEY, JWK = _key("k1")
OTHER_KEY, _ = _key("k1")  # same key id, different key: a forger's
JWKS = {"keys": [JWK]}


def token(key=KEY, kid="k1", alg="RS256", **overrides) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "idp-alice",
        "aud": CLIENT,
        "iat": now,
        "exp": now + 300,
        "nonce": "n-123",
        "amr": ["pwd", "mfa"],
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def verify(tok, jwks=JWKS, nonce="n-123"):
    return verify_id_token(tok, jwks, issuer=ISSUER, client_id=CLIENT, nonce=nonce)


def test_a_valid_id_token_gives_its_claims():
    claims = verify(token())
    assert claims["sub"] == "idp-alice" and claims["amr"] == ["pwd", "mfa"]


@pytest.mark.parametrize(
    ("tok", "message"),
    [
        (lambda: token(key=OTHER_KEY), "Signature verification failed"),
        (lambda: token(iss="https://evil.example.org"), "Invalid issuer"),
        (lambda: token(aud="another-client"), "Audience doesn't match"),
        (lambda: token(exp=int(time.time()) - 3600), "Signature has expired"),
        (lambda: token(nonce="n-other"), "nonce does not match"),
        (lambda: token(nonce=None), "nonce does not match"),
        (lambda: token(sub=None), 'Token is missing the "sub" claim'),
        (lambda: token(kid="k2"), "no single signing key 'k2'"),
        (lambda: token(key="shared-secret-of-32-bytes-or-more!!", alg="HS256"), "alg"),
        (lambda: jwt.encode({"sub": "x"}, None, algorithm="none", headers={"kid": "k1"}), "alg"),
        (lambda: token(aud=[CLIENT, "other"]), "several audiences"),
        (lambda: None, "holds no ID token"),
        (lambda: "not.a.token", "unreadable ID token"),
    ],
)
def test_a_forged_stale_or_foreign_id_token_is_refused(tok, message):
    with pytest.raises(IdTokenInvalid, match=message):
        verify(tok())


def test_a_token_for_several_audiences_needs_this_hub_as_authorised_party():
    assert verify(token(aud=[CLIENT, "other"], azp=CLIENT))["azp"] == CLIENT


def test_the_second_factor_is_read_from_amr_or_acr_as_configured():
    assert has_second_factor({"amr": ["pwd", "mfa"]}, MFA)
    assert has_second_factor({"amr": "mfa"}, MFA)
    assert has_second_factor({"amr": ["pwd"], "acr": "urn:loa:2"}, MFA)
    assert not has_second_factor({"amr": ["pwd"], "acr": "urn:loa:1"}, MFA)
    assert not has_second_factor({"amr": ["pwd", "otp"]}, MFA)  # otp is not configured here
    assert has_second_factor({"amr": ["pwd", "otp"]}, MfaRule(frozenset({"otp"}), frozenset()))
    assert not has_second_factor({}, MFA)
    assert not has_second_factor({"amr": [{"mfa": 1}], "acr": ["urn:loa:2"]}, MFA)


ALICE = PersonFacts("alice", PersonStatus.active, "idp-alice", "alice@example.org")
BOB = PersonFacts("bob", PersonStatus.active, None, "bob@example.org")
SUSPENDED = PersonFacts("sam", PersonStatus.suspended, "idp-sam", "sam@example.org")
MFA_CLAIMS = {"sub": "idp-alice", "amr": ["pwd", "mfa"]}


def test_decide_lets_in_the_registered_active_person_of_the_subject():
    assert decide(MFA_CLAIMS, ALICE, [], mfa=MFA, match_email=True) == LoginDecision(
        "alice", None, None
    )


def test_the_username_is_the_registrys_never_the_claims():
    claims = {
        **MFA_CLAIMS,
        "preferred_username": "admin",
        "name": "admin",
        "groups": ["admin", "output_checker"],
        "roles": ["admin"],
    }
    assert decide(claims, ALICE, [], mfa=MFA, match_email=True).username == "alice"
    unknown = {**claims, "sub": "idp-nobody", "preferred_username": "alice"}
    assert decide(unknown, None, [], mfa=MFA, match_email=True) == LoginDecision(
        None,
        Refusal.unknown_person,
        "subject 'idp-nobody' is nobody's (verified e-mail: None)",
    )


def test_without_a_second_factor_even_an_active_person_is_refused():
    claims = {"sub": "idp-alice", "amr": ["pwd"], "acr": "urn:loa:1"}
    assert decide(claims, ALICE, [], mfa=MFA, match_email=True) == LoginDecision(
        "alice",
        Refusal.no_second_factor,
        "no second factor in the login (amr ['pwd'], acr 'urn:loa:1')",
    )


def test_a_suspended_person_is_refused():
    claims = {**MFA_CLAIMS, "sub": "idp-sam"}
    assert decide(claims, SUSPENDED, [], mfa=MFA, match_email=True) == LoginDecision(
        "sam", Refusal.suspended, "account suspended"
    )


def test_email_matches_only_when_verified_unbound_and_unique():
    claims = {"sub": "idp-bob", "email": "Bob@Example.org", "email_verified": True}
    assert identify(claims, None, [BOB], True) == (BOB, None, None)
    assert identify(claims, None, [BOB], False)[1] == Refusal.unknown_person
    unverified = {**claims, "email_verified": False}
    assert identify(unverified, None, [BOB], True)[1] == Refusal.unknown_person
    as_string = {**claims, "email_verified": "true"}  # not the JSON boolean the spec says
    assert identify(as_string, None, [BOB], True)[1] == Refusal.unknown_person
    twin = PersonFacts("bob2", PersonStatus.active, None, "bob@example.org")
    assert identify(claims, None, [BOB, twin], True) == (
        None,
        Refusal.ambiguous_email,
        "bob@example.org is the e-mail of bob, bob2",
    )
    # alice is bound to her own subject: someone else's account with her e-mail is not her
    other = {"sub": "idp-mallory", "email": "alice@example.org", "email_verified": True}
    assert identify(other, None, [ALICE], True)[1] == Refusal.subject_mismatch


def test_settings_come_from_the_environment_with_the_secret_from_its_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    env = {
        "SDE_OIDC_ISSUER": "https://idp.example.org/realms/tre/",
        "SDE_OIDC_CLIENT_ID": "tre-hub",
        "SDE_OIDC_CLIENT_SECRET_FILE": str(secret),
        "SDE_OIDC_MFA_AMR": "mfa, hwk otp",
        "SDE_OIDC_MFA_ACR": "urn:loa:2",
        "SDE_OIDC_MATCH_EMAIL": "false",
        "SDE_OIDC_CALLBACK_URL": "https://tre.example.org/hub/oauth_callback",
        "SDE_OIDC_LOGIN_SERVICE": "NHS login",
    }
    assert oidc_settings(env) == {
        "issuer": "https://idp.example.org/realms/tre",
        "client_id": "tre-hub",
        "client_secret": "s3cret",
        "mfa_amr_values": ["mfa", "hwk", "otp"],
        "mfa_acr_values": ["urn:loa:2"],
        "match_email": False,
        "oauth_callback_url": "https://tre.example.org/hub/oauth_callback",
        "login_service": "NHS login",
    }
    minimal = {k: env[k] for k in ("SDE_OIDC_ISSUER", "SDE_OIDC_CLIENT_ID")}
    minimal["SDE_OIDC_CLIENT_SECRET_FILE"] = str(secret)
    assert oidc_settings(minimal) == {
        "issuer": "https://idp.example.org/realms/tre",
        "client_id": "tre-hub",
        "client_secret": "s3cret",
        "mfa_amr_values": ["mfa"],
        "mfa_acr_values": [],
        "match_email": True,
    }
    assert choose_login({"SDE_AUTHENTICATOR": "oidc", **minimal}).settings == oidc_settings(minimal)
    assert choose_login({"SDE_AUTHENTICATOR": OIDC_CLASS, **minimal}).section == (
        "SDEOAuthenticator"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SDE_OIDC_ISSUER": ""}, "needs SDE_OIDC_ISSUER"),
        ({"SDE_OIDC_CLIENT_SECRET_FILE": "/nonexistent/secret"}, "cannot be read"),
        ({"SDE_OIDC_ISSUER": "http://idp.example.org"}, "must be https://"),
        ({"SDE_OIDC_MFA_AMR": " ", "SDE_OIDC_MFA_ACR": ""}, "multi-factor authentication"),
        ({"SDE_OIDC_MATCH_EMAIL": "perhaps"}, "must be true or false"),
    ],
)
def test_bad_settings_stop_the_hub_naming_the_setting(tmp_path, change, message):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    env = {
        "SDE_AUTHENTICATOR": "oidc",
        "SDE_OIDC_ISSUER": "http://127.0.0.1:5556",
        "SDE_OIDC_CLIENT_ID": "hub",
        "SDE_OIDC_CLIENT_SECRET_FILE": str(secret),
        **change,
    }
    with pytest.raises(LoginRefused, match=message):
        choose_login(env)


def test_empty_secret_file_is_refused(tmp_path):
    (tmp_path / "secret").write_text("\n")
    env = {
        "SDE_OIDC_ISSUER": "https://idp.example.org",
        "SDE_OIDC_CLIENT_ID": "hub",
        "SDE_OIDC_CLIENT_SECRET_FILE": str(tmp_path / "secret"),
    }
    with pytest.raises(ValueError, match="is empty"):
        oidc_settings(env)


def test_provider_endpoints_are_https_or_loopback():
    assert is_safe_endpoint("https://idp.example.org/token")
    assert is_safe_endpoint("http://127.0.0.1:5556/token")
    assert is_safe_endpoint("http://[::1]:5556")
    for url in ("http://idp.example.org", "http://localhost:5556", "ftp://127.0.0.1", ""):
        assert not is_safe_endpoint(url), url


@pytest.fixture
def registry(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    upgrade(url)  # the real migrations, 0010 included
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_the_registry_finds_people_by_subject_or_verified_email(registry):
    ops.perform(registry, ops.add_person, "admin", "alice", idp_subject="idp-alice")
    ops.perform(registry, ops.add_person, "admin", "bob", email="Bob@Example.org")
    with registry() as s:
        by_sub, by_email = registry_candidates(s, {"sub": "idp-alice"})
        assert (by_sub.username, by_email) == ("alice", [])
        claims = {"sub": "idp-b", "email": "bob@example.ORG", "email_verified": True}
        by_sub, by_email = registry_candidates(s, claims)
        assert by_sub is None and [p.username for p in by_email] == ["bob"]
        claims["email_verified"] = False
        assert registry_candidates(s, claims) == (None, [])


def test_one_subject_belongs_to_one_person_and_the_refusal_is_audited(registry):
    from sde_spawner.audit.models import AuditEvent

    ops.perform(registry, ops.add_person, "admin", "alice", idp_subject="idp-alice")
    with pytest.raises(ops.RegistryError, match="already belongs to alice"):
        ops.perform(registry, ops.add_person, "admin", "bob", idp_subject="idp-alice")
    with pytest.raises(ops.RegistryError, match="spaces around it"):
        ops.perform(registry, ops.add_person, "admin", "bob", idp_subject=" idp-bob")
    out = ops.perform(registry, ops.add_person, "admin", "alice", idp_subject=ops.CLEAR)
    assert out.changes == {"idp_subject": ["idp-alice", None]}
    with registry() as s:
        events = [(e.action, e.outcome) for e in s.query(AuditEvent).order_by(AuditEvent.seq)]
    assert events == [
        ("person.created", "allowed"),
        ("person.add", "denied"),
        ("person.add", "denied"),
        ("person.updated", "allowed"),
    ]


def test_a_person_suspended_after_logging_in_must_log_in_again(registry, tmp_path):
    from types import SimpleNamespace

    from sde_spawner.oidc import SDEOAuthenticator

    ops.perform(registry, ops.add_person, "admin", "alice", idp_subject="idp-alice")
    auth = SDEOAuthenticator(
        registry_url=f"sqlite:///{tmp_path / 'registry.sqlite'}", issuer=ISSUER, client_id=CLIENT
    )
    alice, nobody = SimpleNamespace(name="alice"), SimpleNamespace(name="nobody")
    assert asyncio.run(auth.refresh_user(alice)) is True
    assert asyncio.run(auth.refresh_user(nobody)) is False
    ops.perform(registry, ops.suspend_person, "admin", "alice", "breach")
    assert asyncio.run(auth.refresh_user(alice)) is False


def test_the_hub_routes_the_gate_then_audited_logout_then_the_nonce_login():
    from types import SimpleNamespace

    from oauthenticator.oauth2 import OAuthCallbackHandler

    from sde_spawner.hub_events import AuditedLogoutHandler
    from sde_spawner.hub_gate import WorkspaceGate
    from sde_spawner.oidc import NonceLoginHandler, SDEOAuthenticator

    auth = SDEOAuthenticator(issuer=ISSUER, client_id=CLIENT)
    handlers = auth.get_handlers(SimpleNamespace(hub_prefix="/hub/"))
    assert isinstance(handlers[0][1], WorkspaceGate)
    assert [(p, h) for p, h in handlers[1:4]] == [
        ("/logout", AuditedLogoutHandler),
        (r"/oauth_login", NonceLoginHandler),
        (r"/oauth_callback", OAuthCallbackHandler),
    ]
    with pytest.raises(Exception, match="must be https"):
        SDEOAuthenticator(issuer="http://idp.example.org", client_id=CLIENT)


LOAD_OIDC = """
import json, sys
from traitlets.config.loader import PyFileConfigLoader
cfg = PyFileConfigLoader(sys.argv[1]).load_config()
print(json.dumps({"class": cfg.JupyterHub.authenticator_class, **cfg.SDEOAuthenticator}))
"""


def test_jupyterhub_config_wires_the_oidc_login_from_its_settings(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "secret").write_text("s3cret\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDE_")}
    env.update(
        PYTHONPATH=str(repo),
        SDE_STATE_DIR=str(tmp_path / "state"),
        SDE_AUTHENTICATOR="oidc",
        SDE_OIDC_ISSUER="https://idp.example.org",
        SDE_OIDC_CLIENT_ID="tre-hub",
        SDE_OIDC_CLIENT_SECRET_FILE=str(tmp_path / "secret"),
    )
    res = subprocess.run(
        [sys.executable, "-c", LOAD_OIDC, str(repo / "jupyterhub_config.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1]) == {
        "class": OIDC_CLASS,
        "issuer": "https://idp.example.org",
        "client_id": "tre-hub",
        "client_secret": "s3cret",
        "mfa_amr_values": ["mfa"],
        "mfa_acr_values": [],
        "match_email": True,
        "registry_url": f"sqlite:///{tmp_path / 'state'}/registry.sqlite",
    }


def test_a_project_file_records_members_subjects_and_refuses_one_subject_for_two(tmp_path):
    from click.testing import CliRunner

    from sde_spawner.cli import main
    from sde_spawner.db import open_db
    from sde_spawner.demo import examples_dir, write_synthetic_patients
    from sde_spawner.registry.models import Person

    url = f"sqlite:///{tmp_path}/r.sqlite"
    sm = open_db(url)
    source = write_synthetic_patients(tmp_path / "patients.csv", rows=20)
    ops.perform(sm, ops.add_dataset, "t", "patients", str(source), identifier_column="nhs_number")
    text = (examples_dir() / "diabetes-outcomes.toml").read_text()
    alice = 'username = "alice"\nname = "Alice"\n'
    bob = 'username = "bob"\nname = "Bob"\n'
    assert alice in text and bob in text

    def apply(body: str):
        path = tmp_path / "project.toml"
        path.write_text(body)
        return CliRunner().invoke(main, ["--db", url, "apply", str(path)], env={"SDE_ADMIN": "t"})

    res = apply(text.replace(alice, alice + 'idp_subject = "idp-alice"\n'))
    assert res.exit_code == 0, res.output
    twice = text.replace(alice, alice + 'idp_subject = "idp-x"\n').replace(
        bob, bob + 'idp_subject = "idp-x"\n'
    )
    res = apply(twice)
    assert res.exit_code == 1
    assert "members[1].idp_subject: already given to alice in this file" in res.output
    with sm() as s:
        subjects = {p.username: p.idp_subject for p in s.query(Person)}
    assert subjects["alice"] == "idp-alice" and subjects["bob"] is None
    sm.kw["bind"].dispose()
