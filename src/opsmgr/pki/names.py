"""Who a certificate speaks for: management group, role and FQDN, and the SAN URI that binds them together."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from opsmgr.pki.errors import CertificateError, Check

ROLE_URI_SCHEME = "opsmgr"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_FQDN = 253
CN_MAX = 64  # RFC 5280's upper bound for a CN, and an identity's name is its certificate's CN
# The layout of a Kubernetes TLS Secret, so a VM agent reads the same files a pod agent gets mounted.
CERTIFICATE_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"


class Role(StrEnum):
    """What a certificate may do on the agent channel; an agent can never act as a gateway or server."""

    MANAGEMENT_SERVER = "server"
    GATEWAY = "gateway"
    AGENT = "agent"

    @property
    def article(self) -> str:
        """The role with its indefinite article, for messages: 'an agent', 'a gateway'."""
        return f"{'an' if self.value[0] in 'aeiou' else 'a'} {self.value}"


def normalize_fqdn(value: str, field: str, max_length: int = _MAX_FQDN) -> str:
    """Return `value` as a lower-case FQDN (at least two DNS labels), or raise naming the field."""
    name = value.strip().lower().removesuffix(".") if isinstance(value, str) else ""
    fix = "use a fully qualified DNS name such as web01.contoso.com (letters, digits and '-', dot-separated)"
    if not name or len(name) > max_length:
        raise CertificateError(Check.INVALID_NAME, field, repr(value), f"is empty or longer than {max_length}", fix)
    labels = name.split(".")
    if len(labels) < 2:
        raise CertificateError(Check.INVALID_NAME, field, repr(value), "is a single label, not an FQDN", fix)
    bad = next((label for label in labels if not _LABEL.match(label)), None)
    if bad is not None:
        raise CertificateError(Check.INVALID_NAME, field, repr(value), f"has the invalid DNS label {bad!r}", fix)
    if labels[-1].isdigit():
        raise CertificateError(Check.INVALID_NAME, field, repr(value), "looks like an IP address", fix)
    return name


def normalize_group(value: str, field: str = "group") -> str:
    """Return a management-group name (a Kubernetes object name: DNS-1123 subdomain), or raise."""
    name = value if isinstance(value, str) else ""
    if not name or len(name) > _MAX_FQDN or not all(_LABEL.match(label) for label in name.split(".")):
        raise CertificateError(Check.INVALID_NAME, field, repr(value), "is not a Kubernetes object name",
                               "use lower-case letters, digits, '-' and '.', as in the ManagementGroup's name")
    return name


@dataclass(frozen=True)
class Identity:
    """The identity one certificate carries: `opsmgr://<group>/<role>/<name>` with name = CN = FQDN."""

    group: str
    role: Role
    name: str

    @classmethod
    def of(cls, group: str, role: Role, name: str) -> Identity:
        """Build an identity from user input, validating and normalizing every part."""
        return cls(normalize_group(group), Role(role), normalize_fqdn(name, "name", CN_MAX))

    @property
    def uri(self) -> str:
        return f"{ROLE_URI_SCHEME}://{self.group}/{self.role.value}/{self.name}"

    @classmethod
    def from_uri(cls, uri: str, field: str = "subjectAltName URI") -> Identity:
        """Parse a role URI, raising CertificateError when it is not exactly `opsmgr://<group>/<role>/<fqdn>`."""
        prefix = f"{ROLE_URI_SCHEME}://"
        parts = uri[len(prefix):].split("/") if isinstance(uri, str) and uri.startswith(prefix) else []
        roles = {role.value: role for role in Role}
        if len(parts) != 3 or parts[1] not in roles:
            raise CertificateError(Check.WRONG_ROLE, field, repr(uri), "is not an opsmgr role URI",
                                   f"issue the certificate from the management-group CA, which writes "
                                   f"{prefix}<group>/<{'|'.join(roles)}>/<fqdn>")
        return cls(normalize_group(parts[0], field), roles[parts[1]], normalize_fqdn(parts[2], field, CN_MAX))
