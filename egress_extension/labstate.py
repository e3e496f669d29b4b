"""JupyterLab's stored JSON (user settings, workspaces), read back bounded and audited.

``lab/api/settings`` and ``lab/api/workspaces`` return files from the home volume
(``JUPYTERLAB_SETTINGS_DIR``, ``JUPYTERLAB_WORKSPACES_DIR``). Anything the server can write
there, a kernel or terminal of the same user can write too, so moving the directories (to
``/tmp``, say) would not change who controls their content; making them read-only would
stop JupyterLab saving a theme or the open tabs. So they stay, and each read is treated like
a file read:

* the files a read will load are measured before JupyterLab parses them, and the part of
  the response that comes from them -- the workspace JSON, the ``raw`` text of each user
  settings file -- is counted again before it is sent; over ``max_lab_state_size`` the read
  is refused (403, ``download.blocked``, channel ``lab-settings`` / ``lab-workspaces``);
* a read that returns any such content is recorded as ``file.opened`` with the directory,
  the number of files, the bytes and their SHA-256.

Schemas and defaults come from the read-only image and are not counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from tornado import web

from egress_extension.blocking import HOW_TO_EXPORT
from egress_extension.files import human_size

if TYPE_CHECKING:
    from egress_extension.app import EgressApp

EMPTY = ("", "{}")


def settings_content(body: Any) -> list[str]:
    """The user-written ``raw`` texts in a settings API response (one plugin or all)."""
    listing = isinstance(body, dict) and isinstance(body.get("settings"), list)
    entries = body["settings"] if listing else [body]
    raws = []
    for entry in entries if isinstance(entries, list) else []:
        raw = entry.get("raw") if isinstance(entry, dict) else None
        if isinstance(raw, str) and raw.strip() not in EMPTY:
            raws.append(raw)
    return raws


def workspaces_content(body: Any) -> list[str]:
    """The stored workspaces in a workspaces API response (one, or the list of all)."""
    if isinstance(body, dict) and isinstance(body.get("workspaces"), dict):
        values = body["workspaces"].get("values") or []
    else:
        values = [body]
    out = []
    for ws in values:
        if isinstance(ws, dict) and (ws.get("data") or {}):
            out.append(json.dumps(ws.get("data"), sort_keys=True))
    return out


def stored_size(directory: str, suffix: str, name: str | None = None) -> int:
    """Bytes of the stored files a read will load: the one file ``name`` (relative to
    ``directory``), or every file ending ``suffix`` below it."""
    if not directory:
        return 0
    if name is not None:
        try:
            return os.stat(os.path.join(directory, name)).st_size
        except (OSError, ValueError):
            return 0
    total = 0
    for root, _dirs, files in os.walk(directory):
        for f in files:
            if f.endswith(suffix):
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, f)).st_size
    return total


class _BoundedMixin:
    """Measures the stored part of a GET response: the files before they are parsed (so a
    huge file is not even loaded), and the content itself before it is sent."""

    channel = "lab-settings"
    kind = "lab-settings"

    def _content(self, body: Any) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _directory(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _stored_size(self, name: str) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_stored(self, name: str) -> None:
        """Refuse (raises a 403) before JupyterLab loads stored files over the bound."""
        size = self._stored_size(name)
        ext: EgressApp = self.settings["egress_extension"]  # type: ignore[attr-defined]
        if size <= ext.max_lab_state_size:
            return
        where = self._directory()
        reason = self._refusal_text(where, size, ext.max_lab_state_size)
        details = {"path": where[:1024], "url": self.request.path[:1024], "size": size}  # type: ignore[attr-defined]
        ext.blocker.refuse(self, self.channel, where, reason, details | {"type": self.kind})  # type: ignore[arg-type]

    def _refusal_text(self, where: str, size: int, bound: int) -> str:
        return (
            f"JupyterLab's stored {self.kind.removeprefix('lab-')} in {where} hold "
            f"{human_size(size)}, over the {human_size(bound)} this Secure Data Environment "
            "returns to the browser (settings and workspace layouts are small; larger content "
            "is not read back this way). Remove the file, or work with the data in a notebook. "
            + HOW_TO_EXPORT
        )

    def finish(self, chunk: Any = None) -> Any:
        request = self.request  # type: ignore[attr-defined]
        status = self.get_status()  # type: ignore[attr-defined]
        if request.method == "GET" and isinstance(chunk, (str, bytes)) and status == 200:
            refusal = self._egress_check(chunk)
            if refusal is not None:
                self.set_status(403)  # type: ignore[attr-defined]
                self.set_header("Cache-Control", "no-store")  # type: ignore[attr-defined]
                chunk = json.dumps({"message": refusal, "reason": None, "blocked": True})
        return super().finish(chunk)  # type: ignore[misc]

    def _egress_check(self, chunk: str | bytes) -> str | None:
        """Record the read; the reason to refuse it if it is over the bound."""
        ext: EgressApp = self.settings["egress_extension"]  # type: ignore[attr-defined]
        try:
            parts = self._content(json.loads(chunk))
        except ValueError:
            parts = [chunk.decode() if isinstance(chunk, bytes) else chunk]
        data = "".join(parts).encode("utf-8", "surrogatepass")
        if not data:
            return None
        where = self._directory()
        details = {
            "path": where[:1024],
            "url": self.request.path[:1024],  # type: ignore[attr-defined]
            "type": self.kind,
            "format": "json",
            "files": len(parts),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        if len(data) > ext.max_lab_state_size:
            reason = self._refusal_text(where, len(data), ext.max_lab_state_size)
            ext.blocker.record(self, self.channel, where, reason, details)  # type: ignore[arg-type]
            return reason
        ext.record("file.opened", details)
        return None


class _SettingsMixin(_BoundedMixin):
    channel = "lab-settings"
    kind = "lab-settings"

    def _content(self, body: Any) -> list[str]:
        return settings_content(body)

    def _stored_size(self, name: str) -> int:
        if not name:
            return stored_size(self._directory(), ".jupyterlab-settings")
        plugin, _, file = name.partition(":")
        return stored_size(self._directory(), "", f"{plugin}/{file}.jupyterlab-settings")

    @web.authenticated
    def get(self, schema_name: str = "") -> Any:
        self._check_stored(schema_name)
        return super().get(schema_name)  # type: ignore[misc]

    def _directory(self) -> str:
        return str(getattr(self, "settings_dir", "") or "")


class _WorkspacesMixin(_BoundedMixin):
    channel = "lab-workspaces"
    kind = "lab-workspaces"

    def _content(self, body: Any) -> list[str]:
        return workspaces_content(body)

    def _stored_size(self, name: str) -> int:
        from jupyterlab_server.workspaces_handler import WORKSPACE_EXTENSION, slugify

        if not name:
            return stored_size(self._directory(), WORKSPACE_EXTENSION)
        return stored_size(self._directory(), "", slugify(name) + WORKSPACE_EXTENSION)

    @web.authenticated
    async def get(self, space_name: str = "") -> Any:
        self._check_stored(space_name)
        return await super().get(space_name)  # type: ignore[misc]

    def _directory(self) -> str:
        manager = getattr(self, "manager", None)
        return str(getattr(manager, "workspaces_dir", "") or "")


def _subclass(base: type, mixin: type, name: str) -> type:
    return type(name, (mixin, base), {"__module__": __name__})


def bound(ext: EgressApp, web_app: Any) -> int:
    """Swap JupyterLab's settings and workspaces handlers for bounded, audited subclasses
    in every route that uses them. Returns how many routes were swapped."""
    from jupyterlab_server.settings_handler import SettingsHandler
    from jupyterlab_server.workspaces_handler import WorkspacesHandler

    from egress_extension.routes import walk

    swapped = 0
    for rule in walk(web_app.default_router):
        target = rule.target
        if not isinstance(target, type) or issubclass(target, _BoundedMixin):
            continue
        if issubclass(target, SettingsHandler):
            rule.target = _subclass(target, _SettingsMixin, "BoundedSettingsHandler")
        elif issubclass(target, WorkspacesHandler):
            rule.target = _subclass(target, _WorkspacesMixin, "BoundedWorkspacesHandler")
        else:
            continue
        swapped += 1
    return swapped
