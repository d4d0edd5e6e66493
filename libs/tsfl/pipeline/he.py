"""The he role: ``tsfl.rounds`` + ``tsfl.updates.encrypted`` → ``tsfl.aggregates``
(the encrypted coordinates' sum still encrypted).

The aggregator's stage code, for HE jobs: the same streaming fold over the clear
coordinates (selective encryption), and beside it the encrypted sum
(:class:`tsfl.he.job.RoundSum`), which adds the encrypted sections as they arrive. It
holds the job's public part only (parameters, key commitment, trusted identity
authorities): nothing on this side can decrypt. No update is readable here, so there is
no Byzantine verdict to wait for (such jobs are refused at submission).

Every section is checked again here — anyone who can write to the encrypted-updates topic
could otherwise add a forged ciphertext: one unsigned, signed by an untrusted or another
device, signed for another key (commitment mismatch), or altered after signing is refused
with its code, audited (``he.section.refused``) and not counted as its client's update,
whose own section still folds when it comes; the round completes from the honest ones.
"""

from __future__ import annotations

from tsfl.bus import topics
from tsfl.core.update import Update
from tsfl.he import HeError
from tsfl.he.signing import refusal_code
from tsfl.pipeline.aggregator import Aggregator, _JobState, _Round


class HomomorphicAggregator(Aggregator):
    name = "he"
    update_topics = (topics.UPDATES_ENCRYPTED,)
    serves_mode = "he"

    async def _admit(self, state: _JobState, rnd: _Round, update: Update) -> bool:
        if state.he is None or update.sealed is None:
            return True
        try:
            rnd.sections[update.client_id] = state.he.check_section(
                update.sealed, state.job_id, rnd.number, update.client_id)
        except HeError as exc:
            code = refusal_code(exc.code)
            self.log.warning("%s round %d: refused a section for %s: %s (%s)", state.job_id,
                             rnd.number, update.client_id, code, exc)
            await self.store.append_audit(state.job_id, "he.section.refused", {
                "round": rnd.number, "client_id": update.client_id, "code": code,
                "message": str(exc)[:512]}, actor=self.name)
            return False
        return True


__all__ = ["HomomorphicAggregator"]
