"""A released model's provenance, read from the store a job ran on: the model card
``tsfl export`` writes beside the model (``model_card.json`` and ``model_card.md``).

It says how the version was made — the spec and its hash, rounds, participants,
ε/δ/mechanism/accountant, the robust rule and what it refused, the crypto mode, the audit
chain's head (checked) and the metrics. For a DP job it reports what the ledger and the
released model say, and withholds exact counts of who took part and their losses (they
are what the mode's adversary — whoever holds the released model — must not learn:
docs/privacy.md); the operator still has them in the database.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsfl.config import JobSpec, parse_job
from tsfl.core.layout import ParamLayout
from tsfl.errors import TsflError
from tsfl.pipeline.registry import accountant_of, provenance, vector_sha256
from tsfl.storage.rows import JobRow, job_layout
from tsfl.storage.store import Store

WITHHELD = "withheld: a DP job's release does not say who or how many took part"


class ExportError(TsflError, ValueError):
    """A model cannot be exported (no such job or version, an encrypted model, ...)."""


@dataclass
class Released:
    """One released version as stored: its job, spec, layout, vector and round."""

    job_id: str
    job: JobRow
    spec: JobSpec
    layout: ParamLayout
    version: int
    round: int
    vector: np.ndarray
    created_at: str | None


async def read_release(store: Store, job_id: str, version: int | None = None) -> Released:
    """The stored checkpoint of ``version`` (default: the newest) of ``job_id``."""
    job = await store.get_job(job_id)
    if job is None:
        known = [j["id"] for j in await store.list_jobs()][:10]
        raise ExportError(f"no job {job_id!r} in this database (jobs: "
                          f"{', '.join(known) or 'none'})")
    ckpt = await store.latest_checkpoint(job_id, version)
    if ckpt is None:
        raise ExportError(f"job {job_id!r} has no model version {version}")
    spec = parse_job(job["spec"], f"job {job_id}")
    if spec.crypto.mode == "he" and int(ckpt["version"]) > 0:
        raise ExportError("crypto.mode he: the server holds this model's encrypted "
                          "coordinates only as ciphertexts (zeros in its vector); export "
                          "the model a silo decrypted instead")
    layout = job_layout(job)
    if ckpt["layout_digest"] != layout.digest:
        raise ExportError(f"version {ckpt['version']}'s layout is not the job's")
    return Released(job_id, job, spec, layout, int(ckpt["version"]), int(ckpt["round"]),
                    ckpt["vector"], ckpt.get("created_at"))


async def only_job(store: Store) -> str:
    """The id of the single job in a ``tsfl run`` database."""
    jobs = await store.list_jobs()
    if len(jobs) != 1:
        raise ExportError(f"the database holds {len(jobs)} jobs: name one")
    return str(jobs[0]["id"])


async def model_card(store: Store, rel: Released, files: dict[str, str],
                     fmt: str, io: dict[str, Any]) -> dict[str, Any]:
    """The card of ``rel`` exported as ``files`` (name → SHA-256) in format ``fmt``."""
    from tsfl import __version__

    spec, private = rel.spec, rel.spec.private
    rounds = [r for r in await store.list_rounds(rel.job_id) if r["number"] <= rel.round]
    published = [r for r in rounds if r["state"] == "PUBLISHED"]
    metrics = dict(next((r["metrics"] for r in reversed(published)
                         if r["number"] == rel.round and r.get("metrics")), {}) or {})
    if private:  # the released model's own metrics only
        metrics = {k: v for k, v in metrics.items() if k in ("test_accuracy", "test_loss",
                                                             "epsilon")}
    parts = [p for p in await store.list_participants(rel.job_id) if p["round"] <= rel.round]
    refused = Counter(str(p.get("reason") or "refused").split(":")[0]
                      for p in parts if p["status"] == "rejected")
    accepted = {p["client_id"] for p in parts if p["status"] == "accepted"}
    devices = len(await store.list_device_ids(rel.job_id))
    ledger = [r for r in await store.privacy_ledger(rel.job_id) if r["round"] <= rel.round]
    last = ledger[-1] if ledger else None
    trail = await store.audit_trail(rel.job_id)
    ok, why = await store.verify_audit(rel.job_id)
    prov = provenance(spec)
    card: dict[str, Any] = {
        "schema": "tsfl.model_card/1",
        "tsfl_version": __version__,
        "format": fmt,
        "files": files,
        "job": rel.job_id, "name": spec.name, "status": rel.job["status"],
        "version": rel.version, "round": rel.round, "released_at": rel.created_at,
        "spec_sha256": rel.job["spec_sha256"],
        "model": {"kind": spec.model.kind, "builder": spec.model.builder,
                  "parameters": rel.layout.total_size, "layout_digest": rel.layout.digest,
                  "sha256": vector_sha256(rel.vector),
                  "tensors": [{"name": s.name, "shape": list(s.shape)}
                              for s in rel.layout.specs], **io,
                  "warm_start": _file_name(spec.model.init)},
        "training": {"strategy": spec.strategy.name, "rounds_planned": spec.rounds,
                     "rounds_published": len(published),
                     "rounds_failed": sum(r["state"] == "FAILED" for r in rounds),
                     "clients_per_round": spec.clients.per_round,
                     "local": spec.training.model_dump(mode="json")},
        "participants": {"devices_enrolled": WITHHELD if private else devices,
                         "distinct_accepted": WITHHELD if private else len(accepted)},
        "privacy": {**prov["privacy"],
                    "epsilon": None if last is None else last["epsilon"],
                    "delta": prov["privacy"]["delta"] if last is None else last["delta"],
                    "mechanism": (prov["privacy"]["mechanism"] if last is None
                                  else last["mechanism"]),
                    "accountant": (accountant_of(spec) if last is None
                                   else last["accountant"]),
                    "noise_multiplier": None if last is None else last["noise_multiplier"],
                    "clip_norm": None if last is None else last["clip_norm"],
                    "target_epsilon": spec.privacy.target_epsilon},
        "robust": {"rule": spec.robust.aggregator,
                   "refusals": (WITHHELD if private else sum(refused.values())),
                   "refusal_reasons": ({} if private else dict(refused.most_common(20)))},
        "crypto": {"mode": spec.crypto.mode,
                   "key_id": spec.crypto.he.key_id if spec.crypto.mode == "he" else None},
        "audit": {"head_hash": trail[-1]["hash"] if trail else None,
                  # under DP the count would give the withheld refusals away
                  "events": WITHHELD if private else len(trail), "chain_verified": ok,
                  **({} if ok else {"problem": why})},
        "metrics": metrics,
        "spec": _public_spec(spec),
    }
    return card


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a short human-readable page."""
    p, m, r, a = card["privacy"], card["model"], card["robust"], card["audit"]
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in card["metrics"].items()) or "not evaluated"
    eps = ("none (no differential privacy)" if p["mode"] == "none" and not p["record_level"]
           else f"ε = {p['epsilon']:.4g}, δ = {p['delta']:g} ({p['mechanism']}, "
                f"{p['accountant']} accountant; {p['guarantee']})"
           if p["epsilon"] is not None else
           f"δ = {p['delta']}, ε not in the server's ledger ({p['guarantee']})")
    files = "\n".join(f"| `{n}` | `{h}` |" for n, h in card["files"].items())
    lines = [
        f"# {card['name']} — version {card['version']}",
        "",
        f"Exported by TrustStram FL {card['tsfl_version']} as **{card['format']}** from job "
        f"`{card['job']}` ({card['status']}), released after round {card['round']}"
        + (f" at {card['released_at']}." if card["released_at"] else "."),
        "",
        "| file | SHA-256 |", "|---|---|", files,
        "",
        "## Model",
        f"- kind `{m['kind']}`, {m['parameters']:,} parameters, layout `{m['layout_digest']}`",
        f"- input `{m.get('input', {})}`, output `{m.get('output', {})}`",
        f"- parameter vector SHA-256 `{m['sha256']}` (the `tsfl.registry` announcement's)",
        f"- warm start: {m['warm_start'] or 'none'}",
        "",
        "## How it was trained",
        f"- job spec SHA-256 `{card['spec_sha256']}` (the full spec is in model_card.json)",
        f"- {card['training']['strategy']}, {card['training']['rounds_published']} rounds "
        f"published ({card['training']['rounds_failed']} failed) of "
        f"{card['training']['rounds_planned']} planned",
        f"- participants: {card['participants']['devices_enrolled']} devices enrolled; "
        f"distinct accepted: {card['participants']['distinct_accepted']}",
        f"- privacy: {eps}",
        f"- robust rule: {r['rule']}; refusals: {r['refusals']}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in r['refusal_reasons'].items())})"
           if r["refusal_reasons"] else ""),
        f"- crypto: {card['crypto']['mode']}",
        f"- audit chain: {a['events']} events, head `{a['head_hash']}`, "
        f"{'verified' if a['chain_verified'] else 'BROKEN: ' + a.get('problem', '')}",
        "",
        "## Metrics",
        f"{metrics}",
        "",
    ]
    return "\n".join(lines)


def _file_name(path: str | None) -> str | None:
    """A warm-start checkpoint by file name: the coordinator's paths stay its own."""
    return None if path is None else path.replace("\\", "/").rsplit("/", 1)[-1]


def _public_spec(spec: Any) -> dict[str, Any]:
    """The spec as published in a card: file paths reduced to their names."""
    out: dict[str, Any] = spec.model_dump(mode="json")
    if out.get("model", {}).get("init"):
        out["model"]["init"] = _file_name(out["model"]["init"])
    if out.get("data", {}).get("path"):
        out["data"]["path"] = _file_name(out["data"]["path"])
    return out
