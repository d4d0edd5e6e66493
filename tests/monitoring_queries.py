"""The series the Prometheus rules and the Grafana dashboard query."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


#: series Prometheus or prometheus_client add on their own
STANDARD = {"up", "process_cpu_seconds_total", "process_resident_memory_bytes"}


_FUNCTIONS = {"sum", "by", "max", "min", "rate", "increase", "clamp_min", "histogram_quantile",
              "le", "without", "on", "and", "or", "unless"}


def queried_series(expr: str) -> set[str]:
    """Metric names an expression reads (identifiers that are not functions, labels or
    keywords; label matchers and strings removed first)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"by \([^)]*\)", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n not in _FUNCTIONS}


def monitoring_queries() -> list[str]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((ROOT / "deploy" / "grafana" / "truststram-fl.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return exprs
