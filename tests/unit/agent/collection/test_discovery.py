"""Discovery sends everything first, then only what changed, and marks what disappeared."""

from __future__ import annotations

from datetime import UTC, datetime

from opsmgr.agent.discovery import DiscoveredObject, inventory_changes, pod_objects


def obj(key: str, **properties: object) -> DiscoveredObject:
    return DiscoveredObject.of(key, "Linux.FileSystem", key, properties)


def test_first_inventory_is_sent_whole() -> None:
    new = {"a": obj("a", size=1), "b": obj("b", size=2)}
    assert inventory_changes(None, new) == [new["a"], new["b"]]


def test_only_new_and_changed_objects_then_gone_ones_are_sent() -> None:
    old = {"a": obj("a", size=1), "b": obj("b", size=2), "c": obj("c", size=3)}
    new = {"a": obj("a", size=1), "b": obj("b", size=20), "d": obj("d", size=4)}
    changes = inventory_changes(old, new)
    assert [(o.key, dict(o.properties)) for o in changes] == [
        ("b", {"size": "20", "present": "true"}),
        ("d", {"size": "4", "present": "true"}),
        ("c", {"size": "3", "present": "false"}),
    ]
    assert inventory_changes(new, new) == []


def test_an_object_already_reported_gone_is_not_reported_again() -> None:
    old = {"c": obj("c").gone()}
    assert inventory_changes(old, {}) == []


def test_properties_are_text_with_lowercase_booleans_and_empty_values_left_out() -> None:
    assert dict(obj("a", read_only=False, label="", missing=None, n=3).properties) == {
        "read_only": "false", "n": "3", "present": "true"}


def test_discovery_item_carries_key_class_and_properties() -> None:
    item = obj("Linux.FileSystem:web01:/var", type="ext4").item(datetime(2026, 1, 1, tzinfo=UTC)).discovery
    assert (item.object_key, item.class_name, dict(item.properties)) == (
        "Linux.FileSystem:web01:/var", "Linux.FileSystem", {"type": "ext4", "present": "true"})


def test_pod_and_containers_come_from_the_downward_api() -> None:
    objects = pod_objects({"OPSMGR_POD_NAME": "web-7d9", "OPSMGR_POD_NAMESPACE": "shop", "NODE_NAME": "node-1",
                           "OPSMGR_CONTAINER_NAME": "opsmgr-agent", "OPSMGR_CONTAINER_IMAGE": "opsmgr/agent:0.1",
                           "OPSMGR_CONTAINERS": "web=nginx:1.27, cache=redis:7"})
    assert [(o.key, o.class_name) for o in objects] == [
        ("Kubernetes.Pod:shop/web-7d9", "Kubernetes.Pod"),
        ("Kubernetes.Container:shop/web-7d9/cache", "Kubernetes.Container"),
        ("Kubernetes.Container:shop/web-7d9/opsmgr-agent", "Kubernetes.Container"),
        ("Kubernetes.Container:shop/web-7d9/web", "Kubernetes.Container"),
    ]
    assert dict(objects[0].properties)["node"] == "node-1"
    assert dict(objects[3].properties)["image"] == "nginx:1.27"


def test_no_pod_outside_kubernetes() -> None:
    assert pod_objects({"HOME": "/root"}) == []
