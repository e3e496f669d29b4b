"""Open redirects: a crafted link to the hub or to a workspace must not send a logged-in
researcher's browser to another site after login (jupyter_server GHSA-r726-vmfq-j9j3 /
CVE-2023-39968, notebook GHSA-c7vm-f5p4-8fqh / CVE-2020-26215: a link that looks like the TRE's
own ends on a look-alike page asking for the password again).

Each crafted ``next`` is followed hop by hop, but only while the redirect stays on the hub's
own loopback address; a hop anywhere else is the breach and is never requested. The control
is an on-site ``next``: the very same chain does end where it says, so the probe follows
``next`` and would see an off-site one.
"""

from __future__ import annotations

import urllib.parse

import pytest
import requests

from tests.support import OPEN_SESSIONS, User

pytestmark = pytest.mark.docker

PROJECT = "diabetes-outcomes"
EVIL = "evil.sde-test.invalid"
#: Spellings of an off-site URL that browsers follow and naive checks let through (the
#: jupyter_server fix covers these shapes: scheme-relative, backslash, missing slash, encoded).
CRAFTED = (
    f"https://{EVIL}/login",
    f"//{EVIL}/login",
    f"///{EVIL}/login",
    f"/\\{EVIL}/login",
    f"\\\\{EVIL}/login",
    f"https:/{EVIL}/login",
    f"/%2F{EVIL}/login",
    f"%2F%2F{EVIL}/login",
)


def follow(session: requests.Session, hub, method: str, url: str, **kw) -> list[str]:
    """Every Location of the chain, requesting only those on the hub's own address."""
    own = urllib.parse.urlsplit(hub.url).netloc
    seen = []
    r = session.request(method, url, allow_redirects=False, timeout=30, **kw)
    for _ in range(10):
        location = r.headers.get("location")
        if r.status_code not in (301, 302, 303, 307, 308) or not location:
            break
        target = browser_join(r.url, location)
        seen.append(target)
        if urllib.parse.urlsplit(target).netloc != own:
            break  # off-site: the breach, not followed
        r = session.get(target, allow_redirects=False, timeout=30)
    return seen


def browser_join(base: str, location: str) -> str:
    """Resolve a Location as a browser does (the WHATWG URL parser drops tabs and newlines
    and reads a backslash as a slash in http(s) URLs, so ``/\\host`` is ``//host``)."""
    cleaned = location.translate({9: None, 10: None, 13: None}).replace("\\", "/")
    return urllib.parse.urljoin(base, cleaned)


def off_site(hub, chain: list[str]) -> list[str]:
    own = urllib.parse.urlsplit(hub.url).netloc
    return [u for u in chain if urllib.parse.urlsplit(u).netloc != own]


def fresh_session(hub) -> requests.Session:
    s = requests.Session()
    OPEN_SESSIONS.append(s)
    s.get(f"{hub.url}/hub/login", timeout=10)
    return s


def login_chain(hub, next_url: str) -> list[str]:
    s = fresh_session(hub)
    xsrf = next(c.value for c in s.cookies if c.name == "_xsrf")
    return follow(
        s,
        hub,
        "POST",
        f"{hub.url}/hub/login?next={urllib.parse.quote(next_url, safe='')}",
        data={"username": "alice", "password": "demo", "_xsrf": xsrf},
    )


@pytest.mark.parametrize("crafted", CRAFTED)
def test_the_hub_login_does_not_redirect_off_site(hub, crafted):
    chain = login_chain(hub, crafted)
    assert chain, "the login did not redirect at all"
    assert off_site(hub, chain) == [], chain


def test_control_the_hub_login_follows_an_on_site_next(hub):
    chain = login_chain(hub, "/hub/token")
    assert chain and urllib.parse.urlsplit(chain[-1]).path == "/hub/token", chain


@pytest.fixture(scope="module")
def alice(hub):
    user = User(hub, "alice")
    assert user.logged_in, hub.log_tail()
    user.ensure_running(PROJECT)
    return user


def test_the_workspace_has_no_login_handler_to_redirect_from(hub, alice):
    """jupyter_server's own login page (where CVE-2023-39968 was) is not served: the
    workspace logs in through the hub's OAuth only, whose state carries the request's own
    path under ``/user/alice/PROJECT/`` back (never a ``next`` from the link)."""
    url = f"{hub.url}/user/alice/{PROJECT}/login?next={urllib.parse.quote(CRAFTED[0], safe='')}"
    r = alice.s.get(url, allow_redirects=False, timeout=30)
    assert r.status_code == 404 and "location" not in r.headers, (r.status_code, r.headers)


def test_control_the_oauth_round_trip_returns_to_the_page_asked_for(hub, alice):
    fresh = User(hub, "alice")  # no workspace cookie yet: the round trip happens
    target = f"/user/alice/{PROJECT}/lab"
    chain = follow(fresh.s, hub, "GET", f"{hub.url}{target}")
    assert any("/hub/api/oauth2/authorize" in u for u in chain), chain
    assert urllib.parse.urlsplit(chain[-1]).path == target, chain
