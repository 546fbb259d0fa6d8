"""Egress policies and published ports: parsing, bounds and what each policy lets through (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from clawpot import limits
from clawpot.network.policy import EgressPolicy, PolicyError, PortForward, parse_ports


def test_entries_split_into_networks_and_domains_normalized() -> None:
    policy = EgressPolicy.parse(["10.0.0.1", "10.1.0.0/16", "Example.COM.", "10.0.0.1/32"], ["evil.example"])
    assert policy.allow.networks == (IPv4Network("10.0.0.1/32"), IPv4Network("10.1.0.0/16"))
    assert policy.allow.domains == ("example.com",)
    assert policy.deny.domains == ("evil.example",)
    assert EgressPolicy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize("entry", ["", "not a name", "-bad.example", "a..b", "localhost", "1.2.3", "x" * 300])
def test_malformed_entries_are_refused_with_the_flag(entry: str) -> None:
    with pytest.raises(PolicyError, match="--allow-out"):
        EgressPolicy.parse([entry])


def test_too_many_entries_are_refused() -> None:
    with pytest.raises(PolicyError, match="at most"):
        many = [f"10.0.{i // 256}.{i % 256}" for i in range(limits.MAX_EGRESS_ENTRIES + 1)]
        EgressPolicy.parse(deny_out=many)


def test_what_resolves_and_what_is_pinned() -> None:
    default = EgressPolicy()
    assert not default.default_deny and default.resolves("any.test") and not default.pins("any.test")

    allow = EgressPolicy.parse(["example.com"], ["bad.example.com"])
    assert allow.default_deny
    assert allow.resolves("api.example.com.") and allow.pins("api.example.com.")
    assert not allow.resolves("bad.example.com") and not allow.resolves("x.bad.example.com")
    assert not allow.resolves("notexample.com") and not allow.pins("notexample.com")

    sealed = EgressPolicy.parse(["example.com"], no_internet=True)
    assert sealed.default_deny and not sealed.resolves("example.com") and not sealed.pins("example.com")

    deny_only = EgressPolicy.parse(deny_out=["bad.test", "10.0.0.0/8"])
    assert not deny_only.default_deny
    assert deny_only.resolves("good.test") and not deny_only.resolves("bad.test")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:80", PortForward(IPv4Address("127.0.0.1"), "tcp", 8080, 80)),
        ("10.0.0.5:53:5353/udp", PortForward(IPv4Address("10.0.0.5"), "udp", 53, 5353)),
        ("1:65535/TCP", PortForward(IPv4Address("127.0.0.1"), "tcp", 1, 65535)),
    ],
)
def test_publish_specs(spec: str, expected: PortForward) -> None:
    assert PortForward.parse(spec) == expected


@pytest.mark.parametrize(
    "spec", ["80", "0:80", "80:70000", "a:b", "80:80/sctp", "0.0.0.0:80:80", "host:80:80", "1:2:3:4"]
)
def test_bad_publish_specs(spec: str) -> None:
    with pytest.raises(PolicyError, match="--publish"):
        PortForward.parse(spec)


def test_the_same_host_port_twice_in_one_request_is_refused() -> None:
    assert len(parse_ports(["80:80", "80:80/udp", "10.0.0.1:80:80"])) == 3
    with pytest.raises(PolicyError, match="twice"):
        parse_ports(["8080:80", "127.0.0.1:8080:81"])
