"""The shipped Grafana dashboard and the metric names its PromQL queries use."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"

# PromQL words that are not metric names: aggregations (which may be followed by by/without
# before their parenthesis), keywords and set operators. Functions are told by their "(".
KEYWORDS = {
    *("sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk"),
    *("quantile", "count_values", "limitk", "limit_ratio"),
    *("by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"),
    *("and", "or", "unless", "atan2", "inf", "nan"),
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label
    matchers ``{...}``, ranges ``[...]`` and label lists ``by (...)``, that are neither
    keywords nor called as functions."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name in KEYWORDS:
            continue
        names.add(name)
    return names


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` of every panel target and every template variable's query (the
    series inside ``label_values(...)``)."""
    for panel in panels(dashboard):
        for target in panel.get("targets", ()):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", ()):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
        if m:
            yield f"variable {variable['name']}", m.group(1)


def used_metric_names(dashboard: dict[str, Any]) -> dict[str, str]:
    """Every metric name the dashboard queries, with the first place it is used."""
    used: dict[str, str] = {}
    for where, expr in queries(dashboard):
        for name in metric_names(expr):
            used.setdefault(name, where)
    return used


def served_families(text: str) -> dict[str, str]:
    """``{family: type}`` from the ``# TYPE`` lines of a Prometheus text answer."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def is_served(name: str, families: dict[str, str]) -> bool:
    """A family, or a histogram's (summary's) ``_bucket``/``_sum``/``_count`` series."""
    if name in families:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in ("histogram", "summary"):
            return suffix != "_bucket" or families[base] == "histogram"
    return False
