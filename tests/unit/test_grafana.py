"""The Grafana dashboard reads only series the fleet exporter has: every panel's query
names at least one metric, and every metric it names is one FleetCollector exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import fakeredis
from prometheus_client import generate_latest

from tierfleet.config import FleetConfig
from tierfleet.heartbeats import write_heartbeat
from tierfleet.jobs import Attempt
from tierfleet.metrics import fleet_registry, record_attempt

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tierfleet.json"
# PromQL words that are not metric names.
PROMQL = {"sum", "by", "rate", "histogram_quantile", "le", "tier", "workflow", "outcome",
          "direction", "avg", "max", "min", "increase", "without", "on", "model", "host"}


def exported_names(config: FleetConfig, client: fakeredis.FakeRedis) -> set[str]:
    record_attempt(client, config, Attempt(
        job_id="j", attempt=1, workflow="w", kind="summary", tier="paid", model="m",
        tokens_in=1, tokens_out=1, cost_usd=0.01, latency_s=0.2, ts=1.0))
    write_heartbeat(client, config, "paid@box", ["paid"], [], 1)
    text = generate_latest(fleet_registry(client, config)).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def test_every_panel_queries_a_metric_the_exporter_has(core_config: FleetConfig,
                                                        fake_redis: fakeredis.FakeRedis) -> None:
    names = exported_names(core_config, fake_redis)
    dash = json.loads(DASHBOARD.read_text())
    assert dash["panels"]
    seen: set[str] = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", target["expr"])) - PROMQL
            metrics = {w for w in words if w.startswith("tierfleet_")}
            assert metrics, (panel["title"], target["expr"])
            assert metrics <= names, (panel["title"], metrics - names)
            seen |= metrics
    # The numbers operators asked for are on the board.
    assert {"tierfleet_jobs_total", "tierfleet_attempts_total", "tierfleet_workflow_cost_usd_total",
            "tierfleet_workers_busy", "tierfleet_worker_processes"} <= seen
