"""Logging in with OpenID Connect, end to end: the real hub (``SDE_AUTHENTICATOR=oidc``), a real
provider (``oidc-provider`` on loopback, tests/oidc) and Chromium.

alice (bound to her provider subject, signs in with a second factor) logs in and starts her
workspace; bob is found by his verified e-mail. An unknown account (whose claims call it
"alice"), a suspended person and bob signing in without a second factor are each refused with
a page saying why and a ``login.refused`` audit event with the reason.
"""

from __future__ import annotations

import secrets
import uuid

import pytest

from sde_spawner.containers import workspace_names
from sde_spawner.oidc import PAGES, Refusal
from tests.oidc import OidcProvider
from tests.support import Hub, remove_prefixed

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
MFA = {"amr": ["pwd", "otp", "mfa"], "acr": "urn:sde:loa:2"}
PASSWORD_ONLY = {"amr": ["pwd"], "acr": "urn:sde:loa:1"}
ACCOUNTS = {
    "alice": {"sub": "idp-alice-0001", "email": "alice@uni.example", **MFA},
    "bob": {"sub": "idp-bob-0002", "email": "bob@uni.example", **MFA},
    "bob-no-mfa": {"sub": "idp-bob-0002", "email": "bob@uni.example", **PASSWORD_ONLY},
    # claims that call it alice (and an admin): the registry does not know its subject or e-mail
    "zed": {
        "sub": "idp-zed-0003",
        "email": "zed@elsewhere.example",
        "preferred_username": "alice",
        "name": "admin",
        **MFA,
    },
    "sam": {"sub": "idp-sam-0004", "email": "sam@uni.example", **MFA},
}
for login, account in ACCOUNTS.items():
    account.setdefault("email_verified", True)
    account.setdefault("name", login)
    account.setdefault("preferred_username", login)


@pytest.fixture(scope="module")
def oidc_hub(tmp_path_factory, docker_client, notebook_image):
    from sde_spawner import firewall

    state = tmp_path_factory.mktemp("oidc-hub")
    hub = Hub(state, f"sdet{uuid.uuid4().hex[:6]}")
    secret = secrets.token_urlsafe(24)
    (state / "client-secret").write_text(secret + "\n")
    provider = OidcProvider(
        state,
        client_id="tre-hub",
        client_secret=secret,
        redirect_uri=f"{hub.url}/hub/oauth_callback",
        accounts=ACCOUNTS,
    ).start()
    hub.login_env = {
        "SDE_AUTHENTICATOR": "oidc",
        "SDE_OIDC_ISSUER": provider.issuer,
        "SDE_OIDC_CLIENT_ID": "tre-hub",
        "SDE_OIDC_CLIENT_SECRET_FILE": str(state / "client-secret"),
        "SDE_OIDC_LOGIN_SERVICE": "Test IdP",
    }
    try:
        hub.seed()
        for args in (
            ("person", "add", "alice", "--idp-subject", "idp-alice-0001"),
            ("person", "add", "bob", "--email", "bob@uni.example"),
            ("person", "add", "sam", "--idp-subject", "idp-sam-0004"),
            ("person", "suspend", "sam", "--reason", "breach under investigation"),
        ):
            res = hub.admin(*args)
            assert res.returncode == 0, res.stderr
        hub.start()
        yield hub
    finally:
        hub.stop()
        provider.stop()
        remove_prefixed(docker_client, hub.prefix)
        firewall.revoke(hub.hub_port)
        firewall.revoke(hub.service_port)


def sign_in(chromium, hub, account: str):
    """A fresh browser through the hub's login button and the provider's form; the page."""
    context = chromium.new_context()
    page = context.new_page()
    page.goto(hub.url + "/hub/login")
    assert page.locator("#password_input").count() == 0  # no demo password form
    page.click("text=Sign in with Test IdP")
    page.wait_for_selector("#login")  # the provider's own page
    page.fill("#login", account)
    with page.expect_response(lambda r: "/hub/oauth_callback" in r.url) as callback:
        page.click("#submit")
    page.wait_for_load_state()
    return context, page, callback.value


def test_an_active_researcher_with_mfa_logs_in_and_starts_a_workspace(
    oidc_hub, chromium, docker_client
):
    context, page, callback = sign_in(chromium, oidc_hub, "alice")
    try:
        assert callback.status == 302, page.content()[-2000:]
        page.goto(f"{oidc_hub.url}/hub/spawn/alice/{PROJECT}")
        page.check(f'input[name=project][value="{PROJECT}"]')
        page.click("form button[type=submit]")
        page.wait_for_url(f"**/user/alice/{PROJECT}/lab**", timeout=150_000)
        page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)  # JupyterLab itself
        container = docker_client.containers.get(
            workspace_names("alice", PROJECT, oidc_hub.prefix).container
        )
        assert container.status == "running"
    finally:
        context.close()
    (login,) = oidc_hub.events(action="login", actor="alice")
    assert login["outcome"] == "allowed"
    assert login["details"]["subject"] == "idp-alice-0001"
    assert "mfa" in login["details"]["amr"]


def test_a_person_found_by_verified_email_logs_in_as_their_registry_self(oidc_hub, chromium):
    context, page, callback = sign_in(chromium, oidc_hub, "bob")
    try:
        assert callback.status == 302
        page.goto(oidc_hub.url + "/hub/home")
        assert "/hub/login" not in page.url
        me = page.evaluate("[window.jhdata.user, window.jhdata.admin_access]")
        assert me == ["bob", False]
    finally:
        context.close()
    assert [e["outcome"] for e in oidc_hub.events(action="login", actor="bob")] == ["allowed"]


@pytest.mark.parametrize(
    ("account", "refusal", "actor", "reason"),
    [
        (
            "zed",
            Refusal.unknown_person,
            "(unknown)",
            "neither subject 'idp-zed-0003' nor zed@elsewhere.example is registered",
        ),
        ("sam", Refusal.suspended, "sam", "account suspended"),
        (
            "bob-no-mfa",
            Refusal.no_second_factor,
            "(unknown)",  # bob is matched by e-mail, after the second factor is checked
            "no second factor in the login (amr ['pwd'], acr 'urn:sde:loa:1')",
        ),
    ],
)
def test_unknown_suspended_and_password_only_logins_are_refused_with_a_page_and_an_event(
    oidc_hub, chromium, account, refusal, actor, reason
):
    sub = ACCOUNTS[account]["sub"]

    def logins():
        return [e for e in oidc_hub.events(action="login") if e["details"]["subject"] == sub]

    before = logins()
    context, page, callback = sign_in(chromium, oidc_hub, account)
    try:
        assert callback.status == 403
        assert PAGES[refusal] in page.inner_text("body")
        page.goto(oidc_hub.url + "/hub/home")
        assert "/hub/login" in page.url  # not logged in
    finally:
        context.close()
    events = [e for e in oidc_hub.events(action="login.refused") if e["details"]["subject"] == sub]
    assert [(e["actor"], e["outcome"], e["reason"], e["details"]["code"]) for e in events] == [
        (actor, "denied", reason, refusal.value)
    ]
    assert logins() == before


def test_an_id_token_issued_for_another_browsers_login_is_refused(oidc_hub, chromium):
    """The nonce binds the ID token to the browser that started the login: with another
    browser's (validly signed) nonce cookie, alice's own login is refused and audited."""
    other = chromium.new_context()
    other.new_page().goto(oidc_hub.url + "/hub/oauth_login")
    (foreign,) = [c for c in other.cookies() if c["name"] == "sde-oidc-nonce"]
    other.close()
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(oidc_hub.url + "/hub/oauth_login")
        page.wait_for_selector("#login")
        context.add_cookies([foreign])
        page.fill("#login", "alice")
        with page.expect_response(lambda r: "/hub/oauth_callback" in r.url) as callback:
            page.click("#submit")
        page.wait_for_load_state()
        assert callback.value.status == 403
        assert PAGES[Refusal.id_token_invalid] in page.inner_text("body")
    finally:
        context.close()
    (event,) = [
        e
        for e in oidc_hub.events(action="login.refused")
        if e["details"]["code"] == Refusal.id_token_invalid.value
    ]
    assert event["reason"] == "ID token nonce does not match this browser's login"
    assert event["actor"] == "(unknown)"


def test_a_replayed_authorisation_code_is_refused_with_a_page_and_an_event(oidc_hub, chromium):
    """alice's code, once used, brought back inside a fresh login (with that login's own state,
    so the hub's state check passes): the provider refuses the exchange, and so does the hub."""
    from urllib.parse import parse_qs, urlparse

    context = chromium.new_context()
    page = context.new_page()
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    try:
        page.goto(oidc_hub.url + "/hub/oauth_login")
        page.fill("#login", "alice")
        page.click("#submit")
        page.wait_for_url(lambda url: "/hub/" in url and "oauth" not in url)
        (used,) = [u for u in seen if "/hub/oauth_callback" in u]
        code = parse_qs(urlparse(used).query)["code"][0]
        # A new login (new state and nonce cookies in this browser), not followed to the
        # provider, whose session would answer it at once.
        started = context.request.get(oidc_hub.url + "/hub/oauth_login", max_redirects=0)
        assert started.status == 302
        state = parse_qs(urlparse(started.headers["location"]).query)["state"][0]
        response = page.goto(f"{oidc_hub.url}/hub/oauth_callback?code={code}&state={state}")
        assert response.status == 403, page.inner_text("body")
        assert PAGES[Refusal.code_exchange_failed] in page.inner_text("body")
    finally:
        context.close()
    (event,) = [
        e
        for e in oidc_hub.events(action="login.refused")
        if e["details"]["code"] == Refusal.code_exchange_failed.value
    ]
    assert event["reason"].startswith("token endpoint: ") and event["outcome"] == "denied"
