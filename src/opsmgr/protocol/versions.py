"""Behaviour levels of the agent channel and how Hello/Welcome settle on one."""

from __future__ import annotations

from dataclasses import dataclass

# The levels this release speaks. Raise MAX when a new behaviour ships; raise MIN only when dropping an old one.
MIN_VERSION = 1
MAX_VERSION = 1


class UnsupportedVersion(ValueError):
    """The peer speaks no level we speak; the message tells the person which side to upgrade."""


@dataclass(frozen=True)
class VersionRange:
    minimum: int
    maximum: int

    def __str__(self) -> str:
        return str(self.minimum) if self.minimum == self.maximum else f"{self.minimum}-{self.maximum}"


OURS = VersionRange(MIN_VERSION, MAX_VERSION)


def negotiate(peer: VersionRange, ours: VersionRange = OURS) -> int:
    """The highest level both sides speak, or UnsupportedVersion naming what to upgrade."""
    if peer.minimum < 1 or peer.maximum < peer.minimum:
        raise UnsupportedVersion(
            f"Hello.min_version={peer.minimum}, max_version={peer.maximum} is not a range of protocol levels: "
            "the agent must send 1 <= min_version <= max_version")
    if peer.maximum < ours.minimum:
        raise UnsupportedVersion(
            f"the agent speaks protocol {peer}; this management server needs {ours}: upgrade the agent")
    if peer.minimum > ours.maximum:
        raise UnsupportedVersion(
            f"the agent speaks protocol {peer}; this management server speaks only {ours}: upgrade the server")
    return min(peer.maximum, ours.maximum)
