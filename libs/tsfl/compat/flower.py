"""Flower clients, unchanged, as tsfl devices.

A Flower ``NumPyClient`` (or the ``Client`` its ``to_client()`` returns, or the
``client_fn(context)`` a ``ClientApp`` is built from) joins a tsfl job: our runner
fetches the task, downloads the global model and calls the client's ``fit(parameters,
config)`` with the model as a list of arrays in the job's tensor order (Flower's
``get_weights``/``set_weights`` order: the model's ``state_dict``), then uploads the
delta; ``evaluate`` and ``get_parameters`` map one to one. ``config`` is the task's
scalar settings (``lr``, ``epochs``, ``batch_size``, ``seed``, ... as the strategy sets
them) plus Flower's ``server_round``; nested protocol settings stay with the runner.

What applies around an unchanged client, because it acts on the update the client
returns: local DP (the device clips, noises and charges its own ledger), compression
with error feedback, HE sections and SecAgg+ masking — all by the runner, exactly as for
a :class:`~tsfl.sdk.client.TorchClient`. What cannot: record-level DP-SGD
(``training.dp_sgd``) clips and noises every record's gradient inside the training
loop, which the Flower client owns — refused with that reason. Whatever a Flower client
returns is checked before it counts: the tensor count and each shape against the job's
layout, finite values, a positive example count, numeric metrics only.

    from tsfl.compat.flower import run_flower, start_flower_client
    result = run_flower("job.yaml", client_fn)                  # embedded (tsfl run)
    await start_flower_client(address, FlowerClient(...), job_id=..., device_id=...,
                              token=...)                         # against a coordinator
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tsfl.config import ConfigError, JobSpec
from tsfl.core.layout import ParamLayout
from tsfl.sdk.client import NDArrays, NumPyClient
from tsfl.sdk.privacy_guard import DevicePrivacy, TaskRefused

#: bounds on what a Flower client may return with an update
MAX_METRICS = 32
MAX_METRIC_NAME = 64
MAX_EXAMPLES = 1 << 40


def _unwrap(client: Any) -> Any:
    """The NumPyClient behind Flower's ``to_client()`` wrapper, else the client."""
    return getattr(client, "numpy_client", client)


def flower_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A task's config as Flower's ``Config``: scalar values only (bool, int, float,
    str, bytes), with ``server_round`` for our ``round``."""
    out = {k: v for k, v in config.items()
           if isinstance(k, str) and isinstance(v, bool | int | float | str | bytes)}
    if "round" in out:
        out.setdefault("server_round", out["round"])
    return out


def check_parameters(params: Any, layout: ParamLayout, what: str) -> NDArrays:
    """A Flower client's parameter list checked against ``layout`` (count, then each
    shape in order, finite values); :class:`TaskRefused` (``invalid``) naming the tensor."""
    if not isinstance(params, list | tuple):
        raise TaskRefused("invalid", f"{what} returned {type(params).__name__}, not a list "
                                     "of arrays")
    if len(params) != len(layout):
        raise TaskRefused("invalid", f"{what} returned {len(params)} arrays; the job's model "
                                     f"has {len(layout)} tensors ({', '.join(layout.names)})")
    out = []
    for i, (arr, spec) in enumerate(zip(params, layout.specs, strict=True)):
        a = np.asarray(arr)
        if a.dtype.kind not in "fiu" or tuple(a.shape) != spec.shape:
            raise TaskRefused("invalid", f"{what}: array {i} has shape {tuple(a.shape)} "
                                         f"({a.dtype}); the job's tensor {spec.name!r} is "
                                         f"{spec.shape}")
        a = a.astype(np.float32, copy=False)
        if not np.all(np.isfinite(a)):
            raise TaskRefused("invalid", f"{what}: array {i} ({spec.name!r}) holds "
                                         "non-finite values")
        out.append(a)
    return out


def _metrics(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    out = {}
    for k, v in list(raw.items())[:MAX_METRICS]:
        if (isinstance(k, str) and len(k) <= MAX_METRIC_NAME and not isinstance(v, bool)
                and isinstance(v, int | float) and math.isfinite(v)):
            out[k] = float(v)
    return out


def _examples(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 0 < n <= MAX_EXAMPLES:
        raise TaskRefused("invalid", f"{what} returned {n!r} examples (1..2^40 expected)")
    return int(n)


class FlowerClient(NumPyClient):
    """A Flower ``NumPyClient`` (unchanged) as a tsfl client over the job's ``layout``.

    ``privacy``: the device owner's floor and ledger (:class:`DevicePrivacy`), used by the
    runner around the client (local DP)."""

    dp_sgd = None  # record-level DP-SGD lives inside a training loop this client owns

    def __init__(self, client: Any, layout: ParamLayout, *,
                 privacy: DevicePrivacy | None = None):
        self.inner = _unwrap(client)
        for name in ("fit", "get_parameters"):
            if not callable(getattr(self.inner, name, None)):
                raise TypeError(f"not a Flower NumPyClient: no {name}()")
        self.layout = layout
        self.privacy = privacy or DevicePrivacy()

    def get_parameters(self, config: dict[str, Any]) -> NDArrays:
        return check_parameters(self.inner.get_parameters(config=flower_config(config)),
                                self.layout, "get_parameters")

    def fit(self, parameters: NDArrays, config: dict[str, Any]
            ) -> tuple[NDArrays, int, dict[str, float]]:
        out = self.inner.fit(list(parameters), flower_config(config))
        if not isinstance(out, tuple) or len(out) != 3:
            raise TaskRefused("invalid", "fit must return (parameters, num_examples, "
                                         "metrics)")
        params, n, metrics = out
        return (check_parameters(params, self.layout, "fit"), _examples(n, "fit"),
                _metrics(metrics))

    def evaluate(self, parameters: NDArrays, config: dict[str, Any]
                 ) -> tuple[float, int, dict[str, float]]:
        loss, n, metrics = self.inner.evaluate(list(parameters), flower_config(config))
        return float(loss), _examples(n, "evaluate"), _metrics(metrics)

    def check(self) -> None:
        """Refuse a client whose model is not the job's (its ``get_parameters``)."""
        try:
            self.get_parameters({})
        except TaskRefused as exc:
            raise ValueError(f"this Flower client's model is not the job's: {exc}") from None


def refuse_unsupported(spec: JobSpec) -> None:
    """:class:`ConfigError` for job settings a Flower client cannot honour."""
    if spec.training.dp_sgd is not None:
        raise ConfigError(["training.dp_sgd: record-level DP-SGD clips and noises each "
                           "record's gradient inside local training, which a Flower client "
                           "runs itself; use privacy.mode local (the device clips and "
                           "noises the whole update around the client) or central"])
    if spec.attacks.kind != "none":
        raise ConfigError(["attacks: simulated attackers replace the built-in clients; "
                           "they do not apply to Flower clients"])


def flower_context(partition: int, partitions: int, run_config: Mapping[str, Any]) -> Any:
    """The Flower ``Context`` a ``client_fn`` gets in Flower's simulation:
    ``node_config`` holds ``partition-id`` and ``num-partitions``."""
    from flwr.common import Context, RecordDict

    return Context(run_id=0, node_id=partition, state=RecordDict(),
                   node_config={"partition-id": partition, "num-partitions": partitions},
                   run_config=dict(run_config))


def flower_federation(spec: JobSpec, client_fn: Callable[[Any], Any],
                      run_config: Mapping[str, Any] | None = None) -> Any:
    """The embedded run's federation with each device a Flower client made by
    ``client_fn(context)`` (partition ``i`` of ``clients.count``); the job's test split
    and model still serve the central evaluation."""
    from tsfl.runtime.simulation import build_federation, device_privacy

    refuse_unsupported(spec)
    fed = build_federation(spec)
    layout = fed.workspace.layout
    n = len(fed.client_ids)
    clients: dict[str, Any] = {}
    for i, cid in enumerate(fed.client_ids):
        client = FlowerClient(client_fn(flower_context(i, n, run_config or {})), layout,
                              privacy=device_privacy(spec, i))
        if i == 0:
            client.check()
        clients[cid] = client
    fed.clients = clients
    return fed


def run_flower(job: Any, client_fn: Callable[[Any], Any], out_dir: str | Path | None = None,
               *, run_config: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """:func:`tsfl.run` with Flower clients: the job (a YAML path, an example's name, a
    mapping or a JobSpec) embedded in this process, device ``i`` being
    ``client_fn(context)`` for partition ``i``. Writes the usual outputs (metrics.json,
    summary.json, tsfl.db) and returns the :class:`tsfl.api.RunResult`."""
    import asyncio
    import tempfile

    from tsfl.api import RunResult, resolve_spec
    from tsfl.runtime.embedded import run_embedded
    from tsfl.runtime.report import summarize, write_outputs

    spec = resolve_spec(job, overrides)
    fed = flower_federation(spec, client_fn, run_config)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="tsfl-"))
    result = asyncio.run(run_embedded(spec, out, federation=fed))
    summary = summarize(result.spec, result.metrics, wall_s=result.wall_s,
                        job_id=result.job_id, status=result.status, reason=result.reason,
                        ledger=result.ledger, robustness=result.robustness,
                        crypto=result.crypto)
    write_outputs(out, result.spec, result.metrics, summary)
    return RunResult(result.job_id, result.status, result.reason, result.spec,
                     result.metrics, summary, result.final_vector, out,
                     fed.workspace.layout)


async def start_flower_client(address: str, client: Any, *, job_id: str, device_id: str,
                              token: str, tls: Any = None, **options: Any) -> Any:
    """A Flower client takes part in a job on a coordinator until the job ends (returns
    :func:`tsfl.sdk.grpc_client.run_client`'s result). The job's layout comes from the
    coordinator at registration, and the client's model is checked against it first."""
    from tsfl.sdk.grpc_client import fetch_job_layout, run_client

    layout = await fetch_job_layout(address, job_id, device_id, token, tls)
    adapted = FlowerClient(client, layout, privacy=options.pop("privacy", None))
    adapted.check()
    return await run_client(address, adapted, job_id=job_id, device_id=device_id,
                            token=token, layout=layout, tls=tls, **options)
