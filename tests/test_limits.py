"""The process caps (pure): each cap refuses with its code, and releases restore room."""

from __future__ import annotations

import pytest

from challenges.errors import LimitError
from challenges.limits import Caps, Limits, address_scope


def refused(action) -> str:
    with pytest.raises(LimitError) as info:
        action()
    return info.value.code


def test_pending_per_key_per_address_and_in_all():
    limits = Limits(Caps(pending_per_key=2, pending_per_ip=3, pending_total=5))
    limits.reserve(key=b"k", ip="1.1.1.1")
    limits.reserve(key=b"k", ip="1.1.1.1")
    assert refused(lambda: limits.reserve(key=b"k", ip="1.1.1.1")) == "too_many_pending"  # key, here
    limits.reserve(key=b"j", ip="1.1.1.1")
    assert refused(lambda: limits.reserve(key=b"i", ip="1.1.1.1")) == "too_many_pending"  # per address
    limits.reserve(key=b"i", ip="2.2.2.2")
    limits.reserve(key=b"i", ip="2.2.2.2")
    assert refused(lambda: limits.reserve(key=b"h", ip="3.3.3.3")) == "too_many_pending"  # in all
    limits.release(key=b"k", ip="1.1.1.1")
    limits.reserve(key=b"h", ip="3.3.3.3")  # room again


def test_one_address_cannot_lock_a_key_out_at_another():
    """The lockout trap: a key's cap counts per address, so an attacker filling it for the
    victim's key from its own address leaves the victim's address untouched."""
    limits = Limits(Caps(pending_per_key=5, pending_per_ip=100))
    for _ in range(5):
        limits.reserve(key=b"victim", ip="127.0.0.3")
    assert refused(lambda: limits.reserve(key=b"victim", ip="127.0.0.3")) == "too_many_pending"
    for _ in range(5):
        limits.reserve(key=b"victim", ip="127.0.0.2")


@pytest.mark.parametrize(
    ("ip", "scope"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        (None, "?"),
        ("junk", "?"),
    ],
)
def test_addresses_count_by_scope(ip, scope):
    assert address_scope(ip) == scope


def test_an_ipv6_subnet_counts_as_one_address():
    limits = Limits(Caps(pending_per_ip=2, connections_per_ip=1))
    limits.reserve(key=b"a", ip="2001:db8::1")
    limits.reserve(key=b"b", ip="2001:db8::2")
    assert refused(lambda: limits.reserve(key=b"c", ip="2001:db8::ffff:3")) == "too_many_pending"
    limits.reserve(key=b"c", ip="2001:db8:0:1::3")  # another /64
    limits.open_connection("2001:db8::7")
    assert refused(lambda: limits.open_connection("2001:db8::8")) == "too_many_connections"


def test_releases_leave_no_residue():
    limits = Limits(Caps())
    for _ in range(3):
        limits.reserve(key=b"k", ip=None)
        limits.open_connection(None)
    for _ in range(3):
        limits.release(key=b"k", ip=None)
        limits.close_connection(None)
    assert not limits._pending
    assert not limits._connections


def test_connections_per_address():
    limits = Limits(Caps(connections_per_ip=1))
    limits.open_connection("1.1.1.1")
    assert refused(lambda: limits.open_connection("1.1.1.1")) == "too_many_connections"
    limits.open_connection("2.2.2.2")
    limits.close_connection("1.1.1.1")
    limits.open_connection("1.1.1.1")


def test_open_connections_counts_every_address():
    limits = Limits(Caps(connections_per_ip=3))
    assert limits.open_connections == 0
    for ip in ("1.1.1.1", "1.1.1.1", "2001:db8::1", None):
        limits.open_connection(ip)
    assert limits.open_connections == 4
    limits.close_connection("1.1.1.1")
    limits.close_connection(None)
    assert limits.open_connections == 2
