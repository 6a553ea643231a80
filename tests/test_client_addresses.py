"""Client addresses as the audit, the limits and routed requests keep them: only in a form
every database's address column takes (PostgreSQL's ``inet`` refuses an IPv6 zone id)."""

from __future__ import annotations

import pytest

from challenges.clients import ClientInfo, ClientPolicy, storable_ip
from challenges.limits import address_scope
from challenges.rpc.audit import peer_ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:DB8:0::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),  # the zone names an interface of the host that saw it
        ("fe80::1%25eth0", "fe80::1"),
        ("FE80::1%\x00'", "fe80::1"),  # whatever the zone holds
        ("fe80::1%", None),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),  # an IPv4 client on a dual-stack socket
        ("::FFFF:102:304", "::ffff:1.2.3.4"),  # as Django's lookups write it
        ("203.0.113.9%eth0", None),  # IPv4 has no zone
        ("not-an-ip", None),
        ("", None),
        (None, None),
        (["203.0.113.9"], None),
    ],
)
def test_storable_ip(text, expected):
    assert storable_ip(text) == expected


@pytest.mark.parametrize(
    ("header", "proxies", "expected"),
    [
        ("fe80::1%eth0", 1, "fe80::1"),
        ("6.6.6.6, fe80::2%eth1", 1, "fe80::2"),
        ("fe80::1%eth0, 10.0.0.2", 2, "fe80::1"),
        ("fe80::1%", 1, None),  # unparsable, as any other unparsable entry
    ],
)
def test_a_forwarded_scoped_address_loses_its_zone(header, proxies, expected):
    policy = ClientPolicy(ip_header="X-Forwarded-For", trusted_proxies=proxies)
    assert policy.client_ip({"client": ("127.0.0.5", 1)}, {"x-forwarded-for": header}) == expected


def test_a_scoped_peer_address_loses_its_zone():
    scope = {"client": ("fe80::1%eth0", 5000), "headers": [(b"host", b"testserver")]}
    assert ClientPolicy().describe(scope, transport="http").ip == "fe80::1"


def test_clients_made_up_zones_count_as_one_address():
    policy = ClientPolicy(ip_header="X-Forwarded-For")
    ips = {policy.client_ip({}, {"x-forwarded-for": f"2001:db8::1%z{n}"}) for n in range(5)}
    assert ips == {"2001:db8::1"}
    assert {address_scope(ip) for ip in ips} == {"2001:db8::/64"}


@pytest.mark.parametrize(
    ("ip", "expected"),
    [("fe80::1%eth0", "fe80::1"), ("10.0.0.1", "10.0.0.1"), ("nope", None), (7, None)],
)
def test_a_routed_requests_client_is_read_back_storable(ip, expected):
    """Another worker's message: whatever it carries, the owner's audit gets a storable address."""
    client = ClientInfo.from_wire({**ClientInfo(ip="10.0.0.1", transport="http").to_wire(), "ip": ip})
    assert (client.ip, client.transport) == (expected, "http")


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:41948", "127.0.0.1"),
        ("ipv6:%5B::1%5D:38822", "::1"),  # grpc 1.85 writes the peer as a URI
        ("ipv6:[::1]:38822", "::1"),
        ("ipv6:%5Bfe80::1%25eth0%5D:38822", "fe80::1"),
        ("ipv6:[fe80::1%eth0]:38822", "fe80::1"),
        ("unix:/run/tokens.sock", None),
        ("ipv4:garbage:1", None),
        ("", None),
    ],
)
def test_a_grpc_peer_gives_a_storable_address(peer, expected):
    assert peer_ip(peer) == expected
