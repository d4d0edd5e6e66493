"""A TrustStram service subscribing to TrustStram FL with faust-streaming.

    pip install 'truststram-fl[faust]'
    faust -A tsfl.examples.faust_consumer worker -l info     # broker: env TSFL_KAFKA

It logs every round transition, the size and norm of every released model, and each
version announced to the model registry with the `tsfl export` command that writes it.
"""

from __future__ import annotations

import os

import faust
import numpy as np

from tsfl.faust_models import ModelRelease, ModelVersion, RoundEvent

app = faust.App("truststram-consumer",
                broker=f"kafka://{os.environ.get('TSFL_KAFKA', '127.0.0.1:9092')}",
                topic_allow_declare=False, topic_disable_leader=True)
rounds = app.topic("tsfl.rounds", value_type=RoundEvent, value_serializer="tsfl")
models = app.topic("tsfl.models", value_type=ModelRelease, value_serializer="tsfl")
registry = app.topic("tsfl.registry", value_type=ModelVersion, value_serializer="tsfl")


@app.agent(rounds)
async def on_round(stream):
    async for event in stream:
        print(f"{event.job} round {event.round}: {event.type}"
              + (f" ({event.reason})" if event.reason else ""))
        yield event


@app.agent(models)
async def on_model(stream):
    async for model in stream:
        vec = model.vector()
        print(f"{model.job} model v{model.version} (round {model.round}): {vec.size} params, "
              f"norm {float(np.linalg.norm(vec)):.4f}"
              + (f", ε {model.epsilon:.3g}" if model.epsilon is not None else ""))
        yield model


@app.agent(registry)
async def on_version(stream):
    async for version in stream:
        acc = version.metrics.get("test_accuracy")
        print(f"{version.job} v{version.version} registered (sha256 {version.sha256[:12]}"
              + (f", accuracy {acc:.4f}" if acc is not None else "")
              + f"): {version.artefact['export']}")
        yield version
