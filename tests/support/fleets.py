"""Fleet configs for tests, built in one place instead of TOML copied into each file.

    rules_only()            rules, a small local model, a paid one; hosts nobody listens on
    rules_only(local="qwen3:4b", paid="gpt-test", paid_price=(1.0, 4.0), kinds={...})
    every_kind_on("paid")   a [policy.kind_tiers] table sending every model kind there
    tiers_only()            the five default tiers and no host: only rules jobs finish
    home_lab_data()         the home-lab example fleet, simulated (tierfleet.lab.fleets)
    home_lab()              the same as TOML tables

The TOML ones give the body of a config (tiers, hosts, models, policy); the
harness's ``write_config`` adds Redis, the ledger and fast reliability knobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tierfleet.config import FleetConfig
from tierfleet.jobs import MODEL_KINDS
from tierfleet.lab.fleets import home_lab as lab_home_lab

RUNPOD_KEY_ENV = "TIERFLEET_TEST_RUNPOD_KEY"
OPENAI_KEY_ENV = "TIERFLEET_TEST_OPENAI_KEY"
HOME_LAB_HOSTS = {"mac": "sim-ollama", "gpu": "sim-gpu", "runpod": "sim-runpod", "paid": "sim-openai"}


def _q(name: str) -> str:
    # Model names carry ':' and '.', which a bare TOML key may not.
    return f'"{name}"'


def every_kind_on(tier: str) -> str:
    """A ``[policy.kind_tiers]`` table sending every model kind to ``tier``."""
    lines = [f'{k.value} = "{tier}"' for k in sorted(MODEL_KINDS, key=lambda k: k.value)]
    return "\n[policy.kind_tiers]\n" + "\n".join(lines) + "\n"


def rules_only(*, local: str = "small", paid: str = "big",
               paid_price: tuple[float, float] = (3.0, 15.0),
               kinds: Mapping[str, str] | None = None, paid_host: str = "provider") -> str:
    """Rules, ``local-mac`` with ``local``, ``paid`` with ``paid``: queues and rules, not models.

    ``kinds`` maps model kinds to tiers; None sends every one to local-mac. The hosts are
    ``mac`` and ``paid_host``.
    """
    kind_table = (every_kind_on("local-mac") if kinds is None else
                  "\n[policy.kind_tiers]\n" + "\n".join(f'{k} = "{t}"' for k, t in kinds.items()) + "\n")
    return f"""
[tiers.rules]
place = "rules"

[tiers.local-mac]
place = "local"
models = {{ default = {_q(local)} }}

[tiers.paid]
place = "paid"
models = {{ default = {_q(paid)} }}

# Hosts nobody listens on: these fleets test queues and rules, not models.
[hosts.mac]
kind = "ollama"
url = "http://127.0.0.1:9"
tier = "local-mac"
models = [{_q(local)}]
simulated = true

[hosts.{paid_host}]
kind = "openai"
url = "http://127.0.0.1:9/v1"
tier = "paid"
models = [{_q(paid)}]
simulated = true

[models.{_q(local)}]
input_per_mtok = 0.0
output_per_mtok = 0.0

[models.{_q(paid)}]
input_per_mtok = {paid_price[0]}
output_per_mtok = {paid_price[1]}

[policy]
high_risk_tier = "paid"
premium_tier = "paid"
spill_order = ["local-mac", "paid"]
large_job_tier = "paid"
""" + kind_table


def tiers_only() -> str:
    """Every default tier, with no model hosts: only rules jobs can finish here."""
    places = {"rules": "rules", "local-mac": "local", "local-gpu": "local", "runpod": "rented",
              "paid": "paid"}
    return "".join(f'\n[tiers.{t}]\nplace = "{p}"\n' for t, p in places.items())


def home_lab_data() -> dict[str, Any]:
    """The home-lab example fleet with every host simulated on port 0 (any free port)."""
    return lab_home_lab(names=HOME_LAB_HOSTS,
                        key_envs={"runpod": RUNPOD_KEY_ENV, "paid": OPENAI_KEY_ENV},
                        host_defaults={"timeout_s": 10, "connect_timeout_s": 1})


def home_lab() -> str:
    """:func:`home_lab_data` as TOML tables (tiers, hosts, models), for ``write_config``."""
    from tierfleet.lab.sim.configfile import dump_config

    text = dump_config(FleetConfig(**home_lab_data()))
    # The body only: the harness writes Redis, reliability and the ledger itself.
    keep: list[str] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("["):
            table = line.strip("[]").split(".")[0]
        if table in ("tiers", "hosts", "models"):
            keep.append(line)
    return "\n".join(keep) + "\n"


def api_fleet() -> str:
    """The HTTP API's test fleet; ``{mac}``, ``{gpu}``, ``{cloud}`` are the hosts' ports.

    local-gpu has a host and no worker: jobs sent there wait, which is how the
    tests reach the 504-with-job-id answer without racing a worker. It comes first
    among the model tiers so that escalation (one tier up, in config order) never
    lands there: local-mac escalates to paid, and paid is the top.
    """
    return """
[tiers.rules]
place = "rules"

[tiers.local-gpu]
place = "local"
models = {{ default = "qwen3-coder:30b" }}

[tiers.local-mac]
place = "local"
models = {{ default = "qwen3:4b" }}

[tiers.paid]
place = "paid"
models = {{ default = "gpt-test" }}

[hosts.mac]
kind = "ollama"
url = "http://127.0.0.1:{mac}"
tier = "local-mac"
models = ["qwen3:4b"]
simulated = true

[hosts.gpu]
kind = "ollama"
url = "http://127.0.0.1:{gpu}"
tier = "local-gpu"
models = ["qwen3-coder:30b"]
simulated = true

[hosts.cloud]
kind = "openai"
url = "http://127.0.0.1:{cloud}/v1"
tier = "paid"
models = ["gpt-test"]
simulated = true

[models."qwen3:4b"]
vision = true

[models."qwen3-coder:30b"]

[models."gpt-test"]
input_per_mtok = 1.0
output_per_mtok = 4.0
vision = true

[policy]
classifier = "keyword"
high_risk_tier = "paid"
premium_tier = "paid"
spill_order = ["local-mac", "paid"]
large_job_tier = "paid"

""" + every_kind_on("local-mac").replace("{", "{{").replace("}", "}}")
