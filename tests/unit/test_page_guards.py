"""Every page of the ``sde`` service takes a person's browser session and nothing else.

The pages are enumerated from the app's own routes (``make_app``: the checking routes, the
audit page routes and the rest), so a new page is covered the day it is added: each must be a
:class:`~sde_spawner.services.pages.BrowserPage`, and each method of each page is sent every way
of carrying a token that HubAuth accepts (tab-separated, ``Bearer``, extra spaces, ``?token=``,
``?token=`` as a websocket, a ``token`` form field) plus a few it does not, with and without
the browser cookie. All are refused 403 with the reason, and each leaves an audit event naming
the path. A control shows HubAuth itself would have taken each of its transports as the
token's owner, i.e. the probe would see the breach without the guard. Forms need their xsrf
token even where HubAuth would skip the check. The same requests with the cookie (and form
token) pass the guard.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from tornado import httputil, web
from tornado.escape import xhtml_escape

from sde_spawner.checking.testing import PROJECT, FakeHubOAuth, browser_model, server_token_model
from sde_spawner.services.app import OAuthCallbackHandler
from sde_spawner.services.pages import BROWSER_ONLY, STALE_FORM, BrowserPage, token_transport
from tests.unit.test_checking_handlers import (  # noqa: F401 - fixtures
    PEOPLE,
    PREFIX,
    Service,
    db,
    events,
    review_all,
    submit_request,
)
from tests.unit.test_imports_handlers import upload

METHODS = ("get", "post", "put", "delete", "patch")
GUARD_REASONS = (
    "browser login",
    "xsrf token is missing or stale",
    "served only through the hub",
    "not logged in",
    "may not use the sde service",
)


@pytest.fixture
def hub_auth():
    tokens = {f"oauth-{u}": browser_model(u) for u in (*PEOPLE, "admin")}
    tokens["ws-alice"] = server_token_model("alice", PROJECT)
    tokens["personal-admin"] = {**browser_model("admin"), "scopes": ["self"]}
    return FakeHubOAuth(tokens)


@pytest.fixture
async def svc(tmp_path, db, hub_auth, monkeypatch):  # noqa: F811 - db is the imported fixture
    # Hundreds of refusals from one address here: every one is to be audited on its own, so
    # the flood budgets (tests/unit/test_flood.py) are set out of reach.
    for name in ("REFUSAL_BURST", "REQUEST_BURST", "TOTAL_REFUSAL_BURST"):
        monkeypatch.setenv(f"SDE_LIMIT_{name}", str(10**6))
    s = Service(tmp_path, hub_auth)
    yield s
    await s.stop()


def expand(pattern: str) -> list[str]:
    """Concrete paths (below the prefix) matching a route pattern; ids are 1."""
    path = pattern.removesuffix("$").removeprefix(PREFIX)
    path = path.replace(r"(\d+)", "1").replace("/?", "/")
    m = re.search(r"\(([^()]*)\)(\?)?", path)
    if m is None:
        return [path.replace("\\", "")]
    options = m.group(1).split("|") + ([""] if m.group(2) else [])
    return [p for o in options for p in expand(PREFIX + path[: m.start()] + o + path[m.end() :])]


def streamed(handler: type) -> bool:
    """A page whose body streams in after the guard (the import upload form)."""
    return bool(getattr(handler, "_stream_request_body", False))


def methods_of(cls) -> list[str]:
    return [m.upper() for m in METHODS if getattr(cls, m) is not getattr(web.RequestHandler, m)]


def app_routes(svc: Service) -> list[tuple[str, type]]:
    return [(r.matcher.regex.pattern, r.target) for r in svc.app.wildcard_router.rules]


def is_page(pattern: str, handler: type) -> bool:
    """Everything the service serves is a page except its token APIs and the OAuth callback."""
    return not pattern.startswith(PREFIX + "api/") and handler is not OAuthCallbackHandler


def page_requests(svc: Service) -> list[tuple[str, str, type]]:
    return [
        (method, path, handler)
        for pattern, handler in app_routes(svc)
        if is_page(pattern, handler)
        for path in expand(pattern)
        for method in methods_of(handler)
    ]


#: (name, headers, query, form body, does HubAuth itself read a token from it?)
TOKEN_VARIANTS = [
    ("tab", {"Authorization": "token\t{t}"}, {}, {}, True),
    ("bearer", {"Authorization": "Bearer {t}"}, {}, {}, True),
    ("spaces", {"Authorization": "TOKEN   {t}"}, {}, {}, True),
    ("space", {"Authorization": "token {t}"}, {}, {}, True),
    ("websocket-query", {"Sec-Fetch-Mode": "websocket"}, {"token": "{t}"}, {}, True),
    ("websocket-form", {"Sec-Fetch-Mode": "websocket"}, {}, {"token": "{t}"}, "POST"),
    ("query", {}, {"token": "{t}"}, {}, False),
    ("form", {}, {}, {"token": "{t}"}, False),
    ("basic", {"Authorization": "Basic {t}"}, {}, {}, False),
    ("empty-authorization", {"Authorization": ""}, {}, {}, False),
]


def fill(d: dict, token: str) -> dict:
    return {k: v.format(t=token) for k, v in d.items()}


def request_for(svc, method, path, headers, query, form):
    body = urlencode(form).encode() if method != "GET" else b""
    req = httputil.HTTPServerRequest(
        start_line=httputil.RequestStartLine(
            method, PREFIX + path + ("?" + urlencode(query) if query else ""), "HTTP/1.1"
        ),
        headers=httputil.HTTPHeaders(
            {**headers, "Host": "127.0.0.1", "Content-Type": "application/x-www-form-urlencoded"}
        ),
        body=body,
        connection=_Connection(),
    )
    req._parse_body()
    return req


class _Connection:
    def set_close_callback(self, callback):
        pass


def test_control_hubauth_itself_takes_the_token_from_each_of_its_transports(svc):
    """Without the guard HubAuth would authenticate these requests as the token's owner."""
    auth = svc.app.settings["hub_auth"]
    for name, headers, query, form, hub_reads in TOKEN_VARIANTS:
        for method in ("GET", "POST") if not form else ("POST",):
            t = "ws-alice"
            req = request_for(
                svc, method, "releases/", fill(headers, t), fill(query, t), fill(form, t)
            )
            handler = web.RequestHandler(svc.app, req)
            reads = hub_reads is True or hub_reads == method
            got = auth.get_token(handler, in_cookie=False)
            assert (got == "ws-alice") is reads, (name, method, got)
            assert token_transport(req) is not None, name  # and the guard sees every one


def test_every_route_of_the_service_is_a_guarded_page_or_a_token_api(svc):
    routes = app_routes(svc)
    pages = [(p, h) for p, h in routes if is_page(p, h)]
    assert {h.__name__ for _, h in pages} >= {
        "IndexHandler",
        "QueueHandler",
        "RequestPageHandler",
        "ClaimHandler",
        "ReviewHandler",
        "PreviewHandler",
        "ReleasesHandler",
        "DownloadHandler",
        "ManifestHandler",
        "AuditPageHandler",
    }
    for pattern, handler in pages:
        assert issubclass(handler, BrowserPage), pattern
        assert handler.prepare is BrowserPage.prepare, pattern  # the guard is not overridden
    for pattern, handler in routes:
        if not is_page(pattern, handler):
            assert not issubclass(handler, BrowserPage), pattern


async def test_every_page_refuses_every_token_transport_with_a_reason_and_an_event(svc, db):  # noqa: F811
    await submit_request(svc)
    requests = page_requests(svc)
    assert len(requests) >= 12  # every method of every page (audit/ and its export included)
    await svc.fetch("GET", "checking/", user="chris")  # the cookie session, with its xsrf
    sent = 0
    for method, path, handler in requests:
        for name, headers, query, form, _reads in TOKEN_VARIANTS:
            if form and (method == "GET" or streamed(handler)):
                continue  # a streamed page's body is read after the guard, by the page alone
            for token in ("ws-alice", "personal-admin"):
                for cookie in (None, "chris"):
                    q = "?" + urlencode(fill(query, token)) if query else ""
                    fields = {**fill(form, token)}
                    if cookie and method != "GET":
                        fields["_xsrf"] = svc.jars["chris"]["_xsrf"]
                    r = await svc.fetch(
                        method,
                        path + q,
                        user=cookie,
                        headers={
                            **fill(headers, token),
                            "Content-Type": "application/x-www-form-urlencoded",
                        },
                        body=urlencode(fields) if method != "GET" else None,
                    )
                    what = (method, path, name, token, cookie)
                    assert r.code == 403, (*what, r.code, r.body[:300])
                    assert b"browser login" in r.body and b"carried" in r.body, what
                    event = events(db, outcome="denied")[-1]
                    assert event["details"]["path"] == PREFIX + path, what
                    assert BROWSER_ONLY in event["reason"], what
                    owner = "alice" if token == "ws-alice" else "admin"
                    if name not in ("basic", "empty-authorization"):
                        assert event["actor"] == owner, (*what, event["actor"])
                    sent += 1
    assert len(events(db, outcome="denied")) == sent


async def test_forms_need_their_xsrf_token_even_where_hubauth_would_skip_it(svc, db):  # noqa: F811
    rid = await submit_request(svc)
    await svc.fetch("GET", "checking/", user="chris")
    await svc.fetch("GET", "checking/", user="dana")  # another person's valid form token
    posts = [(m, p) for m, p, _ in page_requests(svc) if m == "POST"]
    assert posts
    for _method, path in posts:
        for headers in ({}, {"Sec-Fetch-Mode": "websocket"}, {"Sec-Fetch-Mode": "navigate"}):
            for xsrf in (None, "forged", svc.jars["dana"]["_xsrf"]):
                fields = {"version": "1"} | ({"_xsrf": xsrf} if xsrf else {})
                r = await svc.fetch(
                    "POST",
                    path,
                    user="chris",
                    body=urlencode(fields),
                    headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
                )
                assert r.code == 403 and xhtml_escape(STALE_FORM).encode() in r.body, (path, xsrf)
                event = events(db, outcome="denied")[-1]
                assert event["reason"] == STALE_FORM and event["details"]["path"] == PREFIX + path
    # nothing was claimed or reviewed
    assert b'id="claim"' in (await svc.fetch("GET", f"checking/requests/{rid}", user="chris")).body


async def test_the_browser_session_passes_the_guard_on_every_page(svc, db):  # noqa: F811
    rid = await submit_request(svc)
    await review_all(svc, "chris", rid)
    await review_all(svc, "dana", rid)  # approved: releases, downloads and manifests exist
    await upload(svc, "alice", [("codes.csv", b"code,label\nE11,diabetes\n")])  # import 1
    person = {"audit": "admin", "admin": "admin", "releases": "alice"}
    for method, path, handler in page_requests(svc):
        user = person.get(path.split("/")[0], "chris")
        if user not in svc.jars:
            await svc.fetch("GET", "", user=user)  # the first page visit sets the xsrf cookie
        if method == "GET":
            r = await svc.fetch("GET", path, user=user)
            assert r.code == 200, (path, user, r.code, r.body[:300])
        elif path.startswith("imports/"):  # import pages: logic answers, never the guard
            if streamed(handler):  # the guard runs before the body: its xsrf token in the URL
                r = await svc.fetch(
                    "POST",
                    f"{path}?{urlencode({'_xsrf': svc.jars[user]['_xsrf']})}",
                    user=user,
                    body=urlencode({"version": "1"}),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            else:
                r = await svc.form_post(user, path, {"decision": "approve"})
            assert r.code < 500, (path, r.code, r.body[:300])
            assert not any(g.encode() in r.body for g in GUARD_REASONS), (path, r.body[:300])
        else:
            r = await svc.form_post(user, path, {"version": "1"})
            assert r.code in (302, 409), (
                path,
                r.code,
                r.body[:300],
            )  # logic's answer, not the guard's
        assert not any(reason.encode() in r.body for reason in GUARD_REASONS), (path, r.body[:300])
    assert not [
        e for e in events(db, outcome="denied") if any(g in e["reason"] for g in GUARD_REASONS)
    ]
    # and without a session a page sends the browser to the hub's login
    for path in ("checking/", "audit/", "audit/export.jsonl", "releases/"):
        r = await svc.fetch("GET", path)
        assert r.code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"], path


async def test_the_audit_page_is_for_admins_only_and_through_the_proxy_only(svc, db, monkeypatch):  # noqa: F811
    r = await svc.fetch("GET", "audit/export.jsonl", user="chris")
    assert r.code == 403 and b"for administrators only" in r.body
    assert events(db, action="audit.page.refused", actor="chris")
    svc.app.settings["sde"].page_networks = ["10.99.0.0/16"]
    r = await svc.fetch("GET", "audit/export.jsonl", user="admin")
    assert r.code == 403 and b"only through the hub&#x27;s proxy" in r.body
    assert "came from 127.0.0.1" in events(db, action="audit.page.refused")[-1]["reason"]
