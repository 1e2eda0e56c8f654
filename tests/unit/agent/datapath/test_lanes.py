"""The agent's routing must be the server's: a batch the agent drops early loses rows in the other database."""

from __future__ import annotations

import pytest

from opsmgr.agent.lanes import LANE_OF, ROUTES, Databases, InvalidItem, ItemKind, Lane, kind_of
from opsmgr.db import model, routing
from opsmgr.protocol import agent_channel_pb2 as pb


def test_routes_match_the_servers_routing() -> None:
    wire = {model.Database.OPERATIONAL: Databases.OPERATIONAL, model.Database.WAREHOUSE: Databases.WAREHOUSE}
    for kind in ItemKind:
        server = routing.ROUTES[model.ItemKind(kind.label)]
        assert ROUTES[kind] == Databases(sum(wire[d] for d in server)), kind


def test_lanes_match_the_servers_lanes() -> None:
    for kind in ItemKind:
        server_lane = next(lane for lane, kinds in model.LANE_KINDS.items() if model.ItemKind(kind.label) in kinds)
        assert LANE_OF[kind].name.lower() == server_lane.value


def test_an_item_without_a_kind_is_refused() -> None:
    with pytest.raises(InvalidItem, match="no kind"):
        kind_of(pb.Item())


def test_lane_values_are_the_wire_values() -> None:
    assert (int(Lane.PRIORITY), int(Lane.BULK)) == (int(pb.LANE_PRIORITY), int(pb.LANE_BULK))
