"""Every kind of job-spec error is reported as one readable line naming the field."""

from pathlib import Path

import pytest
import yaml

from tsfl.config import ConfigError, bundled_example, load_job, parse_job

BASE = {"name": "t"}


def problems(data):
    with pytest.raises(ConfigError) as info:
        parse_job(data)
    return info.value.problems


def test_bundled_example_is_valid():
    spec = load_job(bundled_example())
    assert spec.clients.count == 100 and spec.clients.per_round == 10
    assert spec.data.partition.kind == "dirichlet" and spec.data.partition.alpha == 0.5
    assert spec.model.hidden == [64, 64]


def test_defaults_fill_in():
    spec = parse_job(BASE)
    assert spec.strategy.name == "fedavg" and spec.data.dataset == "digits"


def test_unknown_key_names_the_field():
    assert problems({**BASE, "training": {"lr": 0.1, "learning_rate": 1}}) == [
        "training.learning_rate: unknown key"]
    assert problems({**BASE, "roundz": 3}) == ["roundz: unknown key"]


def test_wrong_type():
    (line,) = problems({**BASE, "rounds": "many"})
    assert line.startswith("rounds: ") and "integer" in line


def test_out_of_range():
    (line,) = problems({**BASE, "training": {"lr": -1}})
    assert line.startswith("training.lr: ") and "greater than 0" in line
    (line,) = problems({**BASE, "data": {"partition": {"alpha": 0}}})
    assert line.startswith("data.partition.alpha: ")


def test_invalid_choice():
    (line,) = problems({**BASE, "strategy": {"name": "fedsgd"}})
    assert line.startswith("strategy.name: ")


def test_missing_required_name():
    assert problems({"rounds": 3}) == ["name: required field is missing"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"clients": {"count": 5, "per_round": 10}}, "clients: per_round (10) exceeds count (5)"),
        ({"strategy": {"name": "fedavg", "mu": 0.1}}, "do not apply to strategy 'fedavg'"),
        ({"strategy": {"name": "fedadam", "momentum": 0.9}}, "momentum"),
        ({"model": {"kind": "cnn"}, "data": {"dataset": "breast_cancer"}}, "cnn needs image"),
        ({"model": {"kind": "custom"}}, "model.factory"),
        ({"data": {"dataset": "csv"}}, "needs data.path"),
        ({"data": {"dataset": "digits", "path": "x.npz"}}, "only for npz/csv"),
        ({"round": {"min_updates": 11}}, "exceeds clients.per_round"),
    ],
)
def test_options_that_cannot_be_combined(data, needle):
    lines = problems({**BASE, **data})
    assert len(lines) == 1 and needle in lines[0], lines


def test_several_problems_one_line_each():
    lines = problems({"name": "bad name!", "rounds": 0, "training": {"epochs": "x", "foo": 1}})
    assert len(lines) == 4
    fields = sorted(line.split(":")[0] for line in lines)
    assert fields == ["name", "rounds", "training.epochs", "training.foo"]


def test_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_job(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_job(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_job(top)


def test_sha256_changes_with_content():
    a, b = parse_job(BASE), parse_job({**BASE, "seed": 1})
    assert a.sha256() != b.sha256() and a.sha256() == parse_job(BASE).sha256()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_example_is_a_valid_job(path):
    spec = load_job(path)
    assert spec.name == path.stem
