"""The process caps (pure): each cap refuses with its code, and releases restore room."""

from __future__ import annotations

import pytest

from challenges.errors import LimitError
from challenges.limits import Caps, Limits


def refused(action) -> str:
    with pytest.raises(LimitError) as info:
        action()
    return info.value.code


def test_pending_per_key_per_address_and_in_all():
    limits = Limits(Caps(pending_per_key=2, pending_per_ip=3, pending_total=4))
    limits.reserve(key=b"k", ip="1.1.1.1")
    limits.reserve(key=b"k", ip="1.1.1.1")
    assert refused(lambda: limits.reserve(key=b"k", ip="2.2.2.2")) == "too_many_pending"  # per key
    limits.reserve(key=b"j", ip="1.1.1.1")
    assert refused(lambda: limits.reserve(key=b"i", ip="1.1.1.1")) == "too_many_pending"  # per address
    limits.reserve(key=b"i", ip="2.2.2.2")
    assert refused(lambda: limits.reserve(key=b"h", ip="3.3.3.3")) == "too_many_pending"  # in all
    limits.release(key=b"k", ip="1.1.1.1")
    limits.reserve(key=b"h", ip="3.3.3.3")  # room again


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
