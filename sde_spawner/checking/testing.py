"""Helpers for testing output checking without a hub: a seeded registry and a fake HubOAuth.

Used by the unit tier (``tests/unit/test_checking_*.py``) and the render benchmark. The fake
answers the two questions the service asks the hub — "who owns this token?" and "who is this
browser?" — from a fixed table, and otherwise behaves as :class:`HubOAuth` (cookie names, xsrf
tokens), so the handlers run the same code paths as under a real hub.
"""

from __future__ import annotations

import hashlib
import weakref
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from jupyterhub.services.auth import HubOAuth
from sqlalchemy.orm import Session, sessionmaker

from sde_spawner.audit import models as _audit_models  # noqa: F401  (tables on Base)
from sde_spawner.checking import models as _checking_models  # noqa: F401
from sde_spawner.db import Base, make_engine, make_sessionmaker
from sde_spawner.imports import models as _import_models  # noqa: F401  (the service's pages)
from sde_spawner.registry.models import (
    Membership,
    Person,
    PersonStatus,
    Project,
    ProjectStatus,
    Role,
    Workspace,
)

PROJECT = "p1"
OTHER_PROJECT = "p2"

#: username -> [(project, role)]
PEOPLE = {
    "alice": [(PROJECT, Role.researcher)],
    "bob": [(PROJECT, Role.researcher), (PROJECT, Role.output_checker)],
    "chris": [(PROJECT, Role.output_checker)],
    "dana": [(PROJECT, Role.output_checker)],
    "erin": [(PROJECT, Role.output_checker)],
    "olga": [(OTHER_PROJECT, Role.output_checker), (OTHER_PROJECT, Role.researcher)],
    "sam": [(PROJECT, Role.output_checker)],  # suspended below
}
SUSPENDED = {"sam"}


def make_db(directory: str | Path, *, required_approvals: int = 2) -> sessionmaker[Session]:
    """A fresh SQLite registry under ``directory`` with :data:`PEOPLE` seeded."""
    url = f"sqlite:///{Path(directory) / 'registry.sqlite'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    Session = make_sessionmaker(engine)
    seed(Session, required_approvals=required_approvals)
    return Session


def seed(Session: sessionmaker[Session], *, required_approvals: int = 2) -> None:
    with Session() as s, s.begin():
        projects = {
            slug: Project(
                slug=slug,
                title=slug,
                status=ProjectStatus.approved,
                required_approvals=required_approvals,
            )
            for slug in (PROJECT, OTHER_PROJECT)
        }
        s.add_all(projects.values())
        for name, roles in PEOPLE.items():
            person = Person(
                username=name,
                status=PersonStatus.suspended if name in SUSPENDED else PersonStatus.active,
                training_expires=date.today() + timedelta(days=365),
            )
            s.add(person)
            for slug, role in roles:
                s.add(Membership(person=person, project=projects[slug], role=role))


def open_workspace(
    Session, username: str, project: str, server: str | None = None, address: str = "127.0.0.1"
) -> str:
    """Record a running workspace (as the spawner would); returns its server name."""
    server = server if server is not None else project
    with Session() as s, s.begin():
        s.add(
            Workspace(
                username=username,
                server_name=server,
                project_slug=project,
                container=f"sde-{username}-{server}",
                address=address,
                started_at=datetime.now(UTC).replace(tzinfo=None),
            )
        )
    return server


def server_token_model(username: str, server: str) -> dict:
    """The hub's whoami answer for a workspace's server token."""
    return {
        "kind": "user",
        "name": username,
        "admin": False,
        "groups": [],
        "scopes": [
            f"access:servers!server={username}/{server}",
            f"users:activity!user={username}",
            f"read:users:activity!user={username}",
            f"read:users:groups!user={username}",
            f"read:users:name!user={username}",
        ],
    }


def browser_model(username: str) -> dict:
    """The hub's whoami answer for a person's OAuth token issued to the sde service."""
    return {
        "kind": "user",
        "name": username,
        "admin": False,
        "groups": [],
        "scopes": [
            "access:services!service=sde",
            f"read:users:name!user={username}",
            f"read:users:groups!user={username}",
        ],
    }


_LIVE: weakref.WeakSet = weakref.WeakSet()


def close_all_fake_auths() -> None:
    """Close the background loops of every :class:`FakeHubOAuth` still alive (tests call it
    after each test: an unclosed loop is a ResourceWarning, an error under -W error)."""
    for auth in list(_LIVE):
        auth.close()


class FakeHubOAuth(HubOAuth):
    """HubOAuth whose hub is a dict: token -> whoami model."""

    def close(self) -> None:
        """Close HubAuth's background loop for sync lookups, if one was made."""
        if "_pool" in self._trait_values:  # made on first use (and again after this)
            pool = self._trait_values.pop("_pool")
            loop = getattr(self, "_thread_loop", None)
            if loop is not None and not loop.is_closed():
                pool.submit(loop.close).result()
            pool.shutdown(wait=True)

    def __init__(self, tokens: dict[str, dict] | None = None, **kwargs):
        kwargs.setdefault("api_token", "service-token")
        kwargs.setdefault("api_url", "http://127.0.0.1:1/hub/api")
        kwargs.setdefault("oauth_client_id", "service-sde")
        kwargs.setdefault("base_url", "/services/sde/")
        kwargs.setdefault("hub_prefix", "/hub/")
        kwargs.setdefault("oauth_redirect_uri", "http://127.0.0.1/services/sde/oauth_callback")
        kwargs.setdefault("access_scopes", {"access:services!service=sde"})
        super().__init__(**kwargs)
        self.tokens: dict[str, dict] = dict(tokens or {})
        _LIVE.add(self)

    def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        model = self.tokens.get(token)
        if sync:
            return model

        async def answer():
            return model

        return answer()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
