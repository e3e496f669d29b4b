"""Every HTTP route of the workspace server, classified; routes nobody classified are closed.

A file can leave the workspace through any route that serves bytes, not only ``/files/``.
:data:`ROUTES` names each route the server exposes (jupyter_server, jupyterlab_server,
JupyterLab, jupyter_server_terminals, jupyter-lsp, JupyterHub's single-user extension and
this extension) with what it is allowed to return:

* ``blocked`` -- answered 403 with a reason and a ``download.blocked`` event
  (:class:`~egress_extension.blocking.BlockedDownloadHandler` put in place of the handler);
* ``audited`` -- file content only through the audited contents API
  (:mod:`egress_extension.activity`, :mod:`egress_extension.blocking`) or the bounded and
  audited JupyterLab settings/workspaces (:mod:`egress_extension.labstate`);
* ``image`` -- serves only files of the read-only image: every directory such a route
  serves from, and every kernelspec directory, is checked at start and dropped when the
  server could write to it (:func:`read_only`);
* ``api`` -- returns no file content (status, lists, metadata, login pages);
* ``session`` -- kernel and terminal traffic: what the researcher runs and sees, recorded
  as ``code.executed`` and ``terminal.opened``.

:func:`enforce` runs once every extension has added its handlers (when the server's loop
starts). A route that matches no entry -- a new one in a future version of any of these
packages -- is replaced by a blocking handler (``download.blocked``, channel ``route``) until
someone reads what it serves and adds it here; ``tests/unit/test_egress_routes.py`` fails on
it too. ``GET egress/api/routes`` lists the result.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import ensure_async
from jupyter_server.kernelspecs.handlers import KernelSpecResourceHandler
from tornado import web
from tornado.routing import PathMatches, Router, RuleRouter

from egress_extension.blocking import BlockedDownloadHandler

if TYPE_CHECKING:
    from egress_extension.app import EgressApp

BLOCKED, AUDITED, IMAGE, API, SESSION = "blocked", "audited", "image", "api", "session"
KINDS = (BLOCKED, AUDITED, IMAGE, API, SESSION)


@dataclass(frozen=True)
class Route:
    """One classified route: its URL pattern below the base URL (as the server writes it,
    without the trailing ``$``) and the handler class (``module.Class``)."""

    pattern: str
    handler: str
    kind: str
    why: str
    channel: str = ""  # for blocked routes: the channel named in the audit event


_JS = "jupyter_server"
_CONTENTS = r"/api/contents(?P<path>(?:(?:/[^/]+)+|/?))"
_KERNEL = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"
_SESSION = r"(?P<session_id>\w+-\w+-\w+-\w+-\w+)"
_KSPEC = r"(?P<kernel_name>[\w\.\-%]+)"
_PATH = r"(?P<path>(?:(?:/[^/]+)+|/?))"

ROUTES: tuple[Route, ...] = (
    # -- this extension --------------------------------------------------------------------
    Route(r"/egress/api/status", "egress_extension.handlers.StatusHandler", API, "version"),
    Route(
        r"/egress/api/activity",
        "egress_extension.handlers.ActivityStatusHandler",
        API,
        "shipping counters",
    ),
    Route(
        r"/egress/api/requests",
        "egress_extension.handlers.RequestsHandler",
        API,
        "export requests: content goes to the checking service, never back",
    ),
    Route(
        r"/egress/api/requests/(\d+)/versions",
        "egress_extension.handlers.RequestsHandler",
        API,
        "a new version of a returned export request",
    ),
    Route(
        r"/egress/api/requests/(\d+)/withdraw",
        "egress_extension.handlers.WithdrawHandler",
        API,
        "withdraw a request",
    ),
    Route(r"/egress/api/files", "egress_extension.handlers.FilesHandler", API, "names, sizes"),
    Route(
        r"/egress/api/checks",
        "egress_extension.handlers.ChecksHandler",
        API,
        "disclosure findings (cell counts, never the table)",
    ),
    Route(r"/egress/api/routes", "egress_extension.handlers.RoutesHandler", API, "this list"),
    Route(
        r"/egress/api/clipboard",
        "egress_extension.handlers.ClipboardHandler",
        API,
        "reports of copies the page blocked in (recorded), nothing out",
    ),
    Route(
        r"/egress/api/data",
        "egress_extension.handlers.DataHandler",
        API,
        "the extract's data dictionary, names and sizes of its files (no content)",
    ),
    Route(r"/egress/?", "egress_extension.handlers.PageHandler", API, "the export page"),
    # -- the download channels -------------------------------------------------------------
    *(
        Route(
            rf"/{channel}(?:/.*)?",
            "egress_extension.blocking.BlockedDownloadHandler",
            BLOCKED,
            "raw download channel",
            channel,
        )
        for channel in ("files", "nbconvert", "view")
    ),
    Route(
        r"/files/(.*)",
        f"{_JS}.base.handlers.AuthenticatedFileHandler",
        BLOCKED,
        "raw file download",
        "files",
    ),
    Route(rf"/view{_PATH}", f"{_JS}.view.handlers.ViewHandler", BLOCKED, "file in a tab", "view"),
    Route(
        r"/nbconvert/(?P<format>\w+)",
        f"{_JS}.nbconvert.handlers.NbconvertPostHandler",
        BLOCKED,
        "notebook export",
        "nbconvert",
    ),
    Route(
        rf"/nbconvert/(?P<format>\w+){_PATH}",
        f"{_JS}.nbconvert.handlers.NbconvertFileHandler",
        BLOCKED,
        "notebook export",
        "nbconvert",
    ),
    # -- contents ------------------------------------------------------------------------
    Route(
        _CONTENTS,
        "egress_extension.activity.AuditedContentsHandler",
        AUDITED,
        "reads checked by bytes and size and recorded as file.opened",
    ),
    Route(
        rf"{_CONTENTS}/checkpoints",
        f"{_JS}.services.contents.handlers.CheckpointsHandler",
        API,
        "checkpoint ids and times; restoring one writes the file, returns no content",
    ),
    Route(
        rf"{_CONTENTS}/checkpoints/(?P<checkpoint_id>[\w-]+)",
        f"{_JS}.services.contents.handlers.ModifyCheckpointsHandler",
        API,
        "restore or delete a checkpoint (204, no content)",
    ),
    Route(
        rf"{_CONTENTS}/trust",
        f"{_JS}.services.contents.handlers.TrustNotebooksHandler",
        API,
        "marks a notebook trusted (201, no content)",
    ),
    Route(
        r"/api/notebooks/?(.*)",
        f"{_JS}.services.contents.handlers.NotebooksRedirectHandler",
        API,
        "redirect to /api/contents",
    ),
    Route(
        r"/api/resolvePath",
        f"{_JS}.services.api.handlers.PathResolverHandler",
        API,
        "whether a path exists and its kind",
    ),
    # -- kernels, sessions, terminals ------------------------------------------------------
    Route(r"/api/kernels", f"{_JS}.services.kernels.handlers.MainKernelHandler", API, "list"),
    Route(rf"/api/kernels/{_KERNEL}", f"{_JS}.services.kernels.handlers.KernelHandler", API, "one"),
    Route(
        rf"/api/kernels/{_KERNEL}/(?P<action>restart|interrupt)",
        f"{_JS}.services.kernels.handlers.KernelActionHandler",
        API,
        "restart/interrupt",
    ),
    Route(
        rf"/api/kernels/{_KERNEL}/channels",
        f"{_JS}.services.kernels.websocket.KernelWebsocketHandler",
        SESSION,
        "kernel messages; code recorded as code.executed",
    ),
    Route(
        rf"/api/sessions/{_SESSION}",
        f"{_JS}.services.sessions.handlers.SessionHandler",
        API,
        "one session",
    ),
    Route(r"/api/sessions", f"{_JS}.services.sessions.handlers.SessionRootHandler", API, "list"),
    Route(
        r"/api/terminals",
        "jupyter_server_terminals.api_handlers.TerminalRootHandler",
        API,
        "list/create terminals",
    ),
    Route(
        r"/api/terminals/(\w+)",
        "jupyter_server_terminals.api_handlers.TerminalHandler",
        API,
        "one terminal",
    ),
    Route(
        r"/terminals/websocket/(\w+)",
        "jupyter_server_terminals.handlers.TermSocket",
        SESSION,
        "terminal traffic; opening recorded as terminal.opened",
    ),
    # -- kernelspecs -----------------------------------------------------------------------
    Route(
        rf"/kernelspecs/{_KSPEC}/(?P<path>.*)",
        f"{_JS}.kernelspecs.handlers.KernelSpecResourceHandler",
        IMAGE,
        "logos of kernelspecs, found only in read-only kernel directories",
    ),
    Route(
        r"/api/kernelspecs",
        f"{_JS}.services.kernelspecs.handlers.MainKernelSpecHandler",
        IMAGE,
        "kernel.json of read-only kernelspecs",
    ),
    Route(
        rf"/api/kernelspecs/{_KSPEC}",
        f"{_JS}.services.kernelspecs.handlers.KernelSpecHandler",
        IMAGE,
        "kernel.json of one read-only kernelspec",
    ),
    # -- jupyter_server, other -----------------------------------------------------------
    Route(r"/api/spec.yaml", f"{_JS}.services.api.handlers.APISpecHandler", IMAGE, "API spec"),
    Route(r"/api/status", f"{_JS}.services.api.handlers.APIStatusHandler", API, "counters"),
    Route(r"/api/me", f"{_JS}.services.api.handlers.IdentityHandler", API, "identity"),
    Route(
        r"/api/config/(?P<section_name>\w+)",
        f"{_JS}.services.config.handlers.ConfigHandler",
        IMAGE,
        "nbconfig JSON from the read-only config path (writes fail: JUPYTER_CONFIG_DIR is "
        "in the image)",
    ),
    Route(
        r"/api/nbconvert",
        f"{_JS}.services.nbconvert.handlers.NbconvertRootHandler",
        API,
        "the list of exporters (converting is blocked)",
    ),
    Route(
        r"/api/security/csp-report",
        f"{_JS}.services.security.handlers.CSPReportHandler",
        API,
        "browser reports in",
    ),
    Route(r"/api/shutdown", f"{_JS}.services.shutdown.ShutdownHandler", API, "stop the server"),
    # jupyter_server's own handler only as wrapped by activity.guarded_events_handler (events
    # in the server's schemas refused): unwrapped it is unclassified, so closed.
    Route(
        r"/api/events",
        "egress_extension.activity.GuardedEventHandler",
        API,
        "events in (none in the server's own schemas)",
    ),
    Route(
        r"/api/events/subscribe",
        f"{_JS}.services.events.handlers.SubscribeWebsocket",
        API,
        "server events (names and ids, no file content)",
    ),
    Route(r"/api", f"{_JS}.base.handlers.APIVersionHandler", API, "version"),
    Route(r"/login", f"{_JS}.auth.login.LoginFormHandler", API, "login page"),
    Route(r"/logout", f"{_JS}.auth.logout.LogoutHandler", API, "logout"),
    Route(r"/logout", "jupyterhub.singleuser.extension.JupyterHubLogoutHandler", API, "logout"),
    Route(
        r"/oauth_callback",
        "jupyterhub.singleuser.extension.JupyterHubOAuthCallbackHandler",
        API,
        "JupyterHub login",
    ),
    Route(r"/.*/", f"{_JS}.base.handlers.TrailingSlashHandler", API, "redirect"),
    Route(r"/metrics", f"{_JS}.base.handlers.PrometheusMetricsHandler", API, "metrics"),
    Route(r"/", f"{_JS}.base.handlers.MainHandler", API, "redirect to /lab"),
    Route(r"/?", f"{_JS}.base.handlers.RedirectWithParams", API, "redirect to default_url"),
    Route(r"(.*)", f"{_JS}.base.handlers.Template404", API, "404 page"),
    Route(r"/static/(.*)", f"{_JS}.base.handlers.FileFindHandler", IMAGE, "server assets"),
    Route(r"/(robots\.txt)", f"{_JS}.base.handlers.FileFindHandler", IMAGE, "asset"),
    Route(r"/(favicon\.ico)", f"{_JS}.base.handlers.FileFindHandler", IMAGE, "asset"),
    Route(
        r"/(robots\.txt|favicon\.ico)",
        f"{_JS}.base.handlers.PublicStaticFileHandler",
        IMAGE,
        "asset",
    ),
    # -- JupyterLab ----------------------------------------------------------------------
    Route(
        r"/(?P<mode>lab|doc)(?P<workspace>/workspaces/[a-zA-Z0-9\-\_]+)?(?P<tree>/tree/.*)?",
        "jupyterlab_server.handlers.LabHandler",
        API,
        "the JupyterLab page (page config, no file content)",
    ),
    Route(r"/lab/.*", "jupyterlab_server.handlers.NotFoundHandler", API, "404 page"),
    Route(
        r"/static/lab/(.*)",
        f"{_JS}.base.handlers.FileFindHandler",
        IMAGE,
        "JupyterLab's built application (app dir in the image)",
    ),
    Route(
        r"/lab/extensions/(.*)",
        f"{_JS}.base.handlers.FileFindHandler",
        IMAGE,
        "prebuilt extensions, from read-only labextensions directories only",
    ),
    Route(
        r"/lab/api/themes/(.*)",
        "jupyterlab_server.themes_handler.ThemesHandler",
        IMAGE,
        "themes, from read-only directories only",
    ),
    Route(
        r"/lab/api/licenses/(.*)",
        "jupyterlab_server.licenses_handler.LicensesHandler",
        IMAGE,
        "third-party licences of the installed extensions",
    ),
    Route(
        r"/lab/api/translations/?",
        "jupyterlab_server.translations_handler.TranslationsHandler",
        IMAGE,
        "installed language packs",
    ),
    Route(
        r"/lab/api/translations/(?P<locale>.*)",
        "jupyterlab_server.translations_handler.TranslationsHandler",
        IMAGE,
        "installed language packs",
    ),
    Route(
        r"/lab/api/listings/(.*)",
        "jupyterlab_server.listings_handler.ListingsHandler",
        API,
        "extension allow/block lists (none configured; nothing fetched)",
    ),
    Route(
        r"/lab/api/settings/?",
        "egress_extension.labstate.BoundedSettingsHandler",
        AUDITED,
        "settings: user JSON bounded and recorded",
    ),
    Route(
        r"/lab/api/settings/(?P<schema_name>.+)",
        "egress_extension.labstate.BoundedSettingsHandler",
        AUDITED,
        "settings: user JSON bounded and recorded",
    ),
    Route(
        r"/lab/api/workspaces/?",
        "egress_extension.labstate.BoundedWorkspacesHandler",
        AUDITED,
        "workspaces: stored JSON bounded and recorded",
    ),
    Route(
        r"/lab/api/workspaces/(?P<space_name>.+)",
        "egress_extension.labstate.BoundedWorkspacesHandler",
        AUDITED,
        "workspaces: stored JSON bounded and recorded",
    ),
    Route(
        r"/lab/api/build",
        "jupyterlab.handlers.build_handler.BuildHandler",
        API,
        "build status (a build cannot write the read-only app directory)",
    ),
    Route(
        r"/lab/api/extensions",
        "jupyterlab.handlers.extension_manager_handler.ExtensionHandler",
        API,
        "installed extensions; the manager must be read-only (checked)",
    ),
    Route(
        r"/lab/api/plugins",
        "jupyterlab.handlers.plugin_manager_handler.PluginHandler",
        API,
        "plugin list; changes need the read-only config directory",
    ),
    Route(
        r"/lab/api/update",
        "jupyterlab.handlers.announcements.CheckForUpdateHandler",
        API,
        "update check: must never check (checked)",
    ),
    Route(
        r"/lab/api/news",
        "jupyterlab.handlers.announcements.NewsHandler",
        API,
        "news feed: must be switched off (checked)",
    ),
    # -- jupyter-lsp: language servers read files and run programs; none is installed ------
    Route(
        r"/lsp/status",
        "jupyter_lsp.handlers.LanguageServersHandler",
        BLOCKED,
        "language servers (not offered)",
        "lsp",
    ),
    Route(
        r"/lsp/ws/(?P<language_server>.*)",
        "jupyter_lsp.handlers.LanguageServerWebSocketHandler",
        BLOCKED,
        "language servers (not offered)",
        "lsp",
    ),
)

UNCLASSIFIED_REASON = (
    "This workspace server route has not been reviewed for what it serves, so it is closed "
    "in this Secure Data Environment."
)


@dataclass
class Found:
    """One route of the running server: where it is and how it was classified."""

    pattern: str
    handler: str
    kind: str
    why: str
    rule: Any

    def as_dict(self) -> dict:
        return {
            "pattern": self.pattern,
            "handler": self.handler,
            "kind": self.kind,
            "why": self.why,
            "closed": self.rule.target is BlockedDownloadHandler,
        }


def qualname(target: Any) -> str:
    if isinstance(target, type):
        return f"{target.__module__}.{target.__name__}"
    return repr(target)


def classify(pattern: str, handler: str) -> Route | None:
    """The entry of :data:`ROUTES` for a route, or None if nobody classified it."""
    for route in ROUTES:
        if route.pattern == pattern and route.handler == handler:
            return route
    return None


def walk(router: Router):
    """Every path rule below ``router`` (nested routers included), in matching order."""
    for rule in getattr(router, "rules", ()):
        if isinstance(rule.target, RuleRouter):
            yield from walk(rule.target)
        elif isinstance(rule.matcher, PathMatches):
            yield rule


def relative_pattern(regex: str, base_url: str) -> str:
    """A route's regex below the server's base URL, without the trailing ``$``."""
    pattern = regex[:-1] if regex.endswith("$") else regex
    base = re.escape(base_url.rstrip("/"))
    for prefix in (base_url.rstrip("/"), base):
        if prefix and pattern.startswith(prefix + "/"):
            return pattern[len(prefix) :]
    return pattern


def inventory(web_app: Any, base_url: str) -> list[Found]:
    """Every path route of the server, in matching order, each with its classification
    (``kind`` ``unclassified`` where :data:`ROUTES` has no entry)."""
    found: list[Found] = []
    seen: set[int] = set()
    for rule in walk(web_app.default_router):
        if id(rule) in seen:
            continue
        seen.add(id(rule))
        pattern = relative_pattern(rule.matcher.regex.pattern, base_url)
        original = getattr(rule, "_egress_original", rule.target)
        handler = qualname(original)
        route = classify(pattern, handler)
        kind, why = (route.kind, route.why) if route else ("unclassified", UNCLASSIFIED_REASON)
        found.append(Found(pattern, handler, kind, why, rule))
    return found


# --- read-only places ---------------------------------------------------------------------


def _chain(path: str):
    p = path
    while True:
        yield p
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent


def read_only(path: str) -> bool:
    """True if this server (and so a kernel or terminal of the same user) can neither write
    ``path`` nor any directory above it, following links too: then nobody in the workspace
    can put a file there, or swap the directory for a link to ``/data``."""
    for start in {os.path.abspath(path), os.path.realpath(path)}:
        for p in _chain(start):
            if os.path.lexists(p) and os.access(p, os.W_OK, follow_symlinks=False):
                return False
    return True


def read_only_dirs(dirs: list[str]) -> list[str]:
    return [d for d in dirs if read_only(d)]


# --- enforcement --------------------------------------------------------------------------


def _block(found: Found, channel: str, reason: str | None = None) -> None:
    rule = found.rule
    if not hasattr(rule, "_egress_original"):
        rule._egress_original = rule.target
    rule.target = BlockedDownloadHandler
    rule.target_kwargs = {"channel": channel, "reason": reason}


def _check_lab(found: Found) -> str | None:
    """A reason to close a JupyterLab route whose settings are not the workspace's."""
    kwargs = found.rule.target_kwargs or {}
    name = found.handler.rsplit(".", 1)[-1]
    if name == "ExtensionHandler":
        manager = kwargs.get("manager")
        if type(manager).__name__ != "ReadOnlyExtensionManager":
            return "the extension manager is not read-only (set LabApp.extension_manager)"
    if name == "NewsHandler" and kwargs.get("news_url") is not None:
        return "news fetching is on (set LabApp.news_url to null)"
    if name == "CheckForUpdateHandler":
        checker = kwargs.get("update_checker")
        if type(checker).__name__ != "NeverCheckForUpdate":
            return "update checks are on (set LabApp.check_for_updates_class)"
    return None


def _swap(found: Found, target: type) -> None:
    rule = found.rule
    if not hasattr(rule, "_egress_original"):
        rule._egress_original = rule.target
    rule.target = target


def _read_only_kwargs(ext: EgressApp, found: Found) -> None:
    """Drop writable directories from the directories an image route serves from."""
    kwargs = found.rule.target_kwargs
    if not isinstance(kwargs, dict):
        return
    for key in ("path", "labextensions_path"):
        dirs = kwargs.get(key)
        if isinstance(dirs, str):
            dirs = [dirs]
        if not isinstance(dirs, (list, tuple)):
            continue
        kept = read_only_dirs(list(dirs))
        if kept != list(dirs):
            ext.log.warning(
                "egress_extension: %s no longer serves from writable %s",
                found.pattern,
                sorted(set(dirs) - set(kept)),
            )
        kwargs[key] = kept


class ReadOnlyKernelSpecResourceHandler(KernelSpecResourceHandler):
    """``/kernelspecs/<name>/<file>`` only from a kernelspec in a read-only directory."""

    @web.authenticated
    async def get(self, kernel_name: str, path: str, include_body: bool = True) -> Any:
        ksm = self.kernel_spec_manager
        try:
            spec = await ensure_async(ksm.get_kernel_spec(kernel_name))
        except KeyError:
            spec = None
        if spec is None or not read_only(spec.resource_dir):
            raise web.HTTPError(404, f"Kernel spec {kernel_name} not found")
        return await super().get(kernel_name, path, include_body)


def _lab_paths(ext: EgressApp) -> None:
    """JupyterLab's prebuilt-extension directories (page config, licences), read-only ones
    only."""
    apps = getattr(getattr(ext.serverapp, "extension_manager", None), "extension_apps", {})
    for group in apps.values():
        for app in group:
            for trait in ("labextensions_path", "extra_labextensions_path"):
                if app.has_trait(trait):
                    dirs = list(getattr(app, trait))
                    kept = read_only_dirs(dirs)
                    if kept != dirs:
                        setattr(app, trait, kept)


def enforce(ext: EgressApp) -> list[Found]:
    """Close unclassified and blocked routes, restrict image routes to read-only
    directories, bound JupyterLab's stored JSON. Idempotent; returns the inventory."""
    from egress_extension import labstate

    serverapp = ext.serverapp
    web_app = serverapp.web_app
    labstate.bound(ext, web_app)
    restrict_kernel_dirs(ext)
    _lab_paths(ext)
    for item in inventory(web_app, serverapp.base_url):
        route = classify(item.pattern, item.handler)
        if route is None:
            if item.rule.target is not BlockedDownloadHandler:
                ext.log.warning(
                    "egress_extension: closing unclassified route %s (%s)",
                    item.pattern,
                    item.handler,
                )
            _block(item, "route", f"{UNCLASSIFIED_REASON} ({item.pattern})")
        elif route.kind == BLOCKED:
            if item.rule.target is not BlockedDownloadHandler:
                _block(item, route.channel)
        elif route.kind in (IMAGE, AUDITED):
            _read_only_kwargs(ext, item)
            target = item.rule.target
            if isinstance(target, type) and target is KernelSpecResourceHandler:
                _swap(item, ReadOnlyKernelSpecResourceHandler)
        elif route.kind == API and (reason := _check_lab(item)):
            ext.log.warning("egress_extension: closing %s: %s", item.pattern, reason)
            _block(item, "lab", f"{reason}; closed in this Secure Data Environment.")
    return inventory(web_app, serverapp.base_url)


def restrict_kernel_dirs(ext: EgressApp) -> list[str]:
    """Kernelspecs (and the files ``/kernelspecs/`` serves) only from read-only directories:
    a kernelspec a kernel writes into ``~/.local/share/jupyter/kernels`` is not seen."""
    ksm = getattr(ext.serverapp, "kernel_spec_manager", None)
    if ksm is None or not hasattr(ksm, "kernel_dirs"):
        return []
    dirs = list(ksm.kernel_dirs)
    kept = read_only_dirs(dirs)
    if kept != dirs:
        ext.log.warning(
            "egress_extension: kernelspecs no longer read from writable %s",
            sorted(set(dirs) - set(kept)),
        )
        ksm.kernel_dirs = kept
    return kept
