"""tests.support.free_port: ports for test servers come from below the kernel's ephemeral range
(where no outgoing connection can take them first), are free, and are not handed out twice."""

from __future__ import annotations

import socket

from tests.support import _ephemeral_low, free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    low = _ephemeral_low()
    assert low > 21000, "this machine's ephemeral range leaves no room below it"
    assert all(20000 <= p < low for p in ports)
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("", p))  # free on every address


def test_a_port_in_use_or_given_before_is_skipped(monkeypatch):
    import tests.support as support

    given = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        in_use = held.getsockname()[1]
        monkeypatch.setattr(support, "_ephemeral_low", lambda: 65536)  # in_use is in range
        picks = iter([given, in_use, in_use + 1 if in_use < 65535 else in_use - 1])
        monkeypatch.setattr(support.random, "randint", lambda a, b: next(picks))
        port = free_port()
    assert port not in (given, in_use)
