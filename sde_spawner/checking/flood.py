"""Flood limits applied by handlers: the caller's address, its refusal budget, and the
:class:`Limited` mixin of the workspace API and the release downloads (request budgets
checked before any work, refusals audited within the budget, path ids and body sizes
refused with 400/413 and a reason). The rules themselves are :mod:`.limits`."""

from __future__ import annotations

import asyncio

from tornado import web

from sde_spawner.checking import errors, limits, sweep


def client_ip(handler: web.RequestHandler) -> str:
    """The caller's address (the last X-Forwarded-For hop only behind the local proxy)."""
    return limits.for_app(handler.settings).client(
        handler.request.remote_ip, handler.request.headers.get("X-Forwarded-For")
    )


def admit_denial(handler: web.RequestHandler, exc: errors.Refused) -> bool:
    """True if this refusal gets its own audit row; False once the caller's refusal budget
    is used up (it is then counted into the caller's ``rate.limited`` row)."""
    return limits.for_app(handler.settings).audit_refusal(
        [("addr", client_ip(handler))], f"{exc.status} {exc.action}"
    )


class Limited:
    """Flood limits of a handler (mixed into the workspace API and the release downloads):
    a request budget per client checked before any work, refusals audited one by one only
    within the client's refusal budget (beyond it they are counted into one ``rate.limited``
    row per client and window), and ids that cannot be database ids refused with 400."""

    _retry_after: float = 0.0

    @property
    def limits(self) -> limits.Limits:
        return limits.for_app(self.settings)

    @property
    def client_ip(self) -> str:
        """The caller's address (the last X-Forwarded-For hop only behind the local proxy)."""
        return client_ip(self)

    def refusal_keys(self) -> list[tuple]:
        return [("addr", self.client_ip)]

    async def gate(self, keys: list[tuple] | None = None, **kwargs) -> None:
        """429 (with Retry-After) if these keys used up their request or refusal budget."""
        verdict = self.limits.admit(keys or self.refusal_keys(), **kwargs)
        if not verdict.ok:
            await self.write_aggregates()
            self._retry_after = verdict.retry_after
            raise web.HTTPError(verdict.status, verdict.reason.replace("%", "%%"))

    async def write_aggregates(self) -> None:
        await asyncio.to_thread(sweep.write_aggregates, self.settings["sessionmaker"], self.limits)

    def audit_denial(self, exc: errors.Refused) -> bool:
        return admit_denial(self, exc)

    async def run(self, operation, /, *args, **kwargs):
        """:meth:`_Base.run`, with refusals audited within the client's refusal budget."""
        try:
            return await asyncio.to_thread(
                errors.perform_gated,
                self.settings["sessionmaker"],
                self.audit_denial,
                operation,
                *args,
                **kwargs,
            )
        except errors.Refused as exc:
            self._refused = exc  # its code and problems go into the error body
            raise web.HTTPError(exc.status, exc.reason.replace("%", "%%")) from None

    async def check_ids(self, actor: str | None = None) -> None:
        for arg in self.path_args:
            if arg.isdigit() and limits.parse_id(arg) is None:
                await self.deny(
                    self.action,
                    f"id {arg[:24]}{'…' if len(arg) > 24 else ''} is out of range",
                    actor=actor,
                    status=400,
                )

    async def limit_body(self, limit: int, actor: str | None = None) -> None:
        """Refuse a declared body over ``limit`` now (413); cut a chunked one off at it."""
        length = limits.declared_length(self.request.headers)
        if length is not None and length > limit:
            await self.deny(
                self.action,
                f"request body of {length} bytes is over this route's limit of {limit} bytes",
                actor=actor,
                status=413,
            )
        self.request.connection.set_max_body_size(limit)

    def set_retry_after(self) -> None:
        if self._retry_after:
            self.set_header("Retry-After", str(int(self._retry_after)))
