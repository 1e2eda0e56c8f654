"""What each role's certificate carries: its EKUs and DNS names, including a management server's Kubernetes names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from opsmgr.pki.names import Identity, Role, normalize_fqdn

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
EKU_NAMES = {SERVER_AUTH: "serverAuth", CLIENT_AUTH: "clientAuth"}


@dataclass(frozen=True)
class RoleProfile:
    role: Role
    extended_key_usages: frozenset[ObjectIdentifier]
    # An agent's certificate names only its own computer; servers and gateways are also reached by other names.
    allows_extra_dns_names: bool

    def eku_names(self) -> str:
        return "+".join(sorted(EKU_NAMES[oid] for oid in self.extended_key_usages))


PROFILES = {
    Role.MANAGEMENT_SERVER: RoleProfile(Role.MANAGEMENT_SERVER, frozenset({SERVER_AUTH, CLIENT_AUTH}), True),
    Role.GATEWAY: RoleProfile(Role.GATEWAY, frozenset({SERVER_AUTH, CLIENT_AUTH}), True),
    Role.AGENT: RoleProfile(Role.AGENT, frozenset({CLIENT_AUTH}), False),
}


def dns_names_for(identity: Identity, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The DNS SANs of a leaf: its own FQDN first, then the extra names its profile allows, without repeats."""
    names = [identity.name]
    if PROFILES[identity.role].allows_extra_dns_names:
        names += [normalize_fqdn(name, "dnsNames") for name in extra]
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class ManagementServerNames:
    """The names one management-server replica is reached by: Pod DNS, per-replica and shared Services, external."""

    group: str
    namespace: str
    statefulset: str
    headless_service: str
    shared_service: str
    replica: int
    replica_service: str | None = None  # defaults to the Pod's name, one Service per replica
    external_names: tuple[str, ...] = field(default=())
    cluster_domain: str = "cluster.local"

    @property
    def pod_name(self) -> str:
        return f"{self.statefulset}-{self.replica}"

    def identity(self) -> Identity:
        # The short Pod name, without the cluster domain, keeps the CN within its 64 characters in long namespaces.
        return Identity.of(self.group, Role.MANAGEMENT_SERVER,
                           f"{self.pod_name}.{self.headless_service}.{self.namespace}.svc")

    def dns_names(self) -> tuple[str, ...]:
        services = [f"{self.pod_name}.{self.headless_service}", self.replica_service or self.pod_name,
                    self.shared_service]
        in_cluster = [name for s in services for name in (self._qualified(s), f"{s}.{self.namespace}.svc")]
        return dns_names_for(self.identity(), [*in_cluster, *self.external_names])

    def _qualified(self, name: str) -> str:
        return f"{name}.{self.namespace}.svc.{self.cluster_domain}"
