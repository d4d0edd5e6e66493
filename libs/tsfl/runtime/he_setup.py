"""HE for a simulated run (``tsfl run``): identities, keys and openings of the silos.

- An **identity authority** per run, and an identity (Ed25519 key and certificate) per
  simulated device: every encrypted section is signed (:mod:`tsfl.he.signing`). The
  authority's public key goes into the spec (``crypto.he.authority``); its private key
  stays here, on the devices' side.
- **Keys**: ``keying: shared`` — the key set given, or a fresh one (``OUT/keys``);
  ``keying: threshold`` — the silos' key ceremony (:mod:`tsfl.he.threshold.ceremony`)
  among all simulated devices, each keeping its own share (``OUT/keys/<device>.share``,
  mode 0600). The spec gets the key id.
- **Openings** (threshold): after each published round the silos online in it open the
  sum together through the coordinator; one silo's view is the evaluated model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsfl.config import JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.he import HeError, HeJob, SecretKeySet
from tsfl.he.job import he_params, threshold_params
from tsfl.he.threshold.ceremony import CeremonyParty, run_ceremony
from tsfl.he.threshold.keys import KeyShare
from tsfl.identity import DeviceIdentity, IdentityAuthority
from tsfl.sdk.he import HeDevice


@dataclass
class HeSetup:
    spec: JobSpec  # with key_id, authority (and keying) filled in
    authority: IdentityAuthority
    devices: dict[str, HeDevice]  # per simulated device
    keys: dict[str, SecretKeySet | KeyShare] = field(default_factory=dict)

    @property
    def threshold(self) -> bool:
        return self.spec.crypto.he.keying == "threshold"

    async def open_round(self, transport: Any, job_id: str, version: int, model: bytes,
                         job: HeJob, layout: ParamLayout, online: list[str]) -> None:
        """Threshold keying: the ``online`` silos open the model's sum together."""
        if not self.threshold:
            return
        config = job.task_config()

        async def one(cid: str) -> None:
            device = self.devices[cid]
            keys, he_job = device.job(config, layout)
            assert isinstance(keys, KeyShare)  # threshold keying: a silo holds a share
            await device.open_round(transport, cid, job_id, version, model, keys, he_job)

        await asyncio.gather(*(one(c) for c in online))

    def view(self, model: bytes, vector: np.ndarray, job: HeJob, layout: ParamLayout,
             online: list[str]) -> np.ndarray:
        """The model as a silo that opened it sees it (evaluation)."""
        cid = next((c for c in online if c in self.devices), next(iter(self.devices)))
        device = self.devices[cid]
        return device.open_model(model, vector, *device.job(job.task_config(), layout))


def he_setup(spec: JobSpec, layout: ParamLayout, client_ids: list[str], job_id: str,
             out_dir: Path, given: SecretKeySet | None) -> HeSetup | None:
    """Identities and keys for ``spec`` (None unless ``crypto.mode`` is ``he``)."""
    if spec.crypto.mode != "he":
        return None
    h = spec.crypto.he
    authority = IdentityAuthority.generate()
    identities = {cid: DeviceIdentity.enrol(cid, authority) for cid in client_ids}
    keys_dir = out_dir / "keys"
    (keys_dir).mkdir(parents=True, exist_ok=True)
    (keys_dir / "authority.pub").write_text(authority.public_key.hex() + "\n")
    keys: dict[str, SecretKeySet | KeyShare] = {}
    if h.keying == "threshold":
        if given is not None:
            raise HeError("key", "--he-keys gives a shared key set, and this job's "
                                 "crypto.he.keying is threshold (its silos make their key "
                                 "in a ceremony): drop --he-keys or set keying: shared")
        if h.key_id:
            raise HeError("key", "crypto.he.key_id is set, and tsfl run makes a fresh "
                                 "threshold key per run: drop key_id")
        params = threshold_params(spec)
        parties = [CeremonyParty(identities[c], params, job_id, client_ids,
                                 [authority.public_key]) for c in client_ids]
        shares, _ = run_ceremony(parties)
        for share in shares:
            share.write(keys_dir / f"{share.device_id}.share")
            keys[share.device_id] = share
        key_id = shares[0].key_id
    else:
        secret = given
        if secret is None:
            if h.key_id:
                raise HeError("key", f"crypto.he.key_id {h.key_id!r} is set: pass its key "
                                     "set (tsfl run --he-keys DIR), or drop key_id")
            secret = SecretKeySet(he_params(spec, layout))
            secret.write(keys_dir)
        elif h.key_id not in (None, secret.key_id):
            raise HeError("key", f"crypto.he.key_id is {h.key_id!r}, the key set given is "
                                 f"{secret.key_id!r}")
        elif secret.params != he_params(spec, layout):
            raise HeError("key", "the key set given was made for other CKKS parameters "
                                 "than this job's (tsfl keys init with this job spec)")
        keys = dict.fromkeys(client_ids, secret)
        key_id = secret.key_id
    he = h.model_copy(update={"key_id": key_id, "authority": [authority.public_key.hex()]})
    spec = spec.model_copy(update={"crypto": spec.crypto.model_copy(update={"he": he})})
    devices = {cid: HeDevice([keys[cid]], identity=identities[cid]) for cid in client_ids}
    return HeSetup(spec, authority, devices, keys)
