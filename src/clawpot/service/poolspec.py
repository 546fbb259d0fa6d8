"""``clawpot-server --pool SPEC``: which VM shapes the warm pool keeps ready, and how many of each.

SPEC is one or more ``VCPUSxMEMORY:COUNT`` separated by commas: ``1x256:4`` keeps four VMs of 1 vCPU
and 256 MiB; ``1x256:4,2x512:1`` adds one of 2 vCPUs and 512 MiB. Pure parsing: a bad SPEC is a
``ValueError`` with one line naming the part and what is wrong, before the server starts anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clawpot import errors, limits
from clawpot.service import validate

_PART = re.compile(r"(?P<vcpus>\d{1,3})x(?P<memory>\d{1,8}):(?P<count>\d{1,4})")


@dataclass(frozen=True)
class PoolShape:
    vcpus: int
    memory_mib: int
    count: int  # VMs kept ready

    @property
    def key(self) -> tuple[int, int]:
        return (self.vcpus, self.memory_mib)

    @property
    def name(self) -> str:
        """``1x256``: in logs, in the template's directory name, and in a pool VM's record."""
        return f"{self.vcpus}x{self.memory_mib}"


def parse(spec: str) -> list[PoolShape]:
    """The shapes of ``spec``; ValueError (one line) for a malformed part, a bound or a repeated shape."""
    shapes: list[PoolShape] = []
    if not spec.strip():
        raise ValueError("empty pool spec: expected VCPUSxMEMORY:COUNT, e.g. 1x256:4")
    for part in spec.split(","):
        text = part.strip()
        match = _PART.fullmatch(text)
        if match is None:
            raise ValueError(
                f"pool spec part {text[:32]!r}: expected VCPUSxMEMORY:COUNT (vCPUs, MiB, VMs), e.g. 1x256:4"
            )
        vcpus, memory, count = (int(match[k]) for k in ("vcpus", "memory", "count"))
        try:
            validate.vcpus(vcpus)
            validate.memory_mib(memory)
        except errors.InvalidArgument as exc:
            raise ValueError(f"pool spec part {text!r}: {exc}") from None
        if not 1 <= count <= limits.MAX_POOL_VMS_PER_SHAPE:
            raise ValueError(f"pool spec part {text!r}: count must be 1-{limits.MAX_POOL_VMS_PER_SHAPE}")
        shape = PoolShape(vcpus, memory, count)
        if any(s.key == shape.key for s in shapes):
            raise ValueError(f"pool spec names {shape.name} twice")
        shapes.append(shape)
    if len(shapes) > limits.MAX_POOL_SHAPES:
        raise ValueError(f"pool spec has {len(shapes)} shapes; at most {limits.MAX_POOL_SHAPES}")
    return shapes
