"""Version negotiation refuses clearly, and the generated code matches the .proto it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import opsmgr.protocol
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol.codegen import generate
from opsmgr.protocol.versions import UnsupportedVersion, VersionRange, negotiate


def test_both_sides_settle_on_the_highest_common_level() -> None:
    assert negotiate(VersionRange(1, 3), ours=VersionRange(1, 2)) == 2
    assert negotiate(VersionRange(2, 2), ours=VersionRange(1, 4)) == 2


def test_an_agent_too_old_is_told_to_upgrade_the_agent() -> None:
    expected = r"speaks protocol 1; this management server needs 2-3: upgrade the agent"
    with pytest.raises(UnsupportedVersion, match=expected):
        negotiate(VersionRange(1, 1), ours=VersionRange(2, 3))


def test_an_agent_too_new_is_told_to_upgrade_the_server() -> None:
    with pytest.raises(UnsupportedVersion, match="upgrade the server"):
        negotiate(VersionRange(4, 5), ours=VersionRange(1, 2))


@pytest.mark.parametrize(("low", "high"), [(0, 1), (3, 2)])
def test_a_malformed_range_names_the_fields(low: int, high: int) -> None:
    with pytest.raises(UnsupportedVersion, match=r"Hello.min_version=.*max_version="):
        negotiate(VersionRange(low, high))


def test_generated_code_is_current_with_the_proto(tmp_path: Path) -> None:
    package = Path(opsmgr.protocol.__file__).parent
    target = tmp_path / "opsmgr" / "protocol"
    target.mkdir(parents=True)
    shutil.copy(package / "agent_channel.proto", target)
    for generated in generate(tmp_path):
        assert generated.read_text() == (package / generated.name).read_text(), (
            f"{generated.name} is stale: reinstall the package (make venv) to regenerate it")


def test_a_batch_round_trips_through_the_wire_format() -> None:
    batch = pb.DataBatch(epoch="5d1c0e4e-7a8b-4c55-9d43-1f2e3a4b5c6d", seq=7, lane=pb.LANE_BULK)
    batch.items.add().performance.CopyFrom(pb.PerformanceSample(
        object_key="Linux.Computer:web01", object_name="Processor", counter_name="% Processor Time", value=12.5))
    decoded = pb.AgentMessage.FromString(pb.AgentMessage(batch=batch).SerializeToString())
    assert decoded.WhichOneof("body") == "batch"
    assert decoded.batch.items[0].performance.value == 12.5
