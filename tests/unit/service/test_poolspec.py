"""``clawpot-server --pool SPEC`` parsing: shapes, bounds, one-line errors."""

from __future__ import annotations

import pytest

from clawpot.service.poolspec import PoolShape, parse


def test_shapes_parse() -> None:
    assert parse("1x256:4") == [PoolShape(1, 256, 4)]
    assert parse("1x256:4, 2x512:1") == [PoolShape(1, 256, 4), PoolShape(2, 512, 1)]
    assert parse("1x256:4")[0].name == "1x256"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty pool spec"),
        ("1x256", "expected VCPUSxMEMORY:COUNT"),
        ("1x256:4,", "expected VCPUSxMEMORY:COUNT"),
        ("ax256:4", "expected VCPUSxMEMORY:COUNT"),
        ("1x256:-1", "expected VCPUSxMEMORY:COUNT"),
        ("0x256:1", "vcpus must be between 1 and 32"),
        ("33x256:1", "vcpus must be between 1 and 32"),
        ("1x32:1", "memory_mib must be between 64"),
        ("1x256:0", "count must be 1-32"),
        ("1x256:33", "count must be 1-32"),
        ("1x256:1,1x256:2", "names 1x256 twice"),
        (",".join(f"1x{256 + i}:1" for i in range(9)), "at most 8"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse(spec)
    assert "\n" not in str(info.value)
