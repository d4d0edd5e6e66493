"""A TrustStram service subscribing to TrustStram FL with faust-streaming.

    pip install 'truststram-fl[faust]'
    faust -A tsfl.examples.faust_consumer worker -l info     # broker: env TSFL_KAFKA

It logs every round transition and the size and norm of every released model.
"""

from __future__ import annotations

import os

import faust
import numpy as np

from tsfl.faust_models import ModelRelease, RoundEvent

app = faust.App("truststram-consumer",
                broker=f"kafka://{os.environ.get('TSFL_KAFKA', '127.0.0.1:9092')}",
                topic_allow_declare=False, topic_disable_leader=True)
rounds = app.topic("tsfl.rounds", value_type=RoundEvent, value_serializer="tsfl")
models = app.topic("tsfl.models", value_type=ModelRelease, value_serializer="tsfl")


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
