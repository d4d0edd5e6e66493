"""What the gRPC client and server agree on."""

from __future__ import annotations

CHUNK_BYTES = 1024 * 1024          # models and updates stream in chunks of this size
DEVICE_HEADER = "x-tsfl-device"    # metadata: the calling device's id


#: the largest unary message (a SecAgg+ masked vector: ⌈ring_bits/8⌉ bytes per parameter,
#: so models up to ~16M parameters); model and update transfers stream in chunks instead
MAX_UNARY_BYTES = 64 * 1024 * 1024


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


#: servers never share a port: gRPC's default SO_REUSEPORT would let a second server bind
#: a taken port and silently receive half of the first one's connections
SERVER_OPTIONS: list[tuple[str, int]] = [("grpc.so_reuseport", 0)]
