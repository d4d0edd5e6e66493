"""The repository keeps its promises: README commands, CI script, layout."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands():
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", readme)


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2
    run_cmd, test_cmd = commands
    assert "tsfl run" in run_cmd and ".venv" in run_cmd
    assert "pytest" in test_cmd and ".venv" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_top_level_layout():
    for name in ("services", "libs", "proto", "deploy", "tests", "benchmarks",
                 "pyproject.toml", "README.md", "constraints.txt"):
        assert (ROOT / name).exists(), name
    assert (ROOT / "examples" / "digits-fedavg.yaml").is_file()


def test_torch_is_pinned_in_constraints_not_required_exactly():
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert "torch==2.13.0" in constraints
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "torch==" not in pyproject


def test_every_topic_is_documented_with_its_partitions():
    """docs/topics.md is the contract for TrustStram consumers: each topic the pipeline
    creates has its row, with the partition count it is created with."""
    from tsfl.bus.topics import TOPICS

    text = (ROOT / "docs" / "topics.md").read_text()
    rows = dict(re.findall(r"^\| `(tsfl\.[\w.]+)` \| (\d+) \|", text, re.MULTILINE))
    assert {name: int(n) for name, n in rows.items()} == TOPICS


def test_tests_live_in_folders_named_after_what_they_test():
    """tests/ mirrors libs/tsfl: test modules sit in a folder per package (plus ops/ and
    architecture/); only shared helpers and conftest.py stay at the top."""
    tests = ROOT / "tests"
    assert not sorted(p.name for p in tests.glob("test_*.py"))
    packages = {p.name for p in (ROOT / "libs" / "tsfl").iterdir() if p.is_dir()}
    for folder in (p for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"):
        assert folder.name in packages | {"ops", "architecture"}, folder.name
