"""Generates the Python protobuf and gRPC modules from every .proto in opsmgr/protocol (called by setup.py's
build_py): the agent channel and the enrollment endpoint."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PROTO_DIR = "opsmgr/protocol"


class ProtocolBuildError(RuntimeError):
    """protoc refused a .proto; the message carries what it printed."""


def generate(src_root: Path) -> list[Path]:
    """Write <name>_pb2.py, .pyi and _pb2_grpc.py beside each .proto under `src_root`; returns what it wrote."""
    from grpc_tools import protoc  # noqa: PLC0415 (only the build needs protoc)

    well_known = resources.files("grpc_tools") / "_proto"
    out = src_root / PROTO_DIR
    written: list[Path] = []
    for proto in sorted(out.glob("*.proto")):
        args = ["protoc", f"-I{src_root}", f"-I{well_known}", f"--python_out={src_root}", f"--pyi_out={src_root}",
                f"--grpc_python_out={src_root}", str(proto)]
        if protoc.main(args) != 0:
            raise ProtocolBuildError(f"protoc failed on {proto}; see its output above")
        written += [out / f"{proto.stem}_pb2.py", out / f"{proto.stem}_pb2.pyi", out / f"{proto.stem}_pb2_grpc.py"]
    return written
