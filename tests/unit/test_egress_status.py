"""The egress extension loads into a real jupyter_server and serves an authenticated status.

pytest_jupyter runs the server on its own loop (``jp_asyncio_loop``); with pytest-asyncio in
auto mode an ``async def`` test would run on a different loop and never reach the server, so
these tests are plain functions that drive requests on the server's loop.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import HTTPClientError

import egress_extension

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"egress_extension": True}}}


@pytest.fixture
def fetch(jp_fetch, jp_asyncio_loop):
    """jp_fetch, run to completion on the server's own event loop."""

    def run(*parts, **kwargs):
        return jp_asyncio_loop.run_until_complete(jp_fetch(*parts, **kwargs))

    return run


def test_extension_points_name_the_module_and_its_app():
    from egress_extension.app import EgressApp

    assert egress_extension._jupyter_server_extension_points() == [
        {"module": "egress_extension", "app": EgressApp}
    ]


def test_status_returns_name_and_version(fetch):
    response = fetch("egress", "api", "status")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.body) == {
        "extension": "egress_extension",
        "version": egress_extension.__version__,
    }


def test_activity_status_says_there_is_no_service_in_a_bare_server(fetch):
    # No SDE_SERVICE_URL outside the TRE: exports are off, activity waits in the queue.
    body = json.loads(fetch("egress", "api", "activity").body)
    assert body["export_service"] is False
    assert body["audit"]["destination"] is None and body["audit"]["lost_unreported"] == 0


def test_status_refuses_a_wrong_token(fetch):
    with pytest.raises(HTTPClientError) as raised:
        fetch("egress", "api", "status", headers={"Authorization": "token wrong"})
    assert raised.value.code == 403


def test_status_is_mounted_below_base_url(
    fetch, jp_base_url, jp_asyncio_loop, http_server_client, jp_auth_header
):
    # jp_base_url is a non-root prefix ("/a%40b/"); the route must live under it, not at "/".
    served = urlsplit(fetch("egress", "api", "status").effective_url).path
    assert served == jp_base_url + "egress/api/status"
    with pytest.raises(HTTPClientError) as raised:
        jp_asyncio_loop.run_until_complete(
            http_server_client.fetch("/egress/api/status", headers=jp_auth_header)
        )
    assert raised.value.code == 404
