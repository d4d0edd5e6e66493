"""A fleet of simulated devices (the embedded run's partitions) as real gRPC clients of
a coordinator: ``tsfl devices`` and the distributed tests run jobs with it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tsfl.config import JobSpec
    from tsfl.identity import IdentityAuthority
    from tsfl.sdk.grpc_transport import TLSConfig

FLEET_CHANNELS = 4  # gRPC connections a `tsfl devices` fleet's devices share


def threshold_authority(spec: JobSpec, authority_key: str | None) -> IdentityAuthority:
    """The identity authority of a threshold-HE job's simulated silos: the private key
    given (``--authority-key``), which must be one the job trusts (``crypto.he.authority``:
    the silos' certificates sign every ceremony and opening message)."""
    from tsfl.identity import IdentityAuthority

    if not authority_key:
        raise ValueError("a threshold-HE job needs --authority-key: each silo signs its "
                         "key-ceremony, section and opening messages with an identity that "
                         "authority certifies, and trusts only certificates it issued")
    authority = IdentityAuthority.load(authority_key)
    if authority.public_key.hex() not in (spec.crypto.he.authority or []):
        raise ValueError(f"{authority_key} is not one of the job's identity authorities "
                         "(crypto.he.authority)")
    return authority


async def run_fleet(address: str, job_id: str, token: str, spec: JobSpec, count: int,
                    he_keys: Sequence[Any] = (), tls: TLSConfig | None = None,
                    authority: IdentityAuthority | None = None, *, share_dir: str | None = None,
                    silos: dict[str, Any] | None = None) -> list[int]:
    """``count`` simulated devices (the embedded run's partitions) as real gRPC clients;
    ``he_keys``: the secret key set of an HE job (shared keying), which every device of the
    fleet holds; ``authority`` (an :class:`~tsfl.identity.IdentityAuthority`) certifies
    each device's identity, with which it signs its encrypted sections (HE) or its keys
    (SecAgg+, whose devices trust only that authority; a fresh one when none is given).
    Threshold HE: each device is a silo trusting only ``authority``; it makes its share in
    the job's key ceremony (written under ``share_dir``/JOB/DEVICE.share when given) and
    opens each model with the others; ``silos`` receives each one's
    :class:`~tsfl.sdk.he.HeDevice`."""
    from tsfl.identity import DeviceIdentity
    from tsfl.runtime.simulation import build_federation
    from tsfl.sdk.grpc_client import start_client
    from tsfl.sdk.grpc_transport import open_channel
    from tsfl.sdk.he import HeDevice, SiloKeys

    fed = build_federation(spec)
    ids = fed.client_ids[:count]

    if spec.crypto.mode == "secagg":  # no authority given: one for this fleet alone
        from tsfl.runtime.secagg_setup import secagg_devices

        for cid, device in secagg_devices(spec, ids, authority).items():
            fed.clients[cid].secagg_device = device  # ClientRunner's default

    def keys_of(cid: str) -> list[Any]:
        if authority is None:
            return list(he_keys)
        identity = DeviceIdentity.enrol(cid, authority)
        return [SiloKeys(k, identity) for k in he_keys]

    def silo(cid: str) -> HeDevice | None:
        if not (spec.crypto.mode == "he" and spec.crypto.he.keying == "threshold"):
            return None
        if authority is None:
            raise ValueError("threshold-HE silos need their identity authority")
        device = HeDevice(identity=DeviceIdentity.enrol(cid, authority),
                          trusted=[authority.public_key], share_dir=share_dir)
        if silos is not None:
            silos[cid] = device
        return device

    # They share one model workspace and train one at a time in this event loop
    # (offload=False), like the embedded simulation, and a few connections (not one each).
    channels = [open_channel(address, tls, own_connection=True)
                for _ in range(max(1, min(len(ids), FLEET_CHANNELS)))]
    tasks = [asyncio.ensure_future(start_client(
        address, fed.clients[cid], job_id=job_id, device_id=cid, token=token,
        layout=fed.workspace.layout, offload=False, he_keys=keys_of(cid), tls=tls,
        he=silo(cid), channel=channels[i % len(channels)])) for i, cid in enumerate(ids)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # a device that failed ends the fleet: the others stop before their channels
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
