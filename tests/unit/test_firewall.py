"""The host firewall's rules as pure data (applied to a real host in tests/security)."""

from __future__ import annotations

from sde_spawner import firewall


def test_ipv4_chain_allows_replies_then_only_the_listed_ports():
    assert firewall.rules([9100, 8081, 8081]) == [
        ["-i", "sde+", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-i", "sde+", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW",
         "--dport", "8081", "-j", "ACCEPT"],
        ["-i", "sde+", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW",
         "--dport", "9100", "-j", "ACCEPT"],
        ["-i", "sde+", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-i", "sde+", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
    ]  # fmt: skip


def test_ipv6_chain_allows_nothing_new():
    assert firewall.rules6() == [
        ["-i", "sde+", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-i", "sde+", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-i", "sde+", "-j", "REJECT", "--reject-with", "icmp6-adm-prohibited"],
    ]


def test_restore_scripts_replace_the_chain_in_one_commit():
    assert firewall.restore_script([8081]).splitlines() == [
        "*filter",
        ":SDE-INPUT - [0:0]",
        "-F SDE-INPUT",
        "-A SDE-INPUT -i sde+ -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A SDE-INPUT -i sde+ -p tcp -m conntrack --ctstate NEW --dport 8081 -j ACCEPT",
        "-A SDE-INPUT -i sde+ -p tcp -j REJECT --reject-with tcp-reset",
        "-A SDE-INPUT -i sde+ -j REJECT --reject-with icmp-port-unreachable",
        "COMMIT",
    ]
    six = firewall.restore_script(None, ipv6=True).splitlines()
    assert six[:3] == ["*filter", ":SDE-INPUT - [0:0]", "-F SDE-INPUT"] and six[-1] == "COMMIT"
    assert "--dport" not in "\n".join(six)


def test_the_backstop_drops_new_connections_a_flushed_chain_would_let_in():
    assert firewall.backstop() == [
        "-i", "sde+", "-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED", "-j", "DROP",
    ]  # fmt: skip
