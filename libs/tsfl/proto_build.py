"""Generate the gRPC stubs from ``proto/`` (``python -m tsfl.proto_build``).

The generated modules are committed under ``libs/tsfl/v1``; ``tests/ops/test_deploy.py``
regenerates them and checks they match.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
PROTOS = ["tsfl/v1/device.proto", "tsfl/v1/admin.proto"]


def generate(out: Path) -> None:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "libs")
