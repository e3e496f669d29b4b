"""``sde-export`` (``python -m egress_extension.cli``): export requests from a workspace terminal.

Runs inside the researcher's container and talks to the workspace's own Jupyter server, so a
request from the command line takes exactly the path of one made on the export page
(``egress/api/requests``: confinement, snapshot, upload, submit, audit)::

    sde-export check results.csv analysis.ipynb
    sde-export submit results.csv figure.png --justification "..." --description "..."
    sde-export list
    sde-export withdraw 12

The server is found from ``$JUPYTERHUB_SERVICE_URL`` (its bind address, with 0.0.0.0 read as
127.0.0.1) or ``http://127.0.0.1:8888$JUPYTERHUB_SERVICE_PREFIX``; the credential is the
server's ``$JUPYTERHUB_API_TOKEN``. Only the standard library (and the extension's own
standard-library-only ``files`` module) is imported: it starts fast.
Errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit, urlunsplit

from egress_extension.files import human_size

PROG = "sde-export"


class CliError(Exception):
    pass


def server_url(env: dict[str, str] | None = None) -> str:
    """The workspace server's ``egress/api/`` URL, as reachable from inside the container."""
    env = dict(os.environ if env is None else env)
    if env.get("SDE_EXPORT_SERVER_URL"):
        base = env["SDE_EXPORT_SERVER_URL"]
    elif env.get("JUPYTERHUB_SERVICE_URL"):
        parts = urlsplit(env["JUPYTERHUB_SERVICE_URL"])
        host = parts.hostname or "127.0.0.1"
        if host in ("0.0.0.0", "", "::"):  # noqa: S104 - a bind address, not a destination
            host = "127.0.0.1"
        netloc = f"{host}:{parts.port}" if parts.port else host
        base = urlunsplit((parts.scheme or "http", netloc, parts.path or "/", "", ""))
    else:
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        base = "http://127.0.0.1:8888" + (prefix if prefix.startswith("/") else "/" + prefix)
    return base.rstrip("/") + "/egress/api/"


def call(method: str, path: str, body: object = None, *, base: str, token: str) -> dict:
    if not base.startswith(("http://", "https://")):
        raise CliError(f"the workspace server URL must be http(s), not {base}")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)  # noqa: S310
    request.add_header("Authorization", f"token {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=900) as response:  # noqa: S310 - http(s) only
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            message = json.loads(text).get("message") or exc.reason
        except (ValueError, AttributeError):
            message = text.decode("utf-8", "replace").strip()[:300] or exc.reason
        raise CliError(f"{message} (HTTP {exc.code})") from None
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach the workspace server at {base}: {exc.reason}") from None


def cmd_submit(args: argparse.Namespace, base: str, token: str) -> int:
    descriptions = args.description or []
    if len(descriptions) not in (1, len(args.files)):
        raise CliError(
            f"give one --description for all files or one per file ({len(args.files)}), "
            f"not {len(descriptions)}"
        )
    if len(descriptions) == 1:
        descriptions = descriptions * len(args.files)
    files = [
        {"path": os.path.abspath(path), "description": description}
        for path, description in zip(args.files, descriptions, strict=True)
    ]
    body = {"files": files, "justification": args.justification}
    path = "requests" if args.resubmit is None else f"requests/{args.resubmit}/versions"
    result = call("POST", path, body, base=base, token=token)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"export request {result['id']} {result.get('state', 'submitted')}")
    for f in result.get("files", []):
        print(f"  {f['path']}  {human_size(f['size'])}  sha256 {f['sha256']}")
    return 0


def cmd_check(args: argparse.Namespace, base: str, token: str) -> int:
    """Exit 0 when no file fails a rule, 3 when one does (findings printed either way)."""
    reports = [
        call("GET", f"checks?path={quote(os.path.abspath(path))}", base=base, token=token)
        for path in args.files
    ]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        for r in reports:
            print(f"{r['path']}: {r['status']}  (checked {'; '.join(r['checked'])})")
            for f in r["findings"]:
                print(f"  {f['status']:<6} {f['rule']:<10} {f['where']}: {f['message']}")
    return 3 if any(r["status"] == "fail" for r in reports) else 0


def cmd_list(args: argparse.Namespace, base: str, token: str) -> int:
    result = call("GET", "requests", base=base, token=token)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    items = result.get("requests", [])
    if not items:
        print("no export requests")
    for r in items:
        files = ", ".join(
            f["path"] + (f" ({f['outcome']})" if f.get("outcome") else "")
            for f in r.get("files", [])
        )
        print(f"{r['id']:>5}  {r['state']:<10} {r.get('created_at') or '':<25} {files}")
    return 0


def cmd_withdraw(args: argparse.Namespace, base: str, token: str) -> int:
    result = call("POST", f"requests/{args.id}/withdraw", {}, base=base, token=token)
    print(f"export request {result.get('id', args.id)} {result.get('state', 'withdrawn')}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Request that files leave this workspace: an output checker reviews the "
        "exact bytes submitted before anything is released.",
    )
    p.add_argument("--json", action="store_true", help="print the server's JSON answer")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "check",
        help="run the output checkers' automated disclosure checks on files (exit 3 if a "
        "rule fails)",
    )
    c.add_argument("files", nargs="+", metavar="FILE", help="files in your home directory")
    c.set_defaults(run=cmd_check)
    s = sub.add_parser("submit", help="submit files for output checking")
    s.add_argument("files", nargs="+", metavar="FILE", help="files in your home directory")
    s.add_argument("--justification", "-j", required=True, help="why these files must leave")
    s.add_argument(
        "--description",
        "-d",
        action="append",
        help="what a file contains: once for all files, or once per file in order",
    )
    s.add_argument(
        "--resubmit", type=int, metavar="ID", help="add the files as a new version of ID"
    )
    s.set_defaults(run=cmd_submit)
    ls = sub.add_parser("list", help="your export requests and their states")
    ls.set_defaults(run=cmd_list)
    w = sub.add_parser("withdraw", help="withdraw a submitted request")
    w.add_argument("id", type=int)
    w.set_defaults(run=cmd_withdraw)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "description", None) is None and args.command == "submit":
        args.description = []
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    try:
        if not token:
            raise CliError("JUPYTERHUB_API_TOKEN is not set: run this inside your workspace")
        return args.run(args, server_url(), token)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
