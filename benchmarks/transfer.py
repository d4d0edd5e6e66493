"""Large models over gRPC: peak memory of the receiving device, ours against the naive way.

A coordinator (its own process: the real gRPC server, store and job) serves a model of
``--mb`` megabytes; in this process a device downloads it twice on the same channel:

* ``tsfl``  — :meth:`GrpcTransport.download_model`: one buffer of the declared size,
              chunks written in place, the model decoded as a view of it (no copy);
* ``naive`` — the common way: ``buf += chunk.data`` then ``bytes(buf)`` and a decode.

Peak memory is the process's high-water mark (VmHWM, reset through
``/proc/self/clear_refs`` before each) above its resident size before the download.
The device then uploads an update of the same size through the resumable upload.

Run: ``python -m benchmarks.transfer [--mb 512]``; writes ``results/transfer.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import console, print_table, write_results

TOKEN = "enrol-bench"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> int:
    """Reset VmHWM to the current RSS; returns the current RSS in bytes."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_above(baseline: int) -> int:
    return _status("VmHWM") - baseline


async def serve(mb: int, tmp: Path) -> None:
    from tsfl.config import parse_job
    from tsfl.core.layout import ParamLayout
    from tsfl.pipeline.roles import LocalPipeline
    from tsfl.rpc.server import start_coordinator_server
    from tsfl.runtime.jobs import JobManager
    from tsfl.storage.store import Store

    n = mb * 1024**2 // 4
    layout = ParamLayout([("w", (n,), "float32")])
    vector = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    store = await Store.open(f"sqlite:///{tmp / 'bench.db'}")
    pipeline = await LocalPipeline.in_memory(store)
    jobs = JobManager(pipeline.coordinator)
    server, port, *_ = await start_coordinator_server(pipeline.coordinator, jobs, "127.0.0.1:0")
    spec = parse_job({"name": "transfer", "rounds": 1, "clients": {"count": 1, "per_round": 1}})
    await pipeline.coordinator.submit_job("transfer", spec, layout, vector, TOKEN)
    print(f"PORT {port} {n}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop(None)
        await pipeline.stop()
        await store.close()


async def naive_download(transport: Any, job_id: str) -> bytes:
    from tsfl.v1 import device_pb2

    buf = bytearray()
    async for chunk in transport.stub.DownloadModel(device_pb2.DownloadModelRequest(
            job_id=job_id, version=0), metadata=transport._md()):
        buf += chunk.data
    return bytes(buf)


async def measure(port: int, n: int) -> dict[str, Any]:
    from tsfl.core.layout import ParamLayout
    from tsfl.sdk.grpc_transport import GrpcTransport
    from tsfl.wire import decode_model

    layout = ParamLayout([("w", (n,), "float32")])
    transport = GrpcTransport(f"127.0.0.1:{port}", "transfer", "device-0")
    await transport.register(TOKEN)
    out: dict[str, Any] = {}
    try:
        for name in ("naive", "tsfl", "naive", "tsfl"):  # twice each: allocator warm
            base = reset_peak()
            t0 = time.perf_counter()
            if name == "tsfl":
                data = await transport.download_model("transfer", 0)
            else:
                data = await naive_download(transport, "transfer")
            _, _, vec, _ = decode_model(data, layout)
            elapsed = time.perf_counter() - t0
            assert vec.shape == (n,)
            out[name] = {"bytes": len(data), "peak_bytes": peak_above(base),
                         "seconds": elapsed, "mb_s": len(data) / 1e6 / elapsed}
            del data, vec
    finally:
        await transport.close()
    return out


def run(mb: int) -> dict[str, Any]:
    """Serve an ``mb`` MB model from a coordinator process and measure both downloads."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.transfer", "--serve",
                             "--mb", str(mb)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT"):
            raise SystemExit(f"server did not start: {line!r}")
        _, port, n = line.split()
        console.print(f"serving a {mb} MB model on port {port}")
        res = asyncio.run(measure(int(port), int(n)))
    finally:
        proc.terminate()
        proc.wait(30)
    size = res["tsfl"]["bytes"]
    return {"model_bytes": size, "results": res,
            "tsfl_peak_over_model": res["tsfl"]["peak_bytes"] / size,
            "naive_peak_over_model": res["naive"]["peak_bytes"] / size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(serve(args.mb, Path(tmp)))
        return
    data = run(args.mb)
    res, size = data["results"], data["model_bytes"]
    print_table(f"receiving a {size / 1e6:.0f} MB model over gRPC", [
        "contender", "peak MB above start", "× model", "MB/s"],
        [[k, v["peak_bytes"] / 1e6, v["peak_bytes"] / size, v["mb_s"]] for k, v in res.items()])
    console.print(f"wrote {write_results('transfer', data)}")


if __name__ == "__main__":
    main()
