"""Cross-section rules for selection, the virtual clock and asynchronous FL (kept out of
:mod:`tsfl.config.job` so each domain's rules live beside each other)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tsfl.config.job import JobSpec


def check_selection(spec: JobSpec) -> None:
    """With any DP mode, a cohort must be a random, secret sample: amplification by
    sampling (what DP-FedAvg's accounting credits) and the device's own guarantee assume
    it. A selection that prefers devices by speed, loss or labels is neither random nor
    independent of the data, and over-selection keeps the fastest of a random sample."""
    sel = spec.selection
    if spec.private and (sel.kind != "uniform" or sel.over_selection > 0):
        what = (f"selection.kind {sel.kind!r}" if sel.kind != "uniform"
                else f"selection.over_selection {sel.over_selection}")
        raise ValueError(
            f"{what} with differential privacy: DP's accounting assumes each cohort is a "
            "uniformly random sample drawn in secret, but this selection prefers devices "
            "by what the server knows of them (speed, loss, labels, who answered first), "
            "which is neither random nor independent of their data; use selection.kind "
            "uniform without over-selection")
    if sel.over_selection > 0 and spec.crypto.mode != "none":
        raise ValueError(f"selection.over_selection with crypto.mode {spec.crypto.mode!r}: "
                         "the protocol's threshold is derived from the cohort it selects")
    if spec.simulation.clock is not None and spec.crypto.mode == "secagg":
        raise ValueError("simulation.clock with crypto.mode 'secagg': SecAgg+'s stages are "
                         "not simulated on the virtual clock yet")


def check_async(spec: JobSpec) -> None:
    """``strategy.mode: async`` (FedBuff) runs embedded on the virtual clock and through
    the services (:mod:`tsfl.pipeline.coordinator_fedbuff`), with the combinations its
    buffer can honour."""
    if spec.strategy.mode != "async":
        return
    if spec.privacy.mode == "central":
        raise ValueError(
            "strategy.mode async with privacy.mode central: FedBuff's buffer holds whichever "
            "K devices finish first, so a release's participants are neither a Poisson nor "
            "a fixed-size uniform sample of the population, and the accountant's "
            "amplification by sampling does not apply (nor does one charge per release "
            "bound a device that contributes to several releases); use strategy.mode sync "
            "for central DP")
    if spec.privacy.mode == "local":
        raise ValueError("strategy.mode async with privacy.mode local: the asynchronous "
                         "simulation does not run the devices' privatisation yet")
    if spec.crypto.mode != "none":
        raise ValueError(f"strategy.mode async with crypto.mode {spec.crypto.mode!r}: "
                         "secure aggregation and HE sum a fixed cohort, and a buffer has "
                         "none")
    if spec.robust.aggregator not in ("none", "norm_bounding"):
        raise ValueError(f"strategy.mode async with robust.aggregator "
                         f"{spec.robust.aggregator!r}: only norm_bounding (per update) "
                         "applies to a buffer's updates")
    if spec.strategy.fedbuff.concurrency > spec.clients.count:
        raise ValueError(f"strategy.fedbuff.concurrency ({spec.strategy.fedbuff.concurrency})"
                         f" exceeds clients.count ({spec.clients.count})")
