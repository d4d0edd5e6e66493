import numpy as np
import pytest
import torch
from torch import nn

from tsfl.core.layout import LayoutError, ParamLayout
from tsfl.training.flat import FlatModule


def test_numpy_round_trip_preserves_names_shapes_dtypes_and_values():
    rng = np.random.default_rng(0)
    named = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
        "h": rng.normal(size=(2, 1, 2)).astype(np.float64),
    }
    layout = ParamLayout.from_arrays(named)
    vec = layout.flatten(named)
    assert vec.dtype == np.float32 and vec.shape == (12 + 4 + 1 + 4,)
    assert [s.offset for s in layout.specs] == [0, 12, 16, 17]
    back = layout.unflatten(vec)
    assert list(back) == ["w", "b", "steps", "h"]
    for k, v in named.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_allclose(back[k], v, rtol=1e-6)
    assert back["steps"] == 7


def test_unflatten_without_copy_gives_views():
    layout = ParamLayout([("a", (2, 2), "float32"), ("b", (3,), "float32")])
    vec = np.arange(7, dtype=np.float32)
    views = layout.unflatten(vec, copy=False)
    vec[0] = 42
    assert views["a"][0, 0] == 42


def test_list_round_trip_like_flower_ndarrays():
    arrays = [np.ones((2, 3), np.float32), np.zeros(5, np.float32)]
    layout = ParamLayout.from_list(arrays)
    out = layout.unflatten_list(layout.flatten_list(arrays))
    assert [a.shape for a in out] == [(2, 3), (5,)]


def test_torch_state_dict_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    sd = model.state_dict()
    layout = ParamLayout.from_state_dict(sd)
    assert layout["1.num_batches_tracked"].dtype == "int64"
    vec = layout.flatten(sd)
    restored = layout.to_state_dict(vec)
    for k, v in sd.items():
        assert restored[k].dtype == v.dtype
        assert torch.equal(restored[k], v)
    model.load_state_dict(restored)


def test_layout_json_and_digest_are_stable():
    layout = ParamLayout([("a", (2,), "float32"), ("b", (1, 3), "float32")])
    again = ParamLayout.from_json(layout.to_json())
    assert again == layout and again.digest == layout.digest
    other = ParamLayout([("a", (2,), "float32"), ("b", (3, 1), "float32")])
    assert other.digest != layout.digest


@pytest.mark.parametrize(
    ("named", "message"),
    [
        ({"a": np.zeros(2, np.float32)}, "missing"),
        ({"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32), "c": np.zeros(1)},
         "extra"),
        ({"a": np.zeros(3, np.float32), "b": np.zeros(3, np.float32)}, "shape"),
    ],
)
def test_flatten_rejects_mismatches(named, message):
    layout = ParamLayout([("a", (2,), "float32"), ("b", (3,), "float32")])
    with pytest.raises(LayoutError, match=message):
        layout.flatten(named)


def test_bad_layouts_and_vectors_are_refused():
    with pytest.raises(LayoutError, match="duplicate"):
        ParamLayout([("a", (1,), "float32"), ("a", (1,), "float32")])
    with pytest.raises(LayoutError, match="negative"):
        ParamLayout([("a", (-1,), "float32")])
    layout = ParamLayout([("a", (2,), "float32")])
    with pytest.raises(LayoutError):
        layout.unflatten(np.zeros(3, np.float32))
    with pytest.raises(LayoutError):
        layout.unflatten(np.zeros(2, np.float64))


def test_flat_module_shares_memory_with_parameters_and_buffers():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    flat = FlatModule(model)
    # values preserved by the rebinding
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k])
    assert "1.num_batches_tracked" not in flat.layout.names  # integer buffers stay local
    new = np.arange(flat.layout.total_size, dtype=np.float32)
    flat.load(new)
    np.testing.assert_array_equal(model[0].weight.detach().numpy().ravel(), new[:12])
    model.train()
    model(torch.randn(5, 3))  # BatchNorm updates its running stats in place
    running_mean = flat.layout["1.running_mean"]
    np.testing.assert_array_equal(flat.vector[running_mean.offset:running_mean.stop],
                                  model[1].running_mean.numpy())
