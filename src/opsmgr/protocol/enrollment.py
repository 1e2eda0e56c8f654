"""What the enrollment endpoint, the agent's `opsmgr enroll`, the token CLI and the operator's rendering must agree
on: the port, the gRPC method, the token audience and the names of what enrollment keeps in Kubernetes.
"""

from __future__ import annotations

import hashlib

ENROLLMENT_PORT = 5724
SERVICE = "opsmgr.enrollment.v1.Enrollment"
METHOD = f"/{SERVICE}/Enroll"
# The audience of the projected ServiceAccount token a pod or node agent presents; no other audience is accepted.
TOKEN_AUDIENCE = "opsmgr"  # noqa: S105 (an audience name, not a secret)
DEFAULT_TOKEN_PATH = "/var/run/secrets/opsmgr/token"  # noqa: S105 (where the projected token is mounted)
# On an Agent enrolled by join token: the SHA-256 of the key it enrolled with, so polls prove the same machine.
ENROLLMENT_KEY_ANNOTATION = "opsmgr.io/enrollment-key"
# On an Agent enrolled by ServiceAccount token: the serial issued, since the operator owns status.certificate there.
ENROLLED_SERIAL_ANNOTATION = "opsmgr.io/enrolled-serial"
_NAME_MAX = 253


def tokens_secret_name(group: str) -> str:
    """The one Secret per group holding its join-token records; servers may read and update only it, by name."""
    name = f"{group}-join-tokens"
    if len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(group.encode()).hexdigest()[:8]
    return f"{group[:_NAME_MAX - 22]}-{digest}-join-tokens"
