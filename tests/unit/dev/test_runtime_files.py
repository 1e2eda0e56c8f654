"""Volume files swap in at once, and the hosts block and address claims work between runtimes."""

from __future__ import annotations

import os
from pathlib import Path

from opsmgr.dev.runtime_files import AddressBlockClaim, HostsFile, link_mount, write_volume
from opsmgr.dev.runtime_plan import ProjectedFile


def test_volume_files_are_swapped_in_through_a_data_link_and_stale_keys_disappear(tmp_path: Path) -> None:
    volume = tmp_path / "creds"
    assert write_volume(volume, [ProjectedFile("password", b"one", 0o400), ProjectedFile("tls/ca.crt", b"CA", 0o644)])
    assert (volume / "password").read_bytes() == b"one"
    assert (volume / "password").stat().st_mode & 0o777 == 0o400
    assert (volume / "tls" / "ca.crt").read_bytes() == b"CA"
    assert not write_volume(volume, [ProjectedFile("password", b"one", 0o400),
                                     ProjectedFile("tls/ca.crt", b"CA", 0o644)])
    assert write_volume(volume, [ProjectedFile("password", b"two", 0o400)])
    assert (volume / "password").read_bytes() == b"two"
    assert not (volume / "tls").exists()
    assert len([p for p in volume.iterdir() if p.name.startswith("..") and p.is_dir() and not p.is_symlink()]) == 1


def test_mount_links_point_into_the_volume(tmp_path: Path) -> None:
    volume = tmp_path / "volumes" / "tls"
    volume.mkdir(parents=True)
    (volume / "tls.crt").write_text("C")
    root = tmp_path / "root"
    link_mount(root, "/etc/opsmgr/tls", volume)
    link_mount(root, "/etc/opsmgr/tls", volume)
    assert (root / "etc" / "opsmgr" / "tls" / "tls.crt").read_text() == "C"


def test_two_runtimes_claim_different_blocks_and_a_released_block_is_free_again(tmp_path: Path) -> None:
    first, second = AddressBlockClaim(tmp_path), AddressBlockClaim(tmp_path)
    assert first.acquire() == 1 and second.acquire() == 2
    assert second.held_elsewhere("127.0.1.0/24")
    first.release()
    assert not second.held_elsewhere("127.0.1.0/24")
    assert AddressBlockClaim(tmp_path).acquire() == 1
    second.release()


def test_hosts_file_gets_this_runtimes_block_and_drops_a_dead_runtimes(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# BEGIN opsmgr dev runtime 127.0.9.0/24\n127.0.9.2 old\n"
                     "# END opsmgr dev runtime 127.0.9.0/24\n")
    os.chmod(hosts, 0o644)
    claim = AddressBlockClaim(tmp_path / "locks")
    claim.acquire()
    block = HostsFile(hosts, claim)
    block.write([("127.0.1.2", ["ms.ops.svc"])])
    assert hosts.read_text() == ("127.0.0.1 localhost\n# BEGIN opsmgr dev runtime 127.0.1.0/24\n"
                                 "# managed by `opsmgr dev runtime`; removed when it stops\n127.0.1.2\tms.ops.svc\n"
                                 "# END opsmgr dev runtime 127.0.1.0/24\n")
    assert hosts.stat().st_mode & 0o777 == 0o644
    block.remove()
    assert hosts.read_text() == "127.0.0.1 localhost\n"
    claim.release()
