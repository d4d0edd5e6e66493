"""Reading a job spec: YAML within bounds, validation into one readable line per problem,
bundled examples by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tsfl.config.base import MAX_SPEC_FILE_BYTES
from tsfl.config.job import JobSpec
from tsfl.errors import TsflError
from tsfl.spec_yaml import SpecYamlError, load_spec_text


class ConfigError(TsflError):
    """A job spec is invalid; ``problems`` holds one readable line per issue."""

    def __init__(self, problems: list[str], source: str = "job spec"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def parse_job(data: Any, source: str = "job spec",
              overrides: dict[str, Any] | None = None) -> JobSpec:
    """Validate a mapping (already parsed YAML) into a :class:`JobSpec`."""
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping, got {type(data).__name__}"], source)
    if overrides:
        data = {**data, **overrides}
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc), source) from None


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobSpec:
    """Read and validate a YAML job spec file (or a bundled example, by name)."""
    try:
        path = find_job_file(path)
    except FileNotFoundError as exc:
        raise ConfigError([str(exc)], str(path)) from None
    try:
        if path.stat().st_size > MAX_SPEC_FILE_BYTES:
            raise ConfigError([f"the file is larger than {MAX_SPEC_FILE_BYTES} bytes: not a "
                               "job spec"], str(path))
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(["the file is not UTF-8 text"], str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read file: {exc.strerror or exc}"], str(path)) from None
    return parse_job(parse_spec_text(text, str(path)), str(path), overrides)


def parse_spec_text(text: str | bytes, source: str | None = None) -> Any:
    """The YAML of a spec, read within :mod:`tsfl.spec_yaml`'s bounds (size, aliases,
    depth); :class:`ConfigError` otherwise."""
    try:
        return load_spec_text(text)
    except SpecYamlError as exc:
        raise ConfigError([str(exc)], source or "job spec") from None


def bundled_example(name: str = "digits-fedavg") -> Path:
    return Path(__file__).parents[1] / "examples" / f"{name}.yaml"


def bundled_examples() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parents[1] / "examples").glob("*.yaml"))


def find_job_file(name: str | Path) -> Path:
    """A job spec by path, or a bundled example by bare name (``digits-dp``, from any
    directory); FileNotFoundError naming the examples for an unknown bare name."""
    path = Path(name)
    text = str(name)
    if path.is_file() or "/" in text or "\\" in text or path.suffix in (".yaml", ".yml"):
        return path  # a path: reading it says what is wrong with it
    example = bundled_example(text)
    if example.is_file():
        return example
    raise FileNotFoundError(f"no job spec {text!r} (a file, or one of the bundled examples: "
                            f"{', '.join(bundled_examples())})")
