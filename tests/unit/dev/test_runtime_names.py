"""Pod addresses and the host entries the local runtime writes for Services and StatefulSet Pods."""

from __future__ import annotations

from typing import Any

import pytest

from opsmgr.dev.runtime_names import AddressesExhausted, PodAddressPool, block_ids, host_entries, splice_hosts


def test_addresses_are_unique_stable_per_pod_and_not_reused_at_once() -> None:
    pool = PodAddressPool(block=7)
    first, second = pool.address_of("a"), pool.address_of("b")
    assert (first, second) == ("127.0.7.2", "127.0.7.3") and pool.address_of("a") == first
    pool.release("a")
    assert pool.address_of("c") == "127.0.7.4"


def test_address_pool_adopts_a_reported_address_of_its_block_only() -> None:
    pool = PodAddressPool(block=7)
    assert pool.adopt("a", "127.0.7.9") and pool.address_of("a") == "127.0.7.9"
    assert not pool.adopt("b", "127.0.8.9") and not pool.adopt("c", "127.0.7.9")


def test_address_pool_says_when_it_is_exhausted() -> None:
    pool = PodAddressPool(block=7)
    for n in range(253):
        pool.address_of(str(n))
    with pytest.raises(AddressesExhausted, match=r"127\.0\.7\.0/24"):
        pool.address_of("one-too-many")


def service(name: str, namespace: str = "ops", *, headless: bool = False, **extra: Any) -> dict[str, Any]:
    spec = {"selector": {"app": name}, "clusterIP": "None" if headless else "10.0.0.9", **extra}
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pod(name: str, ip: str, app: str, namespace: str = "ops", *, ready: bool = True,
        subdomain: str | None = None) -> dict[str, Any]:
    spec = {"hostname": name, "subdomain": subdomain} if subdomain else {}
    return {"metadata": {"name": name, "namespace": namespace, "labels": {"app": app}}, "spec": spec,
            "status": {"podIP": ip, "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_cluster_ip_service_resolves_to_its_ready_pods_in_pod_name_order() -> None:
    lines = host_entries([service("ms")], [pod("ms-10", "127.0.1.4", "ms"), pod("ms-2", "127.0.1.3", "ms"),
                                           pod("ms-3", "127.0.1.5", "ms", ready=False)], ["ops"])
    names = ["ms.ops.svc.cluster.local", "ms.ops.svc", "ms.ops", "ms"]
    assert lines[1:] == [("127.0.1.3", names), ("127.0.1.4", names)]
    assert lines[0][1][0] == "kubernetes.default.svc.cluster.local"


def test_headless_service_gives_statefulset_pods_their_own_names() -> None:
    lines = host_entries([service("ms", headless=True)],
                         [pod("ms-0", "127.0.1.2", "ms", subdomain="ms"),
                          pod("ms-1", "127.0.1.3", "ms", subdomain="ms")],
                         ["ops"])
    assert ("127.0.1.2", ["ms-0.ms.ops.svc.cluster.local", "ms-0.ms.ops.svc"]) in lines
    assert ("127.0.1.3", ["ms-1.ms.ops.svc.cluster.local", "ms-1.ms.ops.svc"]) in lines


def test_not_ready_pods_resolve_only_when_the_service_publishes_them() -> None:
    pods = [pod("ms-0", "127.0.1.2", "ms", ready=False, subdomain="ms")]
    assert host_entries([service("ms", headless=True)], pods, ["ops"])[1:] == []
    published = host_entries([service("ms", headless=True, publishNotReadyAddresses=True)], pods, ["ops"])
    assert ("127.0.1.2", ["ms-0.ms.ops.svc.cluster.local", "ms-0.ms.ops.svc"]) in published


def test_short_name_is_left_out_when_two_served_namespaces_share_it() -> None:
    lines = host_entries([service("db", "a"), service("db", "b")],
                         [pod("db-0", "127.0.1.2", "db", "a"), pod("db-0", "127.0.1.3", "db", "b")], None)
    assert ("127.0.1.2", ["db.a.svc.cluster.local", "db.a.svc", "db.a"]) in lines
    assert all("db" not in names for _, names in lines)


def test_unserved_namespaces_and_selectorless_services_are_ignored() -> None:
    lines = host_entries([service("db", "other"), {"metadata": {"name": "ext", "namespace": "ops"}, "spec": {}}],
                         [pod("db-0", "127.0.1.2", "db", "other")], ["ops"])
    assert len(lines) == 1


def test_hosts_block_is_replaced_in_place_and_removed_without_touching_other_lines() -> None:
    original = "127.0.0.1 localhost\n::1 ip6-localhost"
    once = splice_hosts(original, "127.0.3.0/24", [("127.0.3.2", ["ms.ops.svc"])])
    assert once.startswith("127.0.0.1 localhost\n::1 ip6-localhost\n# BEGIN opsmgr dev runtime 127.0.3.0/24\n")
    assert "127.0.3.2\tms.ops.svc\n" in once
    twice = splice_hosts(once, "127.0.3.0/24", [("127.0.3.4", ["db.ops.svc"])])
    assert "ms.ops.svc" not in twice and twice.count("# BEGIN") == 1
    assert splice_hosts(twice, "127.0.3.0/24", None) == "127.0.0.1 localhost\n::1 ip6-localhost\n"


def test_blocks_of_runtimes_that_died_are_dropped_and_live_ones_kept() -> None:
    text = splice_hosts(splice_hosts("", "127.0.1.0/24", [("127.0.1.2", ["a"])]), "127.0.2.0/24",
                        [("127.0.2.2", ["b"])])
    assert block_ids(text) == ["127.0.1.0/24", "127.0.2.0/24"]
    kept = splice_hosts(text, "127.0.3.0/24", [], keep=["127.0.2.0/24"])
    assert block_ids(kept) == ["127.0.2.0/24", "127.0.3.0/24"]
