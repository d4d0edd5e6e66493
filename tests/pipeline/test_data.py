import numpy as np
import pytest

from tsfl.config import DataSpec, SyntheticSpec
from tsfl.sim import partition as parts
from tsfl.sim.datasets import DatasetError, generate_synthetic, load_dataset


def test_digits_split_is_stratified_and_reproducible():
    spec = DataSpec(dataset="digits")
    a, b = load_dataset(spec, 10), load_dataset(spec, 10)
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    np.testing.assert_array_equal(a.y_test, b.y_test)
    counts = np.bincount(a.y_test)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified 20%
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0


def test_breast_cancer_is_standardised():
    d = load_dataset(DataSpec(dataset="breast_cancer"), 5)
    assert d.num_classes == 2 and d.input_shape == (30,)
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)


def test_npz_and_csv_user_data(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 4)), rng.integers(0, 3, 100)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(DataSpec(dataset="npz", path=str(tmp_path / "d.npz")), 5)
    assert d.num_classes == 3 and d.input_dim == 4 and len(d.y_train) == 80
    lines = ["a,b,label"] + [f"{r[0]},{r[1]},{'yes' if t else 'no'}" for r, t in
                             zip(x, y % 2, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    d = load_dataset(DataSpec(dataset="csv", path=str(tmp_path / "d.csv"),
                              label_column="label"), 5)
    assert d.num_classes == 2 and d.input_dim == 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [("a,label\n1,x\n", "at least two data rows"),
     ("a,label\n1,x\nfoo,y\n2,x\n", "non-numeric"),
     ("a,b\n1,2\n3,4\n5,6\n", "label column 'label'")],
)
def test_bad_csv_files(tmp_path, content, needle):
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DatasetError, match=needle):
        load_dataset(DataSpec(dataset="csv", path=str(tmp_path / "d.csv"),
                              label_column="label"), 2)


def test_bad_npz(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.zeros((5, 2)))
    with pytest.raises(DatasetError, match="needs arrays"):
        load_dataset(DataSpec(dataset="npz", path=str(tmp_path / "d.npz")), 2)
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset(DataSpec(dataset="npz", path=str(tmp_path / "none.npz")), 2)


def test_synthetic_has_a_natural_partition_for_many_clients():
    d = generate_synthetic(SyntheticSpec(alpha=1, beta=1), 5000, 0.2, 0)
    assert len(d.natural_partition) == 5000
    sizes = np.array([len(p) for p in d.natural_partition])
    assert sizes.sum() == len(d.y_train) and sizes.min() >= 40
    assert d.x_train.shape[1] == 60 and set(np.unique(d.y_train)) <= set(range(10))
    # heterogeneity: clients' label distributions differ a lot for alpha=beta=1
    first = np.bincount(d.y_train[d.natural_partition[0]], minlength=10)
    second = np.bincount(d.y_train[d.natural_partition[1]], minlength=10)
    assert not np.array_equal(first, second)


def test_partitions_cover_every_example_once():
    labels = np.repeat(np.arange(10), 50)
    rng = np.random.default_rng(0)
    for split in (parts.iid(labels, 20, rng), parts.dirichlet(labels, 20, 0.5, rng),
                  parts.shards(labels, 20, 2, rng)):
        allidx = np.concatenate(split)
        assert len(split) == 20 and np.array_equal(np.sort(allidx), np.arange(500))


def test_dirichlet_small_alpha_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(1)
    skewed = parts.dirichlet(labels, 20, 0.1, rng)
    flat = parts.dirichlet(labels, 20, 100.0, rng)

    def mean_classes(split):
        return np.mean([len(np.unique(labels[p])) for p in split])

    assert mean_classes(skewed) < mean_classes(flat)
    assert min(len(p) for p in skewed) >= 2


def test_shards_give_few_classes_per_client():
    labels = np.repeat(np.arange(10), 100)
    split = parts.shards(labels, 50, 2, np.random.default_rng(0))
    assert max(len(np.unique(labels[p])) for p in split) <= 2


def test_impossible_partitions_are_refused():
    with pytest.raises(parts.PartitionError):
        parts.iid(np.zeros(5), 10, np.random.default_rng(0))
    with pytest.raises(parts.PartitionError, match="min_examples"):
        parts.dirichlet(np.arange(100) % 2, 40, 0.01, np.random.default_rng(0),
                        min_examples=2, max_tries=3)
