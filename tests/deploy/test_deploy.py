"""The deployment files: the example config, Redis, systemd units, compose and the Dockerfile.

Nothing here needs Docker or systemd: the compose file is checked against a strict
schema of the compose-spec keys plus the fleet's own cross-references, the units
are parsed as INI files, and deploy/redis.conf runs in a real redis-server.
"""

from __future__ import annotations

import configparser
import copy
import os
import re
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import yaml

from tierfleet.broker import celery_settings
from tierfleet.config import FleetConfig, load_config
from tierfleet.errors import ConfigError
from tierfleet.flower import flower_command
from tierfleet.jobs import MODEL_KINDS, Job, Kind, Privacy, Risk
from tierfleet.lab.embedded import redis_server_binary
from tierfleet.lab.processes import free_port
from tierfleet.policy import build_policy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "fleet.example.toml"
COMPOSE = ROOT / "docker-compose.yml"
SUBCOMMANDS = {"worker", "api", "flower", "reaper", "sim", "submit", "status"}
TIERS = {"rules", "local-mac", "local-gpu", "local-cpu", "runpod", "paid", "paid-alt"}
HUB_SERVICES = {"redis", "api", "flower", "reaper"}


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> FleetConfig:
    # The environment beats the file: keep a developer's overrides out of the check.
    for var in [v for v in os.environ if v.startswith("TIERFLEET_")]:
        monkeypatch.delenv(var)
    return load_config(EXAMPLE)


# -- the example config ---------------------------------------------------------------


def test_example_config_loads_with_the_labs_tiers_and_hosts(example: FleetConfig) -> None:
    assert set(list(example.tiers)) == TIERS
    places = {name: t.place for name, t in example.tiers.items()}
    assert places == {
        "rules": "rules",
        "local-mac": "local",
        "local-gpu": "local",
        "local-cpu": "local",
        "runpod": "rented",
        "paid": "paid",
        "paid-alt": "paid",
    }
    # The seed's machines and models.
    assert example.hosts["mac-mini"].models == ["qwen3:4b"]
    assert set(example.hosts["gpu-pc"].models) == {
        "qwen3-coder:30b",
        "granite3.2-vision:2b",
        "deepseek-r1:8b",
    }
    gpu = example.tiers["local-gpu"]
    assert gpu.model_for("code") == "qwen3-coder:30b"
    assert gpu.model_for("vision") == "granite3.2-vision:2b"
    assert gpu.model_for("reasoning") == "deepseek-r1:8b"
    assert example.hosts["ubuntu-cpu"].models == ["minicpm-v"]
    assert all(example.hosts[h].kind == "ollama" for h in ("mac-mini", "gpu-pc", "ubuntu-cpu"))
    # Every model tier is reachable through at least one host.
    for name, tier in example.tiers.items():
        if tier.place != "rules":
            assert example.hosts_for(name), name


def test_example_rented_and_paid_hosts_carry_prices_and_key_names(example: FleetConfig) -> None:
    rp = example.hosts["runpod"]
    assert rp.kind == "runpod" and rp.api_key_env == "RUNPOD_API_KEY"
    assert rp.cost_per_second and rp.cost_per_second > 0
    # Large jobs go to Runpod: its window must hold them.
    assert example.policy.large_job_tier == "runpod"
    assert rp.context_window > example.policy.large_job_tokens
    # The seeds' quoted prices (USD per million tokens, input / output); a user's clone
    # has no ../shared, so they are written here.
    prices = {"claude-opus-4-7": {"input": 5.0, "output": 25.0},
              "claude-sonnet-4-6": {"input": 3.0, "output": 15.0},
              "gpt-5.5": {"input": 3.0, "output": 12.0}}
    paid_models = {m for n, t in example.tiers.items() if t.place == "paid" for m in t.models.values()}
    assert len(paid_models) == 3
    for model in paid_models:
        mc = example.models[model]
        # OpenRouter spells "claude-sonnet-4-6" as "anthropic/claude-sonnet-4.6".
        key = model if model in prices else model.split("/")[-1].replace(".", "-")
        quoted = prices[key]
        assert (mc.input_per_mtok, mc.output_per_mtok) == (quoted["input"], quoted["output"])
    for name in ("openai", "openrouter"):
        host = example.hosts[name]
        assert host.kind == "openai" and host.url.startswith("https://")
        assert host.api_key_env and host.api_key_env.isupper()
    assert example.baseline_model() == "gpt-5.5"


def test_example_vision_models_are_marked(example: FleetConfig) -> None:
    for name, tier in example.tiers.items():
        vision = tier.models.get("vision")
        if vision:
            assert example.models[vision].vision, f"{name}: {vision} cannot see images"
    assert not example.models["qwen3:4b"].vision


def test_example_policy_sends_every_model_kind_to_a_real_tier(example: FleetConfig) -> None:
    kinds = {str(k) for k in MODEL_KINDS}
    assert kinds <= set(example.policy.kind_tiers)
    assert set(example.policy.kind_tiers.values()) <= TIERS
    assert set(example.policy.spill_order) <= TIERS


def test_example_fallback_chains_are_privacy_safe(example: FleetConfig) -> None:
    local = {n for n, t in example.tiers.items() if t.place == "local"}
    assert local == {"local-mac", "local-gpu", "local-cpu"}
    for name, tier in example.tiers.items():
        assert name not in tier.fallback, f"{name} falls back to itself"
        assert "rules" not in tier.fallback
        assert len(tier.fallback) == len(set(tier.fallback))
    for name in local:
        chain = example.tiers[name].fallback
        # What a confidential job may walk: the chain filtered to local tiers.
        confidential = [t for t in chain if example.tiers[t].place == "local"]
        # Every other local machine stands in, so one machine up serves every
        # confidential job...
        assert set(confidential) == local - {name}, name
        # ...and local fallbacks come before anything billed.
        assert chain[: len(confidential)] == confidential, name
    # The seed's order when the GPU box is down: the small model, then the CPU box.
    assert example.tiers["local-gpu"].fallback[:2] == ["local-mac", "local-cpu"]
    # Rented and paid tiers fall back only to paid providers: a job sent there for
    # its size or risk would not fit, or not belong, on a local tier.
    for name in ("runpod", "paid", "paid-alt"):
        chain = example.tiers[name].fallback
        assert chain and all(example.tiers[t].place == "paid" for t in chain), name


@pytest.mark.parametrize("kind", ["code", "vision", "reasoning", "summary", "chat", "writing"])
@pytest.mark.parametrize("risk", ["low", "high"])
def test_example_routes_confidential_jobs_only_to_local_tiers(
    example: FleetConfig, kind: str, risk: str
) -> None:
    policy = build_policy(example)
    job = Job(
        kind=Kind(kind),
        prompt="summarise the attached incident notes",
        images=["iVBORw0KGgo="] if kind == "vision" else [],
        privacy=Privacy.CONFIDENTIAL,
        risk=Risk(risk),
    )
    route = policy.route(job)
    local = set(example.local_tiers())
    assert route.tier in local, route
    assert route.fallbacks, "a confidential job needs somewhere local to fail over to"
    assert set(route.fallbacks) <= local, route.fallbacks


def test_example_routes_land_on_hosts_that_serve_the_model(example: FleetConfig) -> None:
    # The learned policy may send an easy prompt one tier down, so the check is that
    # wherever a job lands, the config names a host there serving the chosen model.
    policy = build_policy(example)
    prompts = {
        Kind.SUMMARY: "Summarise this email in two lines.",
        Kind.CODE: "Refactor this Python class to use dataclasses and add unit tests.",
        Kind.REASONING: "Prove that the square root of 2 is irrational, step by step.",
        Kind.WRITING: "Write a launch post for the new release.",
        Kind.VISION: "What is on this screenshot?",
    }
    for kind, prompt in prompts.items():
        images = ["iVBORw0KGgo="] if kind == Kind.VISION else []
        route = policy.route(Job(kind=kind, prompt=prompt, images=images))
        assert route.model == example.tiers[route.tier].model_for(kind.value), kind
        assert route.host in example.hosts_for(route.tier), kind
        assert route.model in example.hosts[route.host].models, kind
        if kind == Kind.VISION:
            assert example.models[route.model].vision
    # Too long for any machine in the lab: the rented GPU, which holds it.
    large = policy.route(Job(kind=Kind.SUMMARY, prompt="word " * 60_000))
    assert large.tier == "runpod" and large.fallbacks[0] == "paid"
    assert large.tokens_in < example.hosts["runpod"].context_window


def test_example_reliability_and_limits(example: FleetConfig) -> None:
    rel = example.reliability
    assert rel.visibility_timeout_s == 3600 > rel.task_time_limit_s
    # Parked-job waits stay far below the visibility timeout (no long countdowns).
    assert max(rel.park_backoff_s) < rel.visibility_timeout_s / 4
    assert rel.dead_after_s > rel.heartbeat_s
    assert example.api.tokens_env == "TIERFLEET_API_TOKENS"
    assert example.result_url and example.result_url != example.redis_url
    assert example.cache.enabled


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_example_holds_no_secrets() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    for text in _strings(data):
        for pattern in (
            r"sk-[A-Za-z0-9]",
            r"rpa_[A-Za-z0-9]",
            r"Bearer\s+\S",
            r"://[^/@\s]*:[^@\s]+@",
        ):
            assert not re.search(pattern, text), (pattern, text)
    for name, host in data["hosts"].items():
        assert set(host) & {"api_key", "key", "token", "password"} == set(), name


def test_example_host_url_can_be_set_per_machine(
    example: FleetConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The config's comment promises this override; keep it true.
    monkeypatch.setenv("TIERFLEET_HOSTS__RUNPOD__URL", "https://api.runpod.ai/v2/abc123")
    cfg = load_config(EXAMPLE)
    assert cfg.hosts["runpod"].url == "https://api.runpod.ai/v2/abc123"
    assert cfg.hosts["runpod"].cost_per_second == example.hosts["runpod"].cost_per_second


# -- Redis --------------------------------------------------------------------------------


def _redis_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def test_redis_conf_is_a_durable_never_evicting_broker() -> None:
    d = _redis_directives()
    assert d["appendonly"] == ["yes"]
    assert d["appendfsync"] == ["everysec"]
    assert d["maxmemory-policy"] == ["noeviction"]
    assert d["save"] == ['""']
    assert d["protected-mode"] == ["yes"]
    assert "requirepass" not in d, "the password must not live in the shared file"
    assert d["bind"][0].startswith("127.0.0.1")


def _start_redis(folder: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            str(DEPLOY / "redis.conf"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                client.close()
                return proc
        except redis.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("redis-server did not start with deploy/redis.conf")
        time.sleep(0.05)


@pytest.fixture
def conf_redis(tmp_path: Path) -> Iterator[tuple[Path, int, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    procs = [_start_redis(tmp_path, port)]
    yield tmp_path, port, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_redis_conf_keeps_queued_jobs_across_a_crash(
    conf_redis: tuple[Path, int, list[subprocess.Popen[bytes]]],
) -> None:
    folder, port, procs = conf_redis
    client = redis.Redis(port=port, decode_responses=True)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    # A queue and an unacked entry the way Celery keeps them.
    client.lpush("local-gpu", *[f'{{"job": {i}}}' for i in range(50)])
    client.hset("unacked", "tag-1", '{"job": "running"}')
    # Under `appendfsync everysec` Redis may hold its AOF write back for up to 2 s while a
    # slow fsync runs (the window the chaos test's AOF cut covers); this test is about
    # what the file keeps, so it waits until the writes are in it.
    written_by = time.monotonic() + 10
    while time.monotonic() < written_by:
        info = client.info("persistence")
        if not info.get("aof_buffer_length") and not info.get("aof_pending_bio_fsync"):
            break
        time.sleep(0.05)
    client.close()
    procs[0].kill()  # SIGKILL: no shutdown save, only the append-only file remains
    procs[0].wait(5)
    procs.append(_start_redis(folder, port))
    client = redis.Redis(port=port, decode_responses=True)
    assert client.llen("local-gpu") == 50
    assert client.hget("unacked", "tag-1") == '{"job": "running"}'
    client.close()


def test_redis_conf_refuses_writes_instead_of_evicting_jobs(
    conf_redis: tuple[Path, int, list[subprocess.Popen[bytes]]],
) -> None:
    _, port, _ = conf_redis
    client = redis.Redis(port=port)
    client.lpush("paid", b"queued job")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 256 * 1024)
    blob = b"x" * (64 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
        for i in range(100):
            client.set(f"result:{i}", blob)
    assert client.lrange("paid", 0, -1) == [b"queued job"]
    client.close()


# -- systemd -----------------------------------------------------------------------------

UNITS = {
    "tierfleet-worker@.service": "worker",
    "tierfleet-api.service": "api",
    "tierfleet-flower.service": "flower",
    "tierfleet-reaper.service": "reaper",
    "tierfleet-sim.service": "sim",
}


def _unit(name: str) -> configparser.ConfigParser:
    # systemd allows repeated keys (Environment=): strict=False; %i is no interpolation.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def _environment(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def test_systemd_units_are_the_expected_set() -> None:
    assert {p.name for p in (DEPLOY / "systemd").iterdir()} == set(UNITS)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_parses_and_runs_a_real_subcommand(name: str) -> None:
    unit = _unit(name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    svc = unit["Service"]
    argv = svc["ExecStart"].split()
    assert argv[0] == "/opt/tierfleet/venv/bin/tierfleet"
    assert argv[1] == UNITS[name] and argv[1] in SUBCOMMANDS
    assert svc["User"] == "tierfleet" and svc["User"] != "root"
    assert svc["WorkingDirectory"] == "/var/lib/tierfleet"
    assert svc["EnvironmentFile"] == "/etc/tierfleet/secrets.env"
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["Restart"] in {"always", "on-failure"}
    assert _environment(name)["TIERFLEET_CONFIG"] == "/etc/tierfleet/fleet.toml"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_worker_template_stops_gracefully(example: FleetConfig) -> None:
    svc = _unit("tierfleet-worker@.service")["Service"]
    assert svc["ExecStart"].split()[1:] == ["worker", "--tier", "%i"]
    assert svc["Restart"] == "always"
    assert svc["KillSignal"] == "SIGTERM"
    # SIGTERM to the main process only: pool children reset SIGTERM to its default.
    assert svc["KillMode"] == "mixed"
    # Longer than Celery's own soft-shutdown wait, or systemd kills a finishing job.
    soft = celery_settings(example)["worker_soft_shutdown_timeout"]
    assert isinstance(soft, float)
    assert int(svc["TimeoutStopSec"]) == 90 > soft
    # Every tier name is a valid systemd instance name (no escaping needed with %i).
    for tier in list(example.tiers):
        assert re.fullmatch(r"[A-Za-z0-9:_.-]+", tier), tier


def test_systemd_flower_is_open_only_on_loopback(example: FleetConfig) -> None:
    argv = _unit("tierfleet-flower.service")["Service"]["ExecStart"].split()
    assert argv[1:] == ["flower"]  # tierfleet flower's defaults: 127.0.0.1:5555
    # What `tierfleet flower` makes of that: an open REST API, on loopback only.
    cmd = flower_command(EXAMPLE, environ={})
    assert cmd.url == "http://127.0.0.1:5555" and not cmd.authenticated
    assert cmd.env["FLOWER_UNAUTHENTICATED_API"] == "true"
    # Flower options set in the unit reach Flower; access ones would be dropped.
    env = _environment("tierfleet-flower.service")
    assert not {k for k in env if k.startswith("FLOWER_")} & {
        "FLOWER_UNAUTHENTICATED_API",
        "FLOWER_BASIC_AUTH",
        "FLOWER_ADDRESS",
        "FLOWER_PORT",
    }
    assert flower_command(EXAMPLE, environ=env).env["FLOWER_DB"] == "/var/lib/tierfleet/flower.db"


def test_systemd_api_listens_for_the_lan() -> None:
    argv = _unit("tierfleet-api.service")["Service"]["ExecStart"].split()
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


# -- docker compose ------------------------------------------------------------------------

# Service keys of the compose specification (compose-spec/schema/compose-spec.json).
# Only these (and x-*) are accepted; the ones this file uses get their full shape below.
SPEC_SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus",
    "cpuset", "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules",
    "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add",
    "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness",
    "memswap_limit", "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid",
    "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged", "profiles",
    "provider", "pull_policy", "read_only", "restart", "runtime", "scale", "secrets",
    "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
    "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts",
    "volumes", "volumes_from", "working_dir",
}  # fmt: skip
DURATION = r"^(\d+(\.\d+)?(h|m|s|ms|us|ns))+$"
NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
STRINGS = {"type": "array", "items": {"type": "string"}}

COMPOSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["services"],
    "properties": {
        "version": {"type": "string"},
        "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]*$"},
        "services": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": r"^[a-zA-Z0-9._-]+$"},
            "additionalProperties": {"$ref": "#/$defs/service"},
        },
        "volumes": {
            "type": "object",
            "propertyNames": {"pattern": NAME},
            "additionalProperties": {"type": ["object", "null"]},
        },
        "networks": {"type": "object"},
        "secrets": {"type": "object"},
        "configs": {"type": "object"},
        "include": {"type": "array"},
    },
    "patternProperties": {"^x-": {}},
    "additionalProperties": False,
    "$defs": {
        "service": {
            "type": "object",
            "propertyNames": {"anyOf": [{"enum": sorted(SPEC_SERVICE_KEYS)}, {"pattern": "^x-"}]},
            "required": ["command", "profiles", "restart", "healthcheck"],
            "properties": {
                "image": {"type": "string"},
                "build": {
                    "type": "object",
                    "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}},
                    "required": ["context"],
                    "additionalProperties": False,
                },
                "command": {**STRINGS, "minItems": 1},
                "profiles": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"type": "string", "pattern": r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"},
                },
                "env_file": STRINGS,
                "environment": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                },
                "volumes": STRINGS,
                "ports": STRINGS,
                "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                "init": {"type": "boolean"},
                "user": {"type": "string"},
                "stop_signal": {"type": "string", "pattern": r"^SIG[A-Z0-9]+$"},
                "stop_grace_period": {"type": "string", "pattern": DURATION},
                "healthcheck": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["test"],
                    "properties": {
                        "test": {
                            "type": "array",
                            "minItems": 2,
                            "prefixItems": [{"enum": ["CMD", "CMD-SHELL"]}],
                            "items": {"type": "string"},
                        },
                        "interval": {"type": "string", "pattern": DURATION},
                        "timeout": {"type": "string", "pattern": DURATION},
                        "start_period": {"type": "string", "pattern": DURATION},
                        "start_interval": {"type": "string", "pattern": DURATION},
                        "retries": {"type": "integer", "minimum": 1},
                        "disable": {"type": "boolean"},
                    },
                },
                "depends_on": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["condition"],
                        "properties": {
                            "condition": {
                                "enum": [
                                    "service_started",
                                    "service_healthy",
                                    "service_completed_successfully",
                                ]
                            },
                            "restart": {"type": "boolean"},
                            "required": {"type": "boolean"},
                        },
                    },
                },
            },
        }
    },
}

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<bad>.?))")
_PORT = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}):)?(?:(?P<host>\d+):)?(?P<container>\d+)(?:/(tcp|udp))?$"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR, $$."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("bad") is not None:
            raise ValueError(f"invalid interpolation in {value!r}")
        if m.group("bare"):
            return env.get(m.group("bare"), "")
        expr = m.group("braced")
        hit = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)(.*))?", expr)
        if not hit:
            raise ValueError(f"invalid interpolation ${{{expr}}}")
        name, op, default = hit.groups()
        got = env.get(name)
        if op == ":-" and not got:
            return default
        if op == "-" and got is None:
            return default
        return got or ""

    if isinstance(value, str):
        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose_problems(doc: dict[str, Any], tiers: set[str]) -> list[str]:
    """Every way the compose file breaks the spec or the fleet's deployment contract."""
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(COMPOSE_SCHEMA).iter_errors(doc)
    ]
    if problems:
        return problems
    try:
        resolved = interpolate(doc, env={})
    except ValueError as exc:
        return [str(exc)]
    services: dict[str, Any] = resolved["services"]
    declared = set(resolved.get("volumes") or {})
    workers: dict[str, str] = {}
    for name, svc in services.items():
        cmd = svc["command"]
        if name == "redis":
            script = " ".join(cmd)
            if "redis-server /usr/local/etc/redis/redis.conf" not in script:
                problems.append("redis: does not run with deploy/redis.conf")
        elif cmd[0] != "tierfleet" or len(cmd) < 2 or cmd[1] not in SUBCOMMANDS:
            problems.append(f"{name}: command {cmd} is not a tierfleet subcommand")
        elif cmd[1] == "worker":
            if cmd[2:3] != ["--tier"] or len(cmd) != 4:
                problems.append(f"{name}: worker command must be 'worker --tier TIER'")
            else:
                workers[name] = cmd[3]
                if cmd[3] not in svc["profiles"]:
                    problems.append(f"{name}: profile {cmd[3]} missing")
        for vol in svc.get("volumes", []):
            source, _, rest = vol.partition(":")
            target = rest.split(":")[0]
            if not target.startswith("/"):
                problems.append(f"{name}: volume target {target!r} is not absolute")
            if source.startswith((".", "/")):
                if source not in {"./fleet.toml", "./secrets.env"} and not (ROOT / source).exists():
                    problems.append(f"{name}: bind source {source} does not exist")
            elif source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared")
        for port in svc.get("ports", []):
            if not _PORT.match(port):
                problems.append(f"{name}: port {port!r} is malformed")
        for env_file in svc.get("env_file", []):
            if env_file != "./secrets.env":
                problems.append(f"{name}: unexpected env_file {env_file}")
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            elif not set(svc["profiles"]) <= set(services[dep]["profiles"]):
                # A profile that starts this service must start its dependency too.
                problems.append(f"{name}: {dep} is not started by all of {svc['profiles']}")
    by_tier = sorted(workers.values())
    if by_tier != sorted(tiers):
        problems.append(f"worker tiers {by_tier} != config tiers {sorted(tiers)}")
    hub = {n for n, s in services.items() if "hub" in s["profiles"]}
    if hub != HUB_SERVICES:
        problems.append(f"hub profile starts {sorted(hub)}")
    for name, svc in services.items():
        if "all" not in svc["profiles"]:
            problems.append(f"{name}: not in profile 'all'")
    return problems


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_file_validates(compose: dict[str, Any]) -> None:
    assert compose_problems(compose, TIERS) == []
    assert set(compose["services"]) == HUB_SERVICES | {f"worker-{t}" for t in TIERS}
    assert set(compose["volumes"]) == {"redis-data", "state"}


def test_compose_workers_match_the_example_config(compose: dict[str, Any], example: FleetConfig) -> None:
    assert compose_problems(compose, set(list(example.tiers))) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["services"]["api"].update(imagez="x"), "imagez"),
        (lambda d: d["services"]["api"].update(restart="sometimes"), "sometimes"),
        (lambda d: d["services"]["api"].update(command=["tierfleet", "serve"]), "subcommand"),
        (lambda d: d["services"]["worker-rules"].update(profiles=["all"]), "profile rules"),
        (lambda d: d["services"]["worker-paid"].pop("profiles"), "profiles"),
        (lambda d: d["services"]["reaper"]["volumes"].append("nope:/x"), "not declared"),
        (lambda d: d["services"]["api"].update(ports=["127.0.0.1:80:eighty"]), "malformed"),
        (lambda d: d["services"].pop("worker-runpod"), "config tiers"),
        (lambda d: d["services"]["api"]["healthcheck"].update(interval="often"), "often"),
        (lambda d: d["services"]["worker-rules"].update(depends_on={"redis": {}}), "condition"),
        (
            lambda d: d["services"]["worker-rules"].update(
                depends_on={"redis": {"condition": "service_healthy"}}
            ),
            "not started by all",
        ),
        (lambda d: d["services"]["api"].update(command=["tierfleet", "api", "${oops"]), "interp"),
        (lambda d: d.update(servics={}), "servics"),
    ],
)
def test_compose_validator_catches_breakage(compose: dict[str, Any], mutate: Any, expected: str) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = compose_problems(broken, TIERS)
    assert any(expected in p for p in problems), problems


def test_compose_redis_is_durable_and_password_protected(compose: dict[str, Any]) -> None:
    redis_svc = compose["services"]["redis"]
    assert "./deploy/redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis_svc["volumes"]
    assert "redis-data:/data" in redis_svc["volumes"]
    script = interpolate(" ".join(redis_svc["command"]), env={})
    # The password is read by the container's shell at start, never written here.
    assert '"$REDIS_PASSWORD"' in script and "requirepass %s" in script
    assert 'test -n "$REDIS_PASSWORD"' in script
    assert redis_svc["user"] == "redis"


def test_compose_redis_start_script_enforces_a_password(compose: dict[str, Any], tmp_path: Path) -> None:
    # The container's start script, run by sh here with local paths and port.
    port = free_port()
    script = (
        interpolate(compose["services"]["redis"]["command"][2], env={})
        .replace("exec redis-server", f"exec {redis_server_binary()}")
        .replace("/usr/local/etc/redis/redis.conf", f"{DEPLOY / 'redis.conf'} --port {port}")
        .replace("/tmp/redis-auth.conf", str(tmp_path / "auth.conf"))
        .replace("--bind 0.0.0.0", f"--bind 127.0.0.1 --dir {tmp_path}")
    )
    for bad in ("", "has spaces", 'quote"d'):
        run = subprocess.run(
            ["sh", "-c", script],
            env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": bad},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert run.returncode == 1 and "REDIS_PASSWORD" in run.stderr, bad
    password = "3f9a-b_c.d~e"
    proc = subprocess.Popen(
        ["sh", "-c", script],
        env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # plain TCP: redis-py's own retries would add seconds of backoff
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        client = redis.Redis.from_url(f"redis://:{password}@127.0.0.1:{port}/0")
        assert client.ping()
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(64).startswith(b"-NOAUTH")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert (tmp_path / "auth.conf").stat().st_mode & 0o777 == 0o600
        client.close()
    finally:
        proc.kill()
        proc.wait(5)


def test_compose_publishes_on_loopback_by_default(compose: dict[str, Any]) -> None:
    resolved = interpolate(compose, env={})
    for name in ("redis", "api", "flower"):
        for port in resolved["services"][name]["ports"]:
            match = _PORT.match(port)
            assert match and match["ip"] == "127.0.0.1", (name, port)
    opened = interpolate(compose, env={"FLOWER_PUBLISH": "192.168.1.100"})
    assert opened["services"]["flower"]["ports"] == ["192.168.1.100:5555:5555"]


def _template() -> dict[str, str]:
    pairs = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (DEPLOY / "secrets.env.example").read_text(), re.M)
    return dict(pairs)


def test_compose_flower_needs_auth_beyond_loopback(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    args = flower["command"]
    assert args[:2] == ["tierfleet", "flower"]
    address = args[args.index("--address") + 1]
    assert address == "0.0.0.0"
    assert "FLOWER_UNAUTHENTICATED_API" not in flower.get("environment", {})
    # `tierfleet flower` on that address, with the secrets template's basic auth
    # (the envvar its --basic-auth option reads): authenticated, never open.
    basic = _template()["TIERFLEET_FLOWER_BASIC_AUTH"]
    cmd = flower_command(EXAMPLE, address=address, basic_auth=basic, environ={})
    assert cmd.authenticated and "FLOWER_UNAUTHENTICATED_API" not in cmd.env
    with pytest.raises(ConfigError, match="basic-auth"):
        flower_command(EXAMPLE, address=address, environ={})


def test_compose_workers_stop_gracefully(compose: dict[str, Any], example: FleetConfig) -> None:
    soft = celery_settings(example)["worker_soft_shutdown_timeout"]
    assert isinstance(soft, float)
    for name, svc in compose["services"].items():
        if name.startswith("worker-") or name == "reaper":
            assert svc["init"] is True and svc["stop_signal"] == "SIGTERM", name
            grace = re.fullmatch(r"(\d+)s", svc["stop_grace_period"])
            assert grace and int(grace[1]) > soft, name
            assert svc["restart"] == "unless-stopped"
            assert "./fleet.toml:/etc/tierfleet/fleet.toml:ro" in svc["volumes"]
            assert svc["env_file"] == ["./secrets.env"]
            assert "depends_on" not in svc or name == "reaper"


def test_compose_api_listens_on_all_interfaces(compose: dict[str, Any]) -> None:
    assert compose["services"]["api"]["command"] == ["tierfleet", "api", "--host", "0.0.0.0"]


def test_secrets_template_names_every_key_the_config_reads(example: FleetConfig) -> None:
    names = set(_template())
    wanted = {h.api_key_env for h in example.hosts.values() if h.api_key_env}
    wanted |= {example.api.tokens_env, "TIERFLEET_REDIS_URL", "TIERFLEET_RESULT_URL"}
    assert wanted <= names


# -- every command line against the real CLI ------------------------------------------


def _command_lines(compose: dict[str, Any], tier: str) -> list[tuple[str, list[str]]]:
    lines = [
        (f"compose:{name}", svc["command"][1:])
        for name, svc in compose["services"].items()
        if svc["command"][0] == "tierfleet"
    ]
    for unit in UNITS:
        argv = _unit(unit)["Service"]["ExecStart"].replace("%i", tier).split()
        lines.append((f"systemd:{unit}", argv[1:]))
    return lines


def test_every_command_line_parses_with_the_real_cli(compose: dict[str, Any], example: FleetConfig) -> None:
    import typer

    from tierfleet.cli import app

    group: Any = typer.main.get_command(app)
    seen = set()
    for tier in list(example.tiers):
        for where, (sub, *args) in _command_lines(compose, tier):
            assert sub in SUBCOMMANDS, where
            assert sub in group.commands, f"{where}: no `tierfleet {sub}`"
            # Click parses the arguments exactly as the CLI would, without running it:
            # an unknown option or a missing required one raises here.
            ctx = group.commands[sub].make_context(sub, list(args))
            if sub == "worker":
                assert ctx.params["tier"] == tier or where.startswith("compose"), where
            seen.add(sub)
    assert seen == {"worker", "api", "flower", "reaper", "sim"}


# -- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_builds_the_project_as_an_unprivileged_user() -> None:
    lines = [
        ln.strip()
        for ln in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    # Every role of the image: workers need the core, the API and Flower their extras.
    assert "RUN pip install '.[api,flower]'" in lines
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                # A wildcard may match nothing (README*), as long as the COPY has other sources.
                assert "*" in src or list(ROOT.glob(src)), f"COPY source {src} missing"
    # The compose healthchecks call the probe where the image puts it.
    assert "COPY deploy/healthcheck.py /opt/tierfleet/healthcheck.py" in lines
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"secrets.env", ".venv", ".git", "fleet.toml"} <= set(ignored)


def test_runpod_dockerfile_runs_the_handler() -> None:
    text = (DEPLOY / "runpod.Dockerfile").read_text()
    assert "COPY deploy/runpod_handler.py deploy/runpod_start.sh /app/" in text
    assert "RUNPOD_DEBUG_LEVEL=INFO" in text  # DEBUG would log every prompt
    start = (DEPLOY / "runpod_start.sh").read_text()
    assert "/app/runpod_handler.py" in start and "--host 127.0.0.1" in start
    assert subprocess.run(["bash", "-n", str(DEPLOY / "runpod_start.sh")]).returncode == 0
