"""A threshold-HE silo's duties besides training: the key ceremony, and opening every
new model's sum — through any transport that carries ``he_setup`` and ``he_open`` (gRPC
``HeSetup``/``HeOpen``, or the in-process one).

**Ceremony** (:func:`take_part`). The coordinator names the participants, the job's
parameters and its label; the silo refuses parameters below its own floor (security
checked by :func:`~tsfl.he.threshold.params.check_params`, a threshold at least
``min_threshold`` — by default a majority of the silos) or a label that is not its job,
then runs :class:`~tsfl.he.threshold.ceremony.CeremonyParty` with **its own** trusted
authorities: every advertisement, deal and confirmation must be signed by a participant
certified by one of them. A substituted, replayed or forged message, a share that is not
the one its dealer signed, or a confirmation of another key id (the relay showed silos
different messages) makes the silo **abort**: it tells the coordinator why (the ceremony
and the job fail with that reason) and takes no further part in the job
(:class:`SiloAborted`). It keeps its share in memory and, with a share directory, in
``DIR/<job>/<device>.share`` (mode 0600).

**Openings** (:func:`serve`). Every silo — selected for the round or not — takes part in
opening the current model's sum: the coordinator answers ``status`` with the model whose
sum is being opened, and an idle silo downloads it and runs the opening steps
(:meth:`~tsfl.sdk.he.HeDevice.open_round`), checking everything
:class:`~tsfl.he.threshold.opening.OpeningSilo` checks.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tsfl.core.layout import ParamLayout
from tsfl.he.errors import HeError
from tsfl.he.threshold.ceremony import CeremonyParty, check_confirmations
from tsfl.he.threshold.keys import KeyShare
from tsfl.he.threshold.params import ThresholdParams

if TYPE_CHECKING:
    from tsfl.sdk.he import HeDevice

log = logging.getLogger("tsfl.sdk.he")

#: after a failed opening, a silo tries that model again this much later
RETRY_OPENING_S = 2.0


class SiloAborted(HeError):
    """The silo found the key ceremony's transcript wrong and left the job."""

    def __init__(self, job_id: str, reason: str):
        super().__init__("silo_aborted", f"left job {job_id}: {reason}")
        self.job_id = job_id
        self.reason = reason


class _Relayed(HeError):
    """A refusal or failure the coordinator answered (not this silo's finding)."""


async def _step(transport: Any, client_id: str, job_id: str, stage: str,
                payload: dict[str, Any]) -> dict[str, Any]:
    try:
        return await transport.he_setup(client_id, job_id, stage, payload)
    except _Relayed:
        raise
    except HeError as exc:
        raise _Relayed(exc.code, str(exc)) from None


def _check_invitation(device: HeDevice, client_id: str, job_id: str,
                      info: dict[str, Any]) -> tuple[ThresholdParams, list[str]]:
    params = ThresholdParams.from_json(info.get("params"))  # security and sizes checked
    participants = info.get("participants")
    if not isinstance(participants, list) or not all(isinstance(p, str)
                                                     for p in participants):
        raise HeError("key", "the ceremony names no participants")
    if info.get("label") != job_id:
        raise HeError("key", f"the ceremony is for {info.get('label')!r}, not this job")
    if client_id not in participants or len(set(participants)) != params.parties:
        raise HeError("key", f"the ceremony's {len(participants)} participants do not "
                             f"include this silo or are not the parameters' {params.parties}")
    floor = device.min_threshold or params.parties // 2 + 1
    if params.threshold < floor:
        raise HeError("params", f"threshold {params.threshold} of {params.parties} silos is "
                                f"below this silo's floor of {floor}")
    return params, participants


async def take_part(device: HeDevice, transport: Any, client_id: str, job_id: str,
                    info: dict[str, Any]) -> KeyShare:
    """Run this silo's side of the job's key ceremony (``info``: the coordinator's
    invitation). Raises :class:`SiloAborted` when it finds the transcript wrong (after
    telling the coordinator), :class:`HeError` when the ceremony failed elsewhere."""
    if device.identity is None or not device.trusted:
        raise HeError("identity", "a threshold-HE silo needs an identity and the "
                                  "authorities it trusts")
    try:
        params, participants = _check_invitation(device, client_id, job_id, info)
        party = CeremonyParty(device.identity, params, job_id, participants, device.trusted)
        board = await _step(transport, client_id, job_id, "advertise", party.advertise())
        deal = party.deal(board.get("adverts") or [])
        board = await _step(transport, client_id, job_id, "deal", deal)
        share = party.finish(board.get("deals") or [])
        board = await _step(transport, client_id, job_id, "confirm", party.confirm(share))
        check_confirmations(share, board.get("confirms") or [])
    except _Relayed:
        raise
    except HeError as exc:  # this silo's own finding: it leaves, and says why
        device.aborted[job_id] = str(exc)
        try:
            await _step(transport, client_id, job_id, "abort",
                        {"code": exc.code, "message": str(exc)[:512]})
        except HeError as relayed:
            log.info("%s: reporting the abort failed: %s", client_id, relayed)
        raise SiloAborted(job_id, str(exc)) from None
    device.add_share(share, job_id)
    log.info("%s: holds its share of key %s (%d silos, t = %d)", client_id,
             share.key_id[:16], params.parties, params.threshold)
    return share


async def serve(device: HeDevice, transport: Any, client_id: str, job_id: str,
                layout: ParamLayout) -> None:
    """An idle silo's duties for ``job_id``: join the key ceremony when one runs, open
    the current model's sum when it has not yet. A no-op for a device that is not a
    threshold-HE silo, or a transport without the HE steps."""
    if (getattr(transport, "he_setup", None) is None or device.identity is None
            or job_id in device.aborted or job_id in device.no_duties
            or not (device.trusted or device.threshold_keys)):
        return
    try:
        status = await _step(transport, client_id, job_id, "status", {})
    except _Relayed as exc:
        if exc.code in ("not_threshold", "unknown_job"):
            device.no_duties.add(job_id)  # nothing to do for this job, ever
            return
        raise
    ceremony = status.get("ceremony")
    if (isinstance(ceremony, dict) and ceremony.get("state") == "running"
            and client_id in (ceremony.get("participants") or ())
            and device.joined.get(job_id) != ceremony.get("attempt")):
        device.joined[job_id] = str(ceremony.get("attempt"))
        await take_part(device, transport, client_id, job_id, ceremony)
    opening = status.get("opening")
    if not isinstance(opening, dict) or not isinstance(opening.get("he"), dict):
        return
    version = int(opening.get("version", -1))
    retry_at = device.retry_at.get((job_id, version), 0.0)
    if (job_id, version) in device.opened_versions or time.monotonic() < retry_at:
        return
    if opening["he"].get("key_id") not in device.keys:
        return  # not a holder of this key
    keys, job = device.job(opening["he"], layout)
    if not isinstance(keys, KeyShare):
        return
    try:
        model = await transport.download_model(job_id, version, None, client_id)
    except Exception:
        if await _opening_version(transport, client_id, job_id) != version:
            return  # the other silos opened it meanwhile: the model moved on
        raise
    try:
        await device.open_round(transport, client_id, job_id, version, model, keys, job)
    except HeError:
        device.retry_at[(job_id, version)] = time.monotonic() + RETRY_OPENING_S
        raise
    device.opened_versions = {k for k in device.opened_versions  # the recent ones suffice
                              if k[0] != job_id or k[1] > version - 8} | {(job_id, version)}
    device.retry_at = {k: t for k, t in device.retry_at.items() if k[0] != job_id}


async def _opening_version(transport: Any, client_id: str, job_id: str) -> int | None:
    """The version whose sum awaits opening now, or None when none does."""
    opening = (await _step(transport, client_id, job_id, "status", {})).get("opening")
    return int(opening.get("version", -1)) if isinstance(opening, dict) else None
