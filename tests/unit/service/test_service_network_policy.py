"""Egress policy and --publish through the service's validation: INVALID_ARGUMENT, one bounded line."""

from __future__ import annotations

import pytest

from clawpot import errors, limits
from clawpot.network.policy import EgressPolicy
from clawpot.service import validate


def test_a_valid_policy_parses() -> None:
    policy = validate.network_policy(["10.0.0.0/8", "example.com"], ["10.1.0.0/16"], False, ["8080:80/udp"])
    assert policy.egress == EgressPolicy.parse(["10.0.0.0/8", "example.com"], ["10.1.0.0/16"])
    assert [str(p) for p in policy.ports] == ["127.0.0.1:8080:80/udp"]


@pytest.mark.parametrize(
    ("allow", "deny", "publish", "flag"),
    [
        (["nope nope"], [], [], "--allow-out"),
        ([], ["x" * 100_000], [], "--deny-out"),
        ([], [], ["8080"], "--publish"),
        ([], [], ["0.0.0.0:80:80"], "--publish"),
    ],
)
def test_bad_entries_are_invalid_argument_on_one_short_line(
    allow: list[str], deny: list[str], publish: list[str], flag: str
) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate.network_policy(allow, deny, False, publish)
    message = str(caught.value)
    assert message.startswith(flag) and "\n" not in message
    assert len(message) <= limits.MAX_STATUS_MESSAGE_CHARS
