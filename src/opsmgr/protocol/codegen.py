"""Generates the Python protobuf and gRPC modules from agent_channel.proto (called by setup.py's build_py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PROTO = "opsmgr/protocol/agent_channel.proto"


class ProtocolBuildError(RuntimeError):
    """protoc refused the .proto; the message carries what it printed."""


def generate(src_root: Path) -> list[Path]:
    """Write agent_channel_pb2.py, .pyi and _pb2_grpc.py beside the .proto under `src_root`."""
    from grpc_tools import protoc  # noqa: PLC0415 (only the build needs protoc)

    well_known = resources.files("grpc_tools") / "_proto"
    args = ["protoc", f"-I{src_root}", f"-I{well_known}", f"--python_out={src_root}", f"--pyi_out={src_root}",
            f"--grpc_python_out={src_root}", str(src_root / PROTO)]
    if protoc.main(args) != 0:
        raise ProtocolBuildError(f"protoc failed on {src_root / PROTO}; see its output above")
    out = src_root / "opsmgr" / "protocol"
    return [out / "agent_channel_pb2.py", out / "agent_channel_pb2.pyi", out / "agent_channel_pb2_grpc.py"]
