"""The Host and Origin rule shared by the web port and the SPICE port's WebSocket."""

from __future__ import annotations

import pytest

from saffron.net.origin import HostRule, hostname_of


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("LocalHost", "localhost"),
        ("evil.example.:80", "evil.example"),
        ("::1", "::1"),
    ],
)
def test_hostname_of(header: str, name: str) -> None:
    assert hostname_of(header) == name


def test_without_password_only_known_hosts() -> None:
    rule = HostRule(password=False, allowed_hosts=["vm.lan"], bound=["127.0.0.1"])
    for ok in ("127.0.0.1:8080", "localhost:8080", "[::1]:1", "10.0.0.5:80", "VM.lan:8080"):
        assert rule.host_refusal(ok) is None, ok
    refusal = rule.host_refusal("evil.example:8080")
    assert refusal is not None and "--allowed-host" in refusal
    assert rule.host_refusal("127.attacker.example:8080") is not None


def test_with_password_any_host_but_same_site_origin() -> None:
    rule = HostRule(password=True)
    assert rule.host_refusal("evil.example:8080") is None
    assert rule.origin_refusal("https://vm.example.org", "vm.example.org:443") is None
    assert rule.origin_refusal("https://evil.example", "vm.example.org:443") is not None


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:3000",  # spice-html5 served beside Saffron
        "http://localhost:8080",
        "http://[::1]:8080",
        "https://vm.lan",
    ],
)
def test_origins_allowed(origin: str) -> None:
    rule = HostRule(password=False, allowed_hosts=["vm.lan"])
    assert rule.origin_refusal(origin, "127.0.0.1:5900") is None


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "file://", "http://127.0.0.1.evil.example", "http://1.2.3.4"],
)
def test_origins_refused(origin: str) -> None:
    rule = HostRule(password=False)
    assert rule.origin_refusal(origin, "127.0.0.1:5900") is not None


def test_rebinding_refused_even_when_origin_matches_host() -> None:
    rule = HostRule(password=False)
    assert rule.refusal("http://evil.example:8080", "evil.example:8080") is not None


def test_bound_address_is_an_allowed_origin() -> None:
    rule = HostRule(password=False, bound=["192.168.7.2"])
    assert rule.origin_refusal("http://192.168.7.2:8080", "127.0.0.1:5900") is None
    assert rule.origin_refusal("http://192.168.7.3:8080", "127.0.0.1:5900") is not None


def test_no_origin_is_not_a_browser() -> None:
    assert HostRule(password=False).origin_refusal(None, "127.0.0.1") is None
