"""TrustStram consumers' Faust records decode what the pipeline publishes."""

import numpy as np
import pytest

faust = pytest.importorskip("faust", reason="installed with the [faust] extra")

from tsfl.core.layout import ParamLayout  # noqa: E402
from tsfl.faust_models import ModelRelease, RoundEvent, TsflCodec  # noqa: E402
from tsfl.pipeline import events  # noqa: E402
from tsfl.pipeline.privacy import release_model  # noqa: E402


def test_round_events_decode_into_records_without_the_cohort():
    raw = events.round_event(events.COLLECTING, "job-1", 3, cohort=["a", "b"], model_version=2)
    event = RoundEvent.from_data(TsflCodec().loads(raw))
    assert (event.type, event.job, event.round, event.model_version) == (
        "collecting", "job-1", 3, 2)
    assert not hasattr(event, "cohort")  # who takes part is the operator's to know


def test_released_models_decode_into_records():
    layout = ParamLayout([("w", (4,), "float32")])
    vec = np.arange(4, dtype=np.float32)
    agg = events.aggregate_message("job-1", 2, 1, layout=layout.digest, ok=True,
                                   accepted=["a"], rejected={"b": "nonfinite"},
                                   num_examples=12, train_loss=0.5, mean=vec - 1)
    head, _ = events.parse_aggregate(agg)
    frame = release_model("job-1", 2, layout.digest, vec, head, 2, 1.25)
    model = ModelRelease.from_data(TsflCodec().loads(frame))
    assert (model.job, model.version, model.round) == ("job-1", 2, 2)
    assert model.epsilon == 1.25 and model.layout == layout.digest
    np.testing.assert_array_equal(model.vector(), vec)
    # the release names nobody: not in the record, not anywhere in the frame
    assert b"nonfinite" not in frame and b'"a"' not in frame and b"\xa1a" not in frame
    assert not {"accepted", "rejected", "num_examples"} & set(TsflCodec().loads(frame))


async def test_the_example_app_agents_process_events():
    from tsfl.examples import faust_consumer

    async with faust_consumer.on_round.test_context() as agent:
        event = RoundEvent(type="published", job="j", round=1, model_version=1)
        out = await agent.put(event)
        assert agent.results[out.message.offset].round == 1


def test_alerts_decode_into_records():
    from tsfl.faust_models import Alert

    data = events.alert_message("j1", 3, flagged=["a", "b"], fraction=0.2, threshold=0.1,
                                reasons={"a": "refused", "b": "norm jump"})
    alert = Alert.loads(data)
    assert (alert.job, alert.round, alert.flagged, alert.fraction) == ("j1", 3, ["a", "b"], 0.2)
    assert alert.reasons["b"] == "norm jump"
