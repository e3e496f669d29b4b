"""Host firewall for workspace networks.

Docker ``internal`` networks stop forwarding beyond the bridge, but a container still reaches
the host itself through the bridge gateway, so every host listener bound to 0.0.0.0 would be
in reach. Every workspace network's bridge is named ``sde<hex>`` (see
:mod:`sde_spawner.containers`), so one chain matched on ``-i sde+`` closes that: replies to
connections the host opened (the proxy talking to JupyterLab) pass, new connections reach only
the allowed ports (the hub API), everything else is rejected.

IPv6 gets the same chain name in ip6tables with nothing allowed, jumped to from INPUT and
FORWARD: workspaces have IPv6 switched off (``containers.NO_IPV6_SYSCTLS``), and should it
ever come back (a daemon or network with IPv6), a link-local address must still reach neither
the host's ``[::]`` listeners nor anything beyond the bridge.

The chain is installed when the hub starts (:mod:`sde_spawner.reconcile`) and watched: a
flushed or unhooked chain is put back within a second (:func:`watch`, audited
``firewall.restored``). Until then the :func:`backstop` rule in INPUT, right after the jump,
drops every new connection from a workspace bridge: a flushed chain exposes nothing
(tests/docker/test_firewall_restore.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess

from sde_spawner.containers import check_bridge_prefix

#: The workspace bridges' name prefix (SDE_BRIDGE_PREFIX, default sde; the spawner's
#: ``bridge_prefix`` must be the same: jupyterhub_config.py sets it from here).
BRIDGE_PREFIX = check_bridge_prefix(os.environ.get("SDE_BRIDGE_PREFIX", "sde"))

#: The chain's name; SDE_FIREWALL_CHAIN gives a hub (with its own SDE_BRIDGE_PREFIX) a chain
#: of its own, e.g. a test that flushes it without touching other hubs' workspaces.
CHAIN = os.environ.get("SDE_FIREWALL_CHAIN", "SDE-INPUT")


class FirewallError(RuntimeError):
    pass


def rules(allowed_tcp_ports: list[int], interface: str = BRIDGE_PREFIX + "+") -> list[list[str]]:
    """The rules of the SDE chain, in order (``iptables -A CHAIN`` arguments)."""
    out = [["-i", interface, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
    for port in sorted(set(allowed_tcp_ports)):
        out.append(
            [
                "-i",
                interface,
                "-p",
                "tcp",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "--dport",
                str(port),
                "-j",
                "ACCEPT",
            ]
        )
    out.append(["-i", interface, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"])
    out.append(["-i", interface, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"])
    return out


def rules6(interface: str = BRIDGE_PREFIX + "+") -> list[list[str]]:
    """The IPv6 chain: replies pass, nothing new is allowed from (or forwarded to) workspaces."""
    return [
        ["-i", interface, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-i", interface, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-i", interface, "-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"],
    ]


def backstop(interface: str = BRIDGE_PREFIX + "+") -> list[str]:
    """The INPUT rule right after the jump: should the chain be flushed (``iptables -F``),
    new connections from workspaces fall through to it and are dropped, not let in, until
    the hub puts the chain back (:func:`watch`). Replies pass (the proxy's connections)."""
    return ["-i", interface, "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED",
            "-j", "DROP"]  # fmt: skip


def ipv6_enabled() -> bool:
    return os.path.exists("/proc/net/if_inet6")


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise FirewallError(f"{name} is not installed; workspaces cannot be isolated from the host")
    return exe


def _tables(tool: str, *args: str, check: bool = True, stdin: str | None = None):
    """Run ``tool -w ARGS`` (iptables, ip6tables or their -restore); FirewallError on failure."""
    proc = subprocess.run(
        [_exe(tool), "-w", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise FirewallError(f"{tool} {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _tables("iptables", *args, check=check)


def _ip6tables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _tables("ip6tables", *args, check=check)


def restore_script(allowed_tcp_ports: list[int] | None, *, ipv6: bool = False) -> str:
    """``ip(6)tables-restore --noflush`` input replacing the chain in one atomic commit."""
    chain_rules = rules6() if ipv6 else rules(allowed_tcp_ports or [])
    lines = ["*filter", f":{CHAIN} - [0:0]", f"-F {CHAIN}"]
    lines += [f"-A {CHAIN} " + " ".join(rule) for rule in chain_rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _write6() -> None:
    if not ipv6_enabled():
        return  # no IPv6 in this kernel: nothing to close
    _tables("ip6tables-restore", "--noflush", stdin=restore_script(None, ipv6=True))
    for parent in ("INPUT", "FORWARD"):
        if _ip6tables("-C", parent, "-j", CHAIN, check=False).returncode != 0:
            _ip6tables("-I", parent, "1", "-j", CHAIN)


_PORT_RE = re.compile(r"--dport (\d+) ")


def allowed_ports(rules: list[str] | None = None) -> list[int]:
    """The ports the installed chain (or these ``iptables -S`` lines of it) lets workspaces
    open connections to."""
    rules = installed_rules() if rules is None else rules
    return sorted({int(m.group(1)) for r in rules for m in [_PORT_RE.search(r)] if m})


def _write(ports: list[int]) -> list[list[str]]:
    _tables("iptables-restore", "--noflush", stdin=restore_script(ports))
    if _iptables("-C", "INPUT", "-j", CHAIN, check=False).returncode != 0:
        _iptables("-I", "INPUT", "1", "-j", CHAIN)
    if _iptables("-C", "INPUT", *backstop(), check=False).returncode != 0:
        _iptables("-I", "INPUT", "2", *backstop())
    _write6()
    return rules(ports)


#: One lock per host, shared by every hub on it (docker-compose.yml mounts the host's /run).
LOCK_FILE = os.environ.get("SDE_FIREWALL_LOCK", "/run/sde-firewall.lock")


@contextlib.contextmanager
def _host_lock():
    """Serialise read-modify-write of the chain between hubs sharing the host."""
    with open(LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def apply(allowed_tcp_ports: list[int]) -> list[list[str]]:
    """Install the SDE chain allowing these ports too (several hubs may share a host), and
    jump to it first from INPUT. Idempotent; the chain is replaced in one atomic commit."""
    with _host_lock():
        return _write(sorted(set(allowed_ports()) | set(allowed_tcp_ports)))


def revoke(tcp_port: int) -> list[list[str]]:
    """Stop allowing one port (the chain and its REJECT rules stay)."""
    with _host_lock():
        return _write([p for p in allowed_ports() if p != tcp_port])


def remove(attempts: int = 5, *, ipv6: bool = False) -> None:
    """Take the IPv4 chain (or, with ``ipv6``, the IPv6 one) out entirely: used by tests
    that prove the rules matter.

    Another hub on the host may re-insert the jump meanwhile; try again a few times.
    """
    run, parents = (_ip6tables, ("INPUT", "FORWARD")) if ipv6 else (_iptables, ("INPUT",))
    for _ in range(attempts):
        for parent in parents:
            while run("-C", parent, "-j", CHAIN, check=False).returncode == 0:
                run("-D", parent, "-j", CHAIN, check=False)
        if not ipv6:
            while run("-C", "INPUT", *backstop(), check=False).returncode == 0:
                run("-D", "INPUT", *backstop(), check=False)
        if run("-n", "-L", CHAIN, check=False).returncode != 0:
            return
        run("-F", CHAIN, check=False)
        if run("-X", CHAIN, check=False).returncode == 0:
            return
    raise FirewallError(f"could not remove chain {CHAIN}: it is still referenced")


def installed_rules(*, ipv6: bool = False) -> list[str]:
    if shutil.which("ip6tables" if ipv6 else "iptables") is None:
        return []
    proc = (_ip6tables if ipv6 else _iptables)("-S", CHAIN, check=False)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def jumped_to() -> bool:
    """Whether INPUT sends traffic through the chain (without the jump the chain does nothing)."""
    if shutil.which("iptables") is None:
        return False
    return _iptables("-C", "INPUT", "-j", CHAIN, check=False).returncode == 0


def missing(allowed_tcp_ports: list[int]) -> list[str]:
    """What of the IPv4 protection is not in place: ``chain`` (its rules differ from what
    these ports need, e.g. flushed), ``jump``, ``backstop``. Empty: all there."""
    have = [r for r in installed_rules() if r.startswith("-A ")]
    out = []
    # (iptables -S prints rules in its own words: compare what they do, not their text;
    # other hubs' ports may be allowed too)
    ends = [r.rsplit("--reject-with ", 1)[-1] for r in have[-2:]]
    if (
        not have
        or "ESTABLISHED" not in have[0]
        or ends != ["tcp-reset", "icmp-port-unreachable"]
        or not set(allowed_tcp_ports) <= set(allowed_ports(have))
    ):
        out.append("chain")
    if not jumped_to():
        out.append("jump")
    if _iptables("-C", "INPUT", *backstop(), check=False).returncode != 0:
        out.append("backstop")
    return out


def watch(allowed_tcp_ports: list[int], interval: float, restored, stop=None) -> None:
    """Until ``stop`` (a threading.Event) is set: every ``interval`` seconds put back what
    :func:`missing` reports and call ``restored(what)``. A flushed chain comes back without
    an operator; meanwhile :func:`backstop` keeps new connections out."""
    import threading

    stop = stop or threading.Event()
    failing = ""
    while not stop.wait(interval):
        try:
            gone = missing(allowed_tcp_ports)
            if gone:
                apply(allowed_tcp_ports)
                restored(gone)
            failing = ""
        except Exception as exc:  # keep watching: the next round tries again
            if str(exc) != failing:  # reported once, not every round
                failing = str(exc)
                restored([f"error: {exc}"])
