"""Compression in whole runs: chains and sizes in metrics, lossless downlink deltas,
skipped uploads, adaptive per-device codecs; plus the scheduling math."""

import asyncio
import copy

import numpy as np
import pytest
import yaml

from tsfl.compress import CodecError
from tsfl.compress.schedule import LinkEstimate, choose_rung, ladder
from tsfl.config import ConfigError, parse_job
from tsfl.runtime.embedded import run_embedded
from tsfl.sdk.compression import UplinkConfig

BASE = {
    "name": "comp", "seed": 1, "rounds": 6,
    "clients": {"count": 12, "per_round": 4},
    "model": {"kind": "mlp", "hidden": [32]},
    "training": {"lr": 0.05, "momentum": 0.9, "epochs": 2, "batch_size": 16},
}


def run(tmp_path, name, **compression):
    spec = copy.deepcopy(BASE)
    network = compression.pop("network", None)
    if network:
        spec["simulation"] = {"network": network}
        spec["round"] = {"deadline_s": 1.0}
    spec["compression"] = compression
    return asyncio.run(run_embedded(parse_job(spec), tmp_path / name))


def test_codec_chains_and_sizes_show_in_metrics(tmp_path):
    plain = run(tmp_path, "plain")
    packed = run(tmp_path, "packed", uplink={"chain": ["topk", "q8", "zstd"], "ratio": 0.1})
    for m in plain.metrics:
        assert set(m["codecs"]) == {"f32"}
        assert m["codecs"]["f32"]["bytes"] == m["bytes_up"]
    for m in packed.metrics:
        assert set(m["codecs"]) == {"topk+q8+zstd"}
        assert m["codecs"]["topk+q8+zstd"] == {"updates": m["clients"], "bytes": m["bytes_up"]}
    up = sum(m["bytes_up"] for m in plain.metrics) / sum(m["bytes_up"] for m in packed.metrics)
    assert up > 10
    accs = [m["test_accuracy"] for m in packed.metrics]
    ref = [m["test_accuracy"] for m in plain.metrics]
    assert max(accs[-3:]) > 0.5 and max(ref[-3:]) > 0.5, (accs, ref)  # both learn


def test_delta_downlink_is_lossless_and_smaller(tmp_path):
    """Every delta download is checked on the device against the server model's checksum
    (a mismatch fails the device's round), so a completed run with all updates accepted
    means every device rebuilt its model bit for bit."""
    full = run(tmp_path, "full", uplink={"chain": ["q8"]})
    delta = run(tmp_path, "delta", uplink={"chain": ["q8"]}, downlink="delta")
    assert delta.status == "COMPLETED"
    assert [m["clients"] for m in delta.metrics] == [4] * 6
    assert sum(m["bytes_down"] for m in delta.metrics) < sum(m["bytes_down"]
                                                            for m in full.metrics)


def test_devices_with_negligible_change_skip_and_say_so(tmp_path):
    result = run(tmp_path, "skip", skip_below=1e6)
    assert all(m["skipped"] == m["clients"] for m in result.metrics)
    assert all(set(m["codecs"]) == {"zero"} for m in result.metrics)
    spec = parse_job({**BASE, "compression": {"skip_below": 1e6}})
    from tsfl.runtime.simulation import initial_model

    _, initial = initial_model(spec)
    np.testing.assert_array_equal(result.final_vector, initial)  # nothing was sent


def test_adaptive_codecs_follow_each_device_link(tmp_path):
    net = {"bandwidth_mbps": 0.3, "bandwidth_sigma": 1.5, "latency_ms": 20}
    fixed = run(tmp_path, "fixed", network=net)
    adaptive = run(tmp_path, "adaptive", network=net,
                   adaptive={"deadline_fraction": 0.2, "min_ratio": 0.01})
    chains = set().union(*(m["codecs"] for m in adaptive.metrics[2:]))
    assert len(chains) >= 2 and chains != {"f32"}  # slow and fast links differ
    late = slice(2, None)
    slow_fixed = np.mean([m["slowest_upload_s"] for m in fixed.metrics[late]])
    slow_adaptive = np.mean([m["slowest_upload_s"] for m in adaptive.metrics[late]])
    assert slow_adaptive < slow_fixed


def test_link_estimate_recovers_latency_and_bandwidth():
    est = LinkEstimate()
    for nbytes in (1_000, 50_000, 2_000_000, 10_000, 500_000):
        est.observe(nbytes, 0.08 + nbytes / 1.25e6)
    latency, bandwidth = est.fit()
    assert latency == pytest.approx(0.08, rel=1e-3)
    assert bandwidth == pytest.approx(1.25e6, rel=1e-3)
    one = LinkEstimate()
    one.observe(1_000_000, 1.05)  # a single size: the default latency is assumed
    assert one.fit()[1] == pytest.approx(1e6, rel=1e-6)


def test_choose_rung_takes_the_gentlest_that_fits():
    rungs = ladder(min_ratio=0.01)
    assert [r.ratio for r in rungs][-1] == 0.01
    fast, slow = LinkEstimate(), LinkEstimate()
    fast.observe(4_000_000, 0.05 + 4_000_000 / 1e9)
    slow.observe(4_000_000, 0.05 + 4_000_000 / 1e5)
    n = 1_000_000
    assert choose_rung(fast, n, 1.0, rungs).chain.names == ("f32",)
    assert choose_rung(slow, n, 1.0, rungs).ratio == 0.03  # 30k values ≈ 0.7 s
    assert choose_rung(slow, n, 0.01, rungs) == rungs[-1]  # nothing fits: the strongest
    assert choose_rung(None, n, 1.0, rungs) is None


def test_bad_compression_settings_are_clear_errors():
    with pytest.raises(ConfigError, match=r"compression\.uplink"):
        parse_job({**BASE, "compression": {"uplink": {"chain": ["q8", "topk"]}}})
    with pytest.raises(ConfigError, match=r"compression\.uplink\.block"):
        parse_job({**BASE, "compression": {"uplink": {"block": 12}}})
    for bad in ("x", {"chain": ["nope"]}, {"chain": ["q8"], "ratio": "a"},
                {"chain": ["q8"], "block": 7}):
        with pytest.raises(CodecError):
            UplinkConfig.from_task(bad)


def test_bundled_example_meets_the_uplink_target_shape():
    from pathlib import Path

    import tsfl

    path = Path(tsfl.__file__).parent / "examples" / "digits-compressed.yaml"
    spec = parse_job(yaml.safe_load(path.read_text()))
    assert spec.compression.uplink.chain == ["topk", "q8", "zstd"]
    assert spec.compression.uplink.error_feedback


@pytest.mark.parametrize("extra", [
    {"robust": {"aggregator": "median", "num_malicious": 1}},
    {"privacy": {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 0.1,
                 "noise": "seeded"}},
    {"privacy": {"mode": "local", "clip_norm": 1.0, "noise_multiplier": 0.05}},
])
def test_compressed_updates_pass_every_stage(tmp_path, extra):
    spec = {**copy.deepcopy(BASE), "rounds": 3, **extra,
            "compression": {"uplink": {"chain": ["topk", "q4", "lz4"], "ratio": 0.2}}}
    result = asyncio.run(run_embedded(parse_job(spec), tmp_path / "x"))
    assert result.status == "COMPLETED"
    assert all(set(m["codecs"]) == {"topk+q4+lz4"} and m["clients"] >= 3
               for m in result.metrics)
