"""Discovery on this real computer: inventory on start, a new listener as a change, a closed one as gone."""

from __future__ import annotations

import socket
from pathlib import Path

from opsmgr.agent.discovery import InventoryDiscovery
from opsmgr.agent.sink import ListSink

FQDN = "web01.contoso.test"


def classes(sink: ListSink) -> set[str]:
    return {item.discovery.class_name for item in sink.items}


async def test_inventory_then_listener_changes_then_restart(tmp_path: Path) -> None:
    sink = ListSink()
    discovery = InventoryDiscovery(FQDN, "host", sink, tmp_path)
    await discovery.discover_once(first=True)
    assert {"Linux.Computer", "Linux.Processor", "Linux.FileSystem"} <= classes(sink)
    computer = next(i.discovery for i in sink.items if i.discovery.class_name == "Linux.Computer")
    assert computer.object_key == f"Linux.Computer:{FQDN}"
    assert int(computer.properties["logical_processors"]) >= 1 and computer.properties["kernel"]

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    key = f"Linux.ListeningService:{FQDN}:tcp/{port}"
    try:
        sink.items.clear()
        await discovery.discover_once()
        found = [i.discovery for i in sink.items if i.discovery.object_key == key]
        assert len(found) == 1 and found[0].properties["present"] == "true"
        assert found[0].properties["addresses"] == "127.0.0.1"
    finally:
        listener.close()

    # A restart after the listener closed: full inventory, and the listener reported gone from the saved state.
    sink.items.clear()
    await InventoryDiscovery(FQDN, "host", sink, tmp_path).discover_once(first=True)
    gone = [i.discovery for i in sink.items if i.discovery.object_key == key]
    assert len(gone) == 1 and gone[0].properties["present"] == "false"
