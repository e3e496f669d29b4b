"""The egress extension as a jupyter_server ``ExtensionApp``: settings, wiring, lifecycle.

Configured like any Jupyter application (``c.EgressApp.<trait>`` in a jupyter_server config
file); the defaults fit the TRE's workspace image, where the spawner sets ``SDE_SERVICE_URL``
and ``JUPYTERHUB_API_TOKEN``.

On load it

* mounts its own handlers (:mod:`egress_extension.handlers`) and routes that shadow the
  server's download channels (:mod:`egress_extension.blocking`);
* swaps the server's contents API handler for the auditing subclass and the kernel websocket
  connection class for the one that records code (:mod:`egress_extension.activity`);
* listens to the server's ``kernel_actions`` events, wraps the terminal manager, and adds
  JupyterLab's download plugins to ``disabledExtensions``;
* once every extension has added its routes, classifies each one and closes those nobody
  classified, keeps image routes and kernelspecs to read-only directories and bounds
  JupyterLab's stored settings and workspaces (:mod:`egress_extension.routes`,
  :mod:`egress_extension.labstate`);
* starts the :class:`~egress_extension.audit.AuditShipper` that carries every event to the
  hub side, and on shutdown records the kernels still running and flushes the queue.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import replace
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.services.contents.handlers import ContentsHandler
from traitlets import Float, Int, List, Unicode, default, validate

from egress_extension import __version__, activity, routes
from egress_extension.audit import AuditShipper, HTTPSink
from egress_extension.blocking import (
    DEFAULT_MAX_VIEW_SIZE,
    LAB_PLUGINS,
    QUIET_PLUGINS,
    VIEWABLE_BINARY_SUFFIXES,
    DownloadBlocker,
    blocked_routes,
)
from egress_extension.files import ExportPolicy
from egress_extension.handlers import handlers
from egress_extension.service import ExportService
from sde_airlock.rules import ExportRules
from sde_airlock.sdc import Rules

PR_SET_DUMPABLE = 4


def clipboard_rule(value: str | None) -> str:
    """'allow' only when said so; anything else (unset, a typo) blocks."""
    return "allow" if (value or "").strip().lower() == "allow" else "block"


def make_undumpable() -> bool:
    """Mark this server process non-dumpable (Linux ``prctl``): processes of the same uid --
    the user's kernels and terminals -- can then no longer ``ptrace`` it or read and write its
    memory through ``/proc/PID/mem``, so they cannot switch the activity capture off from the
    inside. Kernels the server starts are new programs and stay dumpable (debuggers work)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class EgressApp(ExtensionApp):
    """Export requests, blocked downloads and activity forwarding for a TRE workspace."""

    name = "egress_extension"
    description = __doc__
    load_other_extensions = True

    # -- exports -----------------------------------------------------------------------

    allowed_suffixes = List(
        Unicode(),
        help="File name endings (case-insensitive) a project's policy lets researchers export. "
        "Default: $SDE_EXPORT_ALLOWED_TYPES, the service's own setting (sde_airlock.rules); "
        "archives and programs can never be allowed, and the service checks again.",
    ).tag(config=True)

    @default("allowed_suffixes")
    def _default_allowed_suffixes(self) -> list[str]:
        return list(ExportRules.from_env(os.environ).allowed_suffixes)

    max_file_size = Int(
        help="Largest file (bytes) one export request may contain. Default: "
        "$SDE_EXPORT_MAX_FILE_BYTES, the service's own limit.",
    ).tag(config=True)

    @default("max_file_size")
    def _default_max_file_size(self) -> int:
        return ExportRules.from_env(os.environ).max_file_bytes

    max_files = Int(
        help="Most files in one export request. Default: $SDE_EXPORT_MAX_FILES, the service's "
        "own limit.",
    ).tag(config=True)

    @default("max_files")
    def _default_max_files(self) -> int:
        return ExportRules.from_env(os.environ).max_files

    max_check_size = Int(
        64 * 1024 * 1024,
        help="Largest file (bytes) the export page checks for disclosure risks in the "
        "workspace before submission; larger files are checked by the service only.",
    ).tag(config=True)

    service_url = Unicode(
        help="Base URL of the hub-side `sde` service (ends with /). Default: $SDE_SERVICE_URL.",
    ).tag(config=True)

    @default("service_url")
    def _default_service_url(self) -> str:
        return os.environ.get("SDE_SERVICE_URL", "")

    @validate("service_url")
    def _valid_service_url(self, proposal: Any) -> str:
        url = proposal["value"]
        return url if not url or url.endswith("/") else url + "/"

    api_token = Unicode(
        help="Token the server presents to the service. Default: $JUPYTERHUB_API_TOKEN, the "
        "server's own token (the service derives user and project from it).",
    ).tag(config=True)

    @default("api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    # -- downloads and viewing ---------------------------------------------------------

    viewable_binary_suffixes = List(
        Unicode(),
        default_value=list(VIEWABLE_BINARY_SUFFIXES),
        help="Binary file types the contents API may still return (base64) because "
        "JupyterLab displays them in place. Other binary reads are blocked as downloads.",
    ).tag(config=True)

    max_view_size = Int(
        DEFAULT_MAX_VIEW_SIZE,
        help="Largest file (bytes) the contents API returns with content; larger reads are "
        "blocked as bulk downloads.",
    ).tag(config=True)

    max_lab_state_size = Int(
        128 * 1024,
        help="Most bytes of stored JupyterLab settings or workspace JSON (the part read from "
        "the home volume) one lab/api/settings or lab/api/workspaces read returns; larger "
        "reads are blocked as downloads. Every read with stored content is recorded.",
    ).tag(config=True)

    disabled_lab_plugins = List(
        Unicode(),
        default_value=[*LAB_PLUGINS, *QUIET_PLUGINS],
        help="JupyterLab plugins added to disabledExtensions (their commands download or "
        "export files, or reach for news, updates and extension listings).",
    ).tag(config=True)

    clipboard_out = Unicode(
        help="Copying out of the JupyterLab page: 'block' (copy and cut blocked and recorded "
        "as clipboard.copy_blocked) or 'allow'. Default: $SDE_CLIPBOARD_OUT, which the hub "
        "sets from the project's output policy (clipboard_out); anything else blocks.",
    ).tag(config=True)

    @default("clipboard_out")
    def _default_clipboard_out(self) -> str:
        return clipboard_rule(os.environ.get("SDE_CLIPBOARD_OUT"))

    @validate("clipboard_out")
    def _valid_clipboard_out(self, proposal: Any) -> str:
        return clipboard_rule(proposal["value"])

    support_contact = Unicode(
        help="Whom researchers ask about their data, outputs or access (the welcome page). "
        "Default: $SDE_SUPPORT_CONTACT.",
    ).tag(config=True)

    @default("support_contact")
    def _default_support_contact(self) -> str:
        return os.environ.get("SDE_SUPPORT_CONTACT", "")

    data_dir = Unicode(
        "/data",
        help="Where the project's extract is mounted read-only (the spawner mounts it on "
        "/data); the My data panel shows its data dictionary and file names.",
    ).tag(config=True)

    data_link = Unicode(
        "data",
        help="Name of a link in the home folder to data_dir, made at start when the extract is "
        "mounted and nothing of that name exists, so that the file browser shows the data "
        "(read-only: the mount is). Reads through it are audited like any other; an export "
        "of a file in it is refused (a link into /data). Empty: no link.",
    ).tag(config=True)

    # -- activity ----------------------------------------------------------------------

    code_max_bytes = Int(
        64 * 1024,
        help="Executed code kept per code.executed event (UTF-8 bytes); the SHA-256 and size "
        "always cover the whole text.",
    ).tag(config=True)

    audit_queue_size = Int(
        10_000,
        help="Events held in memory while the service is unreachable; beyond it events are "
        "counted and reported as audit.lost.",
    ).tag(config=True)

    audit_batch_size = Int(500, help="Events per batch (the service takes at most 500).").tag(
        config=True
    )

    audit_backoff_max = Float(
        30.0, help="Longest wait (seconds) between retries while the service is unreachable."
    ).tag(config=True)

    audit_stop_timeout = Float(
        5.0, help="Seconds spent delivering queued events when the server stops."
    ).tag(config=True)

    # -- wiring ------------------------------------------------------------------------

    def initialize_settings(self) -> None:
        self.policy = ExportPolicy(
            root=os.path.abspath(os.path.expanduser(self.serverapp.root_dir)),
            rules=replace(
                ExportRules.from_env(os.environ),  # text lengths: the service's settings
                allowed_suffixes=tuple(self.allowed_suffixes),
                max_file_bytes=self.max_file_size,
                max_files=self.max_files,
            ),
        )
        self.sdc_rules = Rules.from_env(os.environ)
        configured = bool(self.service_url and self.api_token)
        self.service = ExportService(self.service_url, self.api_token) if configured else None
        sink = HTTPSink(self.service_url, self.api_token) if configured else None
        self.shipper = AuditShipper(
            sink,
            max_queue=self.audit_queue_size,
            batch_size=self.audit_batch_size,
            backoff_max=self.audit_backoff_max,
        )
        self.blocker = DownloadBlocker(self)
        self.link_data()
        if not configured:
            self.log.warning(
                "egress_extension: SDE_SERVICE_URL/JUPYTERHUB_API_TOKEN unset: activity is "
                "queued but not shipped and export requests are unavailable"
            )

    def link_data(self) -> str | None:
        """Make the home folder's link to the extract (see ``data_link``); its path, or None
        when there is no extract, the name is taken or it cannot be made."""
        if not self.data_link or "/" in self.data_link or not os.path.isdir(self.data_dir):
            return None
        link = os.path.join(self.policy.root, self.data_link)
        if os.path.lexists(link):
            return None
        try:
            os.symlink(self.data_dir, link, target_is_directory=True)
        except OSError as exc:
            self.log.warning("egress_extension: no %s link to %s: %s", link, self.data_dir, exc)
            return None
        return link

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())
        self.handlers.extend(blocked_routes())

    def initialize(self) -> None:
        super().initialize()
        self._install_hooks()
        if not make_undumpable():
            self.log.warning("egress_extension: could not mark the server non-dumpable")
        self.log.info("egress_extension %s loaded", __version__)

    def record(
        self,
        action: str,
        details: dict | None = None,
        outcome: str = "allowed",
        reason: str | None = None,
    ) -> None:
        """Queue one audit event for the hub side (never blocks)."""
        self.shipper.record(action, details, outcome=outcome, reason=reason)

    def _install_hooks(self) -> None:
        web_app = self.serverapp.web_app
        settings = web_app.settings
        # The contents API: the server's handler, subclassed, in its own route.
        swapped = 0
        for rule in web_app.wildcard_router.rules:
            target = rule.target
            if isinstance(target, type) and issubclass(target, ContentsHandler):
                if not issubclass(target, activity.AuditedContentsMixin):
                    rule.target = activity.audited_contents_handler(target)
                swapped += 1
        if not swapped:
            raise RuntimeError("egress_extension: the server has no contents API route to audit")
        # Code sent to kernels.
        base = settings.get("kernel_websocket_connection_class") or (
            self.serverapp.kernel_websocket_connection_class
        )
        audited = activity.audited_connection_class(base, self)
        settings["kernel_websocket_connection_class"] = audited
        self.serverapp.kernel_websocket_connection_class = audited
        # Kernel lifecycle, from the server's own events.
        self.serverapp.event_logger.add_listener(
            schema_id=activity.KERNEL_ACTIONS_SCHEMA, listener=activity.kernel_listener(self)
        )
        activity.install_guards(self)  # POST /api/events, checkpoint restores
        # Extensions loaded after this one (jupyter_server_terminals, JupyterHub's singleuser
        # extension, which sets its own page_config_hook) must be in place first: finish
        # once the loop runs, after every extension has loaded.
        self._late_hooks()
        self.serverapp.io_loop.add_callback(self._late_hooks)

    def _late_hooks(self) -> None:
        """Idempotent: wrap the terminal manager; put our page_config_hook outermost; check
        every route (:func:`egress_extension.routes.enforce`)."""
        settings = self.serverapp.web_app.settings
        activity.watch_terminals(self, settings.get("terminal_manager"))
        self.routes = routes.enforce(self)
        current = settings.get("page_config_hook")
        if not getattr(current, "egress_extension", False):
            settings["page_config_hook"] = self.blocker.page_config_hook(current)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        self._late_hooks()
        self.shipper.start()

    async def stop_extension(self) -> None:
        kernel_manager = getattr(self.serverapp, "kernel_manager", None)
        for kernel_id in list(kernel_manager.list_kernel_ids()) if kernel_manager else []:
            # The kernels are shut down after extensions stop: say so while we still can.
            self.record(
                "kernel.stopped",
                {"kernel_id": kernel_id, "operation": "shutdown", "server_stopping": True},
            )
        await self.shipper.stop(self.audit_stop_timeout)
