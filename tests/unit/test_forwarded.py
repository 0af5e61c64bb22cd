"""Reading a reverse proxy's X-Forwarded headers: believed from trusted proxies only,
malformed ones ignored with a log line; and the connection caps following a proxied
connection to its client."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saffron.cli import build_parser
from saffron.net.forwarded import NOTHING, Forwarded, ForwardedRule, base_path, proxy_network
from saffron.net.limits import ConnectionLimits

PROXY = "10.0.0.1"
RULE_ARGS = ("10.0.0.1", "192.168.0.0/16", "::1")


def rule() -> ForwardedRule:
    return ForwardedRule(RULE_ARGS)


def test_trusted_peers_are_the_addresses_and_networks_given() -> None:
    r = rule()
    for ok in ("10.0.0.1", "192.168.4.7", "::1", "::ffff:10.0.0.1"):
        assert r.trusts(ok), ok
    for no in ("10.0.0.2", "127.0.0.1", "2001:db8::1", "unknown", ""):
        assert not r.trusts(no), no
    assert not ForwardedRule()


def test_a_trusted_proxy_says_who_how_and_where() -> None:
    said = rule().read(
        PROXY,
        [
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "vms.example.org"),
            ("X-Forwarded-Prefix", "/vm/a"),
            ("Host", "127.0.0.1:8081"),
        ],
    )
    assert said == Forwarded("203.0.113.9", "https", "vms.example.org", "/vm/a/")


def test_an_untrusted_peer_is_not_believed(caplog: pytest.LogCaptureFixture) -> None:
    r = rule()
    spoofed = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    with caplog.at_level(logging.INFO, "saffron.proxy"):
        assert r.read("10.0.0.2", spoofed) == NOTHING
        assert r.read("10.0.0.3", spoofed) == NOTHING
    told = [rec.getMessage() for rec in caplog.records]
    assert len(told) == 1 and "not a trusted proxy" in told[0] and "10.0.0.2" in told[0]
    assert ForwardedRule().read(PROXY, spoofed) == NOTHING


@pytest.mark.parametrize(
    ("chain", "client"),
    [
        ("203.0.113.9", "203.0.113.9"),
        # the client wrote an address itself; nginx appended the one it saw
        ("1.2.3.4, 203.0.113.9", "203.0.113.9"),
        # two trusted proxies in a row: the client is left of them
        ("1.2.3.4, 203.0.113.9, 192.168.1.1", "203.0.113.9"),
        ("[2001:db8::5]:4711, 192.168.1.1", "2001:db8::5"),
        ("203.0.113.9:4711", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        # every hop trusted: the first one is the client (a proxy on the same host)
        ("::1, 192.168.1.1", "::1"),
        # garbage left of the client's own address is not looked at
        ("not-an-address, 203.0.113.9", "203.0.113.9"),
    ],
)
def test_the_client_is_the_right_most_untrusted_address(chain: str, client: str) -> None:
    assert rule().read(PROXY, [("X-Forwarded-For", chain)]).client == client


def test_repeated_headers_are_one_list() -> None:
    said = rule().read(PROXY, [("X-Forwarded-For", "1.2.3.4"), ("x-forwarded-for", "5.6.7.8")])
    assert said.client == "5.6.7.8"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Forwarded-For", "unknown"),
        ("X-Forwarded-For", "203.0.113.9, _hidden"),
        ("X-Forwarded-For", ""),
        ("X-Forwarded-For", ",".join(["192.168.0.1"] * 40)),
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "evil.example; script-src *"),
        ("X-Forwarded-Host", "a b"),
        ("X-Forwarded-Prefix", "/vm/a;Domain=evil.example"),
        ("X-Forwarded-Prefix", "/vm/../admin"),
        ("X-Forwarded-Prefix", "http://elsewhere/"),
    ],
)
def test_malformed_headers_are_ignored_with_a_log_line(
    name: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = rule()
    with caplog.at_level(logging.WARNING, "saffron.proxy"):
        extra = [] if name == "X-Forwarded-Proto" else [("X-Forwarded-Proto", "https")]
        said = r.read(PROXY, [(name, value), *extra])
    field = {
        "X-Forwarded-For": "client",
        "X-Forwarded-Proto": "proto",
        "X-Forwarded-Host": "host",
        "X-Forwarded-Prefix": "prefix",
    }[name]
    assert getattr(said, field) is None
    if name != "X-Forwarded-Proto":
        assert said.proto == "https", "the well-formed headers still count"
    assert r.malformed == 1
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 1 and name in lines[0] and PROXY in lines[0], lines
    r.flush_log()


def test_a_flood_of_malformed_headers_is_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    r = rule()
    with caplog.at_level(logging.WARNING, "saffron.proxy"):
        for _ in range(100):
            r.read(PROXY, [("X-Forwarded-For", "junk")])
        r.flush_log()
    assert r.malformed == 100
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 2 and "99 more forwarded headers" in lines[1], lines


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix"]
            ),
            st.text(max_size=60),
        )
    )
)
def test_any_header_values_never_crash(headers: list[tuple[str, str]]) -> None:
    r = rule()
    said = r.read(PROXY, headers)
    assert said.proto in (None, "http", "https")
    if said.prefix is not None:
        assert said.prefix.startswith("/") and said.prefix.endswith("/") and ";" not in said.prefix
    r.flush_log()


@pytest.mark.parametrize(
    ("given_path", "path"),
    [("/vm/a/", "/vm/a/"), ("/vm/a", "/vm/a/"), ("vm/a", "/vm/a/"), ("/", "/")],
)
def test_base_path_is_written_with_its_slashes(given_path: str, path: str) -> None:
    assert base_path(given_path) == path


@pytest.mark.parametrize("bad", ["/vm/a;b/", "/vm/../x/", "//evil/", "/vm a/", "/vm/\n/"])
def test_base_path_refuses_what_a_cookie_path_cannot_hold(bad: str) -> None:
    with pytest.raises(ValueError, match="not a path"):
        base_path(bad)


def test_proxy_networks() -> None:
    assert str(proxy_network("10.1.2.3/8")) == "10.0.0.0/8"
    assert str(proxy_network("[::1]")) == "::1/128"
    with pytest.raises(ValueError, match="not an IP address or network"):
        proxy_network("nginx.lan")


# -- the connection caps follow a proxied connection to its client ---------------------------------


def test_a_proxied_connection_counts_for_its_client_once_it_says_whom() -> None:
    limits = ConnectionLimits(max_connections=100, max_per_address=2)
    slots = [limits.admit(PROXY, "web", proxied=True) for _ in range(5)]
    assert all(slots), "the proxy carries many clients: its own address is not capped"
    assert limits.open_from(PROXY) == 0
    assert limits.move(slots[0], "203.0.113.9", "web")
    assert limits.move(slots[1], "203.0.113.9", "web")
    assert not limits.move(slots[2], "203.0.113.9", "web"), "that client has its two"
    assert limits.move(slots[2], "203.0.113.10", "web")
    assert limits.open_from("203.0.113.9") == 2 and limits.open_from("203.0.113.10") == 1
    assert limits.unauthenticated == 5
    limits.authenticated(slots[0])
    assert limits.move(slots[0], "203.0.113.11", "web"), "a keep-alive connection, next client"
    assert limits.open_from("203.0.113.9") == 1 and limits.unauthenticated == 4
    for slot in slots:
        limits.release(slot)
    assert limits.total == 0 and limits.unauthenticated == 0
    assert limits.open_from("203.0.113.11") == 0 and limits.open_from("203.0.113.10") == 0


def test_a_direct_connection_is_capped_by_its_own_address() -> None:
    limits = ConnectionLimits(max_connections=100, max_per_address=2)
    assert limits.admit(PROXY, "web") and limits.admit(PROXY, "web")
    assert limits.admit(PROXY, "web") is None
    assert limits.admit(PROXY, "web", proxied=True) is not None


# -- the command line ----------------------------------------------------------------------------


def test_the_systemd_template_runs_a_valid_command_line() -> None:
    """contrib/systemd/saffron@.service's ExecStart, with an instance's values filled in,
    is a command line `saffron serve` takes, and serves under /vm/NAME/."""
    unit = (Path(__file__).parents[2] / "contrib" / "systemd" / "saffron@.service").read_text()
    joined = unit.replace("\\\n", " ")
    exec_start = next(line for line in joined.splitlines() if line.startswith("ExecStart="))
    filled = (
        exec_start.removeprefix("ExecStart=")
        .replace("${SAFFRON_WEB}", "127.0.0.1:8101")
        .replace("$SAFFRON_ARGS", "")
        .replace("%d", "/run/credentials/saffron@web1.service")
        .replace("%i", "web1")
    )
    argv = shlex.split(filled)
    assert argv[0].endswith("/saffron") and argv[1] == "serve"
    args = build_parser().parse_args(argv[1:])
    assert args.libvirt == "web1" and args.web == ("127.0.0.1", 8101)
    assert args.base_path == "/vm/web1/" and args.trusted_proxies == ["127.0.0.1"]
    assert "EnvironmentFile=/etc/saffron/%i.env" in unit


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--base-path", "/vm/a;b/", "not a path like /vm/NAME/"),
        ("--trusted-proxy", "nginx.lan", "not an IP address or network"),
    ],
)
def test_bad_proxy_options_are_refused_in_words(
    option: str, value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", option, value])
    assert said in capsys.readouterr().err
