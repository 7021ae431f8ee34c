"""The Grafana dashboard reads only series the fleet exporter has: every panel's query
names at least one metric, every metric it names is one FleetCollector serves in a real
scrape (route gauges included), and every label it groups or filters by is one those
series carry, with a value they carry."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tierfleet.config import FleetConfig
from tierfleet.heartbeats import write_heartbeat
from tierfleet.jobs import Attempt
from tierfleet.labels import Label, LabelStore
from tierfleet.ledger import Ledger
from tierfleet.metrics import add_attempt, fleet_registry

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tierfleet.json"
# PromQL keywords and functions the dashboard may use. Label names are not listed here:
# they must come from the scrape, so a misspelt `by (teir)` fails like a misspelt metric.
PROMQL = {"sum", "by", "rate", "histogram_quantile", "avg", "max", "min", "count", "increase",
          "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
          "bool", "topk", "bottomk", "clamp_min", "clamp_max", "offset"}
GRID_W = 24  # Grafana's dashboard width in grid units
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_RANGE = re.compile(r"\[[^\]]*\]")  # [5m]: "m" is a unit, not a word
_WORD = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


@dataclass
class Scrape:
    """What one scrape of the exporter served: sample names and each sample's labels."""

    series: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return set(self.series)

    @property
    def label_names(self) -> set[str]:
        return {k for rows in self.series.values() for labels in rows for k in labels}


def scrape(text: str) -> Scrape:
    out = Scrape()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.series.setdefault(s.name, []).append(dict(s.labels))
    return out


def problems(expr: str, served: Scrape) -> list[str]:
    """Why ``expr`` would draw nothing against ``served`` (empty when it is fine)."""
    found: list[str] = []
    # An equality matcher (`by="model"`) must select a series the exporter has: a
    # misspelt value is an empty panel as surely as a misspelt name.
    for name, body in _SELECTOR.findall(expr):
        for key, value in _MATCHER.findall(body):
            if not any(row.get(key) == value for row in served.series.get(name, [])):
                found.append(f"no {name}{{{key}={value!r}}} in the scrape")
    words = set(_WORD.findall(_RANGE.sub("", _STRING.sub("", expr))))
    metrics = {w for w in words if w.startswith("tierfleet_")}
    if not metrics:
        found.append("names no tierfleet_ metric")
    found += [f"metric {w} is not served" for w in sorted(metrics - served.names)]
    found += [f"unknown word {w}" for w in sorted(words - metrics - PROMQL - served.label_names)]
    return found


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside a collapsed row (Grafana nests them there)."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def seed(config: FleetConfig, client: fakeredis.FakeRedis) -> None:
    """Traffic that gives every series a value: ledger records (with the counters they
    feed), small-routed labels for the quality gauges, a window before for the route
    alerts, and a heartbeat for the worker gauges."""
    now = time.time()
    day = config.ledger.route_window_s
    ledger = Ledger(client, config, write_jsonl=False)

    def job(i: str, ts: float, **kw: Any) -> None:
        base: dict[str, Any] = {"job_id": i, "attempt": 1, "workflow": "inbox", "kind": "summary",
                                "tier": "paid", "model": "gpt-5.5", "tokens_in": 100,
                                "tokens_out": 10, "latency_s": 0.5, "ts": ts,
                                "policy_version": "v0001"}
        # The counters move in the ledger's transaction, as the runner records them.
        ledger.record(Attempt(**{**base, **kw}),
                      also=lambda pipe, a: add_attempt(pipe, config, a))

    for i in range(4):  # the window before at $0.01 a request, this one at $0.0125
        job(f"old{i}", now - 1.5 * day + i, cost_usd=0.01)
        job(f"new{i}", now - 3600 + i, cost_usd=0.0125)
    job("fell", now - 3000, tier="local-mac", model="qwen3:4b", outcome="fallback")
    job("fell", now - 2999, attempt=2, tier="local-mac", model="qwen3:4b", fallbacks=1)
    job("up", now - 2900, tier="local-mac", model="qwen3:4b", outcome="escalated")
    job("up", now - 2899, attempt=2, tier="local-mac", model="qwen3:4b")
    store = LabelStore(client, config)
    for i in range(40):
        for tag, ts in (("o", now - 1.5 * day), ("n", now - 3600)):
            store.add(Label(id=f"feedback:{tag}{i}", source="feedback", job_id=f"{tag}{i}",
                            ts=ts + i, kind="summary", tier="local-mac", model="qwen3:4b",
                            routed_small=True, small_score=1.0, judge="producer",
                            judge_version="1", policy_version="v0001"))
    write_heartbeat(client, config, "paid@box", ["paid"], [], 1)


@pytest.fixture
def served(core_config: FleetConfig, fake_redis: fakeredis.FakeRedis) -> Scrape:
    seed(core_config, fake_redis)
    return scrape(generate_latest(fleet_registry(fake_redis, core_config)).decode())


def test_the_scrape_has_the_route_series(served: Scrape) -> None:
    # Without values a gauge is only a HELP line: the dashboard check below would then
    # reject the route panels for the seed's fault, not the dashboard's.
    for name in ("requests", "quality", "small_quality", "fallback_rate", "escalation_rate",
                 "cost_per_request_usd", "alert"):
        rows = served.series.get(f"tierfleet_route_{name}", [])
        assert {r["by"] for r in rows} == {"model", "policy_version"}, name
    assert {"by": "model", "route": "gpt-5.5", "alert": "cost_per_request"} in (
        served.series["tierfleet_route_alert"])


def test_every_panel_queries_a_metric_the_exporter_has(served: Scrape) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"]
    seen: set[str] = set()
    for panel in panels(dash):
        if panel["type"] == "row":
            continue  # a heading, no query
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert problems(target["expr"], served) == [], (panel["title"], target["expr"])
            seen |= set(_WORD.findall(target["expr"])) & served.names
    # The numbers operators asked for are on the board.
    assert {"tierfleet_jobs_total", "tierfleet_attempts_total", "tierfleet_workflow_cost_usd_total",
            "tierfleet_workers_busy", "tierfleet_worker_processes", "tierfleet_route_quality",
            "tierfleet_route_small_quality", "tierfleet_route_cost_per_request_usd",
            "tierfleet_route_fallback_rate", "tierfleet_route_escalation_rate",
            "tierfleet_route_alert"} <= seen


@pytest.mark.parametrize("expr", [
    'tierfleet_route_qualty{by="model"}',  # a misspelt metric
    'tierfleet_route_quality{by="modle"}',  # a label value no series has
    'tierfleet_route_quality{by="model"} + tierfeet_route_small_quality',  # one good name of two
    "sum by (rout) (tierfleet_route_requests)",  # a label the series do not carry
    "sum(rate(jobs_total[5m]))",  # no fleet metric at all
])
def test_the_check_rejects_a_typo(expr: str, served: Scrape) -> None:
    assert problems(expr, served)


def test_panel_ids_are_unique_and_the_grid_does_not_overlap() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels(dash):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= GRID_W, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[x, y] = p["title"]
