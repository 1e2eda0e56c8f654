"""Discovery: the computer's inventory as discovery items, sent whole on start and as a difference on change.

Gathering reads /proc, /sys, /etc/os-release and psutil in a worker thread and builds `DiscoveredObject`s; only
properties that describe the object (not how busy it is) are kept, so a diff means something changed. The diff is
pure: added and changed objects are sent, and an object that disappeared is sent once more with present=false, so
the server's upserted row says it is gone. The last inventory sent is kept on disk, so a restart reports what
disappeared while the agent was stopped.

In a pod (sidecar placement) the Pod and its containers come from the downward API: environment variables
OPSMGR_POD_NAME, OPSMGR_POD_NAMESPACE, OPSMGR_POD_UID, OPSMGR_NODE_NAME, OPSMGR_POD_IP, OPSMGR_CONTAINER_NAME and
OPSMGR_CONTAINER_IMAGE (POD_NAME, POD_NAMESPACE, NODE_NAME are accepted too), and OPSMGR_CONTAINERS for the
application containers as "name=image,name=image".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from opsmgr import __version__
from opsmgr.agent import sink
from opsmgr.agent.node_pods import node_pod_records
from opsmgr.agent.sink import ItemSink
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.protocol import limits

log = logging.getLogger(__name__)

PRESENT = "present"
MAX_OBJECTS = 2000  # a bound on one inventory, so a host with 50,000 sockets cannot flood the priority lane


@dataclass(frozen=True, slots=True)
class DiscoveredObject:
    key: str
    class_name: str
    display_name: str
    properties: tuple[tuple[str, str], ...]  # sorted, so equal objects compare equal

    @staticmethod
    def of(key: str, class_name: str, display_name: str, properties: Mapping[str, object]) -> DiscoveredObject:
        kept = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in properties.items()
                if v is not None and v != ""}
        kept[PRESENT] = "true"
        return DiscoveredObject(key, class_name, display_name, tuple(sorted(kept.items())))

    def gone(self) -> DiscoveredObject:
        kept = dict(self.properties)
        kept[PRESENT] = "false"
        return DiscoveredObject(self.key, self.class_name, self.display_name, tuple(sorted(kept.items())))

    def item(self, at: datetime) -> pb.Item:
        return sink.discovery(at, object_key=self.key, class_name=self.class_name, display_name=self.display_name,
                              properties=dict(self.properties))


Inventory = dict[str, DiscoveredObject]


def inventory_changes(old: Mapping[str, DiscoveredObject] | None, new: Mapping[str, DiscoveredObject]
                      ) -> list[DiscoveredObject]:
    """What to send: everything when nothing was sent before, else what is new or different, then what is gone."""
    if old is None:
        return list(new.values())
    changed = [obj for key, obj in new.items() if old.get(key) != obj]
    gone = [obj.gone() for key, obj in old.items() if key not in new and dict(obj.properties).get(PRESENT) == "true"]
    return changed + gone


# ---------------------------------------------------------------- gathering (worker thread)

def _read(path: str) -> str:
    try:
        with open(path) as source:
            return source.read().strip()
    except OSError:
        return ""


def _os_release() -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in (_read("/etc/os-release") or _read("/usr/lib/os-release")).splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields[name] = value.strip().strip('"')
    return fields


def _cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def computer(fqdn: str, placement: str) -> DiscoveredObject:
    release = _os_release()
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return DiscoveredObject.of(sink.computer_key(fqdn), "Linux.Computer", fqdn, {
        "fqdn": fqdn, "hostname": socket.gethostname(), "placement": placement,
        "os_name": release.get("PRETTY_NAME") or release.get("NAME") or platform.system(),
        "os_id": release.get("ID"), "os_version": release.get("VERSION_ID"), "kernel": platform.release(),
        "architecture": platform.machine(), "logical_processors": psutil.cpu_count(logical=True),
        "physical_processors": psutil.cpu_count(logical=False), "processor_model": _cpu_model(),
        "memory_mb": memory.total // (1024 * 1024), "swap_mb": swap.total // (1024 * 1024),
        "boot_time": datetime.fromtimestamp(psutil.boot_time(), UTC).isoformat(timespec="seconds"),
        "agent_version": __version__,
    })


def processors(fqdn: str) -> list[DiscoveredObject]:
    model = _cpu_model()
    return [DiscoveredObject.of(f"Linux.Processor:{fqdn}:{index}", "Linux.Processor", f"CPU {index}",
                                {"index": index, "model": model})
            for index in range(psutil.cpu_count(logical=True) or 0)]


def disks(fqdn: str) -> list[DiscoveredObject]:
    found = []
    for name in sorted(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else []:
        if name.startswith(("loop", "ram", "zram", "dm-")):
            continue
        sectors = _read(f"/sys/block/{name}/size")
        found.append(DiscoveredObject.of(f"Linux.PhysicalDisk:{fqdn}:{name}", "Linux.PhysicalDisk", name, {
            "device": f"/dev/{name}", "size_bytes": int(sectors) * 512 if sectors.isdigit() else None,
            "rotational": {"0": "false", "1": "true"}.get(_read(f"/sys/block/{name}/queue/rotational")),
            "model": _read(f"/sys/block/{name}/device/model"), "vendor": _read(f"/sys/block/{name}/device/vendor"),
        }))
    return found


def file_systems(fqdn: str) -> list[DiscoveredObject]:
    found = []
    for part in psutil.disk_partitions(all=False):
        size_mb = None
        with contextlib.suppress(OSError):
            usage = os.statvfs(part.mountpoint)
            size_mb = usage.f_blocks * usage.f_frsize // (1024 * 1024)
        found.append(DiscoveredObject.of(f"Linux.FileSystem:{fqdn}:{part.mountpoint}", "Linux.FileSystem",
                                         part.mountpoint, {"mount_point": part.mountpoint, "device": part.device,
                                                           "type": part.fstype, "size_mb": size_mb,
                                                           "read_only": "ro" in part.opts.split(",")}))
    return found


def network_adapters(fqdn: str) -> list[DiscoveredObject]:
    stats = psutil.net_if_stats()
    found = []
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        if name == "lo":
            continue
        inet = sorted(a.address.split("%")[0] for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6))
        mac = next((a.address for a in addresses if a.family == psutil.AF_LINK), "")
        stat = stats.get(name)
        found.append(DiscoveredObject.of(f"Linux.NetworkAdapter:{fqdn}:{name}", "Linux.NetworkAdapter", name, {
            "name": name, "addresses": ",".join(inet), "mac": mac, "mtu": stat.mtu if stat else None,
            "speed_mbps": stat.speed if stat and stat.speed else None, "up": (stat.isup if stat else None)}))
    return found


def listening_services(fqdn: str) -> list[DiscoveredObject]:
    """Listening TCP sockets and bound UDP sockets by protocol and port; the owning program when visible."""
    ports: dict[str, dict[str, set[str]]] = {}
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return []
    names: dict[int, str] = {}
    for conn in connections:
        tcp = conn.type == socket.SOCK_STREAM
        if (tcp and conn.status != psutil.CONN_LISTEN) or (not tcp and conn.raddr) or not conn.laddr:
            continue
        key = f"{'tcp' if tcp else 'udp'}/{conn.laddr.port}"
        entry = ports.setdefault(key, {"addresses": set(), "programs": set()})
        entry["addresses"].add(conn.laddr.ip)
        if conn.pid:
            if conn.pid not in names:
                with contextlib.suppress(psutil.Error):
                    names[conn.pid] = psutil.Process(conn.pid).name()
            if conn.pid in names:
                entry["programs"].add(names[conn.pid])
    return [DiscoveredObject.of(f"Linux.ListeningService:{fqdn}:{key}", "Linux.ListeningService", key, {
        "protocol": key.split("/")[0], "port": key.split("/")[1], "addresses": ",".join(sorted(v["addresses"])),
        "programs": ",".join(sorted(v["programs"]))}) for key, v in sorted(ports.items())]


def pod_objects(environ: Mapping[str, str]) -> list[DiscoveredObject]:
    """The Pod and containers the agent runs beside, from the downward API (pure over the environment)."""
    def env(name: str) -> str:
        return environ.get(f"OPSMGR_{name}") or environ.get(name) or ""

    pod, namespace = env("POD_NAME"), env("POD_NAMESPACE")
    if not pod or not namespace:
        return []
    pod_key = f"Kubernetes.Pod:{namespace}/{pod}"
    found = [DiscoveredObject.of(pod_key, "Kubernetes.Pod", f"{namespace}/{pod}", {
        "name": pod, "namespace": namespace, "uid": env("POD_UID"), "node": env("NODE_NAME"), "pod_ip": env("POD_IP"),
    })]
    containers = dict(_pairs(environ.get("OPSMGR_CONTAINERS", "")))
    if env("CONTAINER_NAME"):
        containers[env("CONTAINER_NAME")] = env("CONTAINER_IMAGE")
    for name, image in sorted(containers.items()):
        found.append(DiscoveredObject.of(f"Kubernetes.Container:{namespace}/{pod}/{name}", "Kubernetes.Container",
                                         f"{namespace}/{pod}/{name}", {"name": name, "pod": pod_key, "image": image}))
    return found


def _pairs(text: str) -> Iterable[tuple[str, str]]:
    for part in text.split(","):
        name, _, image = part.strip().partition("=")
        if name:
            yield name, image


def gather_inventory(fqdn: str, placement: str, environ: Mapping[str, str] | None = None) -> Inventory:
    environment = os.environ if environ is None else environ
    # A node agent also reports the pods scheduled on its node.
    node_pods = [DiscoveredObject.of(*record) for record in node_pod_records(environment)] \
        if placement == "node" else []
    objects = [computer(fqdn, placement), *processors(fqdn), *disks(fqdn), *file_systems(fqdn),
               *network_adapters(fqdn), *listening_services(fqdn), *pod_objects(environment), *node_pods]
    if len(objects) > MAX_OBJECTS:
        log.warning("inventory has %d objects; sending the first %d", len(objects), MAX_OBJECTS)
    return {obj.key: obj for obj in objects[:MAX_OBJECTS]}


# ---------------------------------------------------------------- the loop

class InventoryDiscovery:
    """Sends the inventory on start and whatever changed every `interval_seconds`."""

    def __init__(self, fqdn: str, placement: str, sink: ItemSink, state_dir: Path, *,
                 interval_seconds: float = 600.0) -> None:
        self.fqdn = fqdn
        self.placement = placement
        self.sink = sink
        self.state_file = state_dir / "inventory.json"
        self.interval_seconds = interval_seconds
        self.sent: Inventory | None = None

    async def discover_once(self, *, first: bool = False) -> list[DiscoveredObject]:
        current = await asyncio.to_thread(gather_inventory, self.fqdn, self.placement)
        if first:
            previous = await asyncio.to_thread(self._load)
            # On start everything is sent (the server may be new), plus what vanished while the agent was stopped.
            changes = inventory_changes(None, current) + [
                o for o in inventory_changes(previous or {}, current) if dict(o.properties)[PRESENT] == "false"]
        else:
            changes = inventory_changes(self.sent, current)
        if changes:
            now = datetime.now(UTC)
            items = [obj.item(now) for obj in changes]
            for start in range(0, len(items), limits.MAX_BATCH_ITEMS):
                await self.sink(items[start:start + limits.MAX_BATCH_ITEMS])
            await asyncio.to_thread(self._save, current)
        self.sent = current
        return changes

    async def run(self) -> None:
        first = True
        while True:
            try:
                changes = await self.discover_once(first=first)
                first = False
                if changes:
                    log.info("discovery sent %d changed object(s)", len(changes))
            except OSError as error:
                log.warning("discovery failed, retrying in %.0f s: %s", self.interval_seconds, error)
            await asyncio.sleep(self.interval_seconds)

    def _load(self) -> Inventory | None:
        try:
            raw = json.loads(self.state_file.read_text())
            return {o["key"]: DiscoveredObject(o["key"], o["class_name"], o["display_name"],
                                               tuple(sorted((k, v) for k, v in o["properties"].items())))
                    for o in raw}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save(self, inventory: Inventory) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps([{"key": o.key, "class_name": o.class_name, "display_name": o.display_name,
                                          "properties": dict(o.properties)} for o in inventory.values()]))
        os.replace(temporary, self.state_file)
