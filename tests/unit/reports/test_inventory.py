"""The prompt inventory: rows through the real policy, priced before and after routing."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import tierfleet.config
from tierfleet.cli.money import register
from tierfleet.config import FleetConfig, load_config
from tierfleet.pricing import attempt_cost
from tierfleet.reports.inventory import InventoryError, plot_inventory, project

DATA = Path(__file__).parents[2] / "data"
SMALL = DATA / "inventory_small.csv"
BUILTIN = Path(tierfleet.config.__file__).with_name("defaults.toml")
HEADER = "workflow,kind,monthly_volume,avg_input_tokens,avg_output_tokens,risk,privacy,example_prompt"


@pytest.fixture(scope="module")
def builtin() -> FleetConfig:
    return load_config(BUILTIN)


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_small_inventory_json_shape_and_hand_figures(builtin: FleetConfig) -> None:
    inv = project(SMALL, builtin)
    data = json.loads(inv.model_dump_json())
    assert {"rows", "total_before_usd", "total_after_usd", "savings"} <= set(data)
    assert set(data["savings"]) == {"usd", "fraction"}
    for row in data["rows"]:
        assert {
            "workflow",
            "kind",
            "monthly_volume",
            "tier",
            "model",
            "cost_before_usd",
            "cost_after_usd",
        } <= set(row)
    assert inv.baseline_model == "gpt-5.5"  # the only (so the priciest) paid model
    rules, confidential, writing, code = inv.rows
    # Before: gpt-5.5 at $3/$12 per M.
    assert rules.cost_before_usd == pytest.approx(5000 * 200 * 3 / 1e6)  # $3.00
    assert confidential.cost_before_usd == pytest.approx(5000 * (300 * 3 + 10 * 12) / 1e6)  # $5.10
    assert writing.cost_before_usd == pytest.approx(100 * (2000 * 3 + 1000 * 12) / 1e6)  # $1.80
    assert code.cost_before_usd == pytest.approx(400 * (6000 * 3 + 2000 * 12) / 1e6)  # $16.80
    assert inv.total_before_usd == pytest.approx(26.70)
    # After: rules are free, confidential stays home, high risk pays.
    assert (rules.tier, rules.model, rules.cost_after_usd) == ("rules", None, 0.0)
    assert confidential.tier in builtin.local_tiers() and confidential.place == "local"
    assert writing.place == "paid" and writing.cost_after_usd == pytest.approx(1.80)
    expected = attempt_cost(
        builtin,
        tier=code.tier,
        host=code.host,
        model=code.model,
        tokens_in=6000,
        tokens_out=2000,
        seconds=code.est_seconds_per_job,
    )
    assert code.cost_after_usd == pytest.approx(400 * expected)
    assert inv.total_after_usd == pytest.approx(math.fsum(r.cost_after_usd for r in inv.rows))
    assert inv.savings.usd == pytest.approx(inv.total_before_usd - inv.total_after_usd)
    helpdesk = next(w for w in inv.workflows if w.workflow == "helpdesk")
    assert (helpdesk.monthly_volume, helpdesk.cost_before_usd) == (10_000, pytest.approx(8.10))
    assert all(r.reasons for r in inv.rows)


def test_prices_file_overrides_and_adds_models(builtin: FleetConfig, tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[models."gpt-5.5"]\ninput = 1.0\noutput = 2.0\n'
        '[models."claude-opus-4-7"]\ninput = 5.0\noutput = 25.0\n'
    )
    inv = project(SMALL, builtin, prices=prices)
    assert inv.rows[0].cost_before_usd == pytest.approx(5000 * 200 * 1.0 / 1e6)
    assert inv.rows[2].cost_after_usd == pytest.approx(100 * (2000 * 1.0 + 1000 * 2.0) / 1e6)
    opus = project(SMALL, builtin, prices=prices, baseline_model="claude-opus-4-7")
    assert opus.baseline_model == "claude-opus-4-7"
    assert opus.rows[2].cost_before_usd == pytest.approx(100 * (2000 * 5 + 1000 * 25) / 1e6)
    assert builtin.models["gpt-5.5"].input_per_mtok == 3.0  # the caller's config is untouched


def test_a_job_too_long_for_its_host_is_priced_where_it_can_run(builtin: FleetConfig, tmp_path: Path) -> None:
    csv_path = write_csv(
        tmp_path / "big.csv",
        'mono,code,1,40000,30000,low,internal,"Refactor this module."',
        'secret,code,1,40000,30000,low,confidential,"Refactor this module."',
    )
    big, secret = project(csv_path, builtin).rows
    # 70,000 tokens fit no 32K local window: on runpod (131K), 40000/1500 + 30000/50 s
    assert big.tier == "runpod"
    assert big.cost_after_usd == pytest.approx(0.00044 * math.ceil(40000 / 1500 + 30000 / 50))
    # Confidential work may not leave: priced locally, with a warning that it would not fit.
    assert secret.place == "local" and secret.cost_after_usd == 0.0
    assert any("fits no host" in w for w in secret.warnings)


def test_bad_inventories_name_the_problem(builtin: FleetConfig, tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"unknown \['cost'\]"):
        project(write_csv(tmp_path / "a.csv", header=HEADER + ",cost"), builtin)
    with pytest.raises(InventoryError, match=r"line 3: kind"):
        project(
            write_csv(
                tmp_path / "b.csv",
                "w,summary,1,1,1,low,internal,x",
                "w,poetry,1,1,1,low,internal,x",
            ),
            builtin,
        )
    with pytest.raises(InventoryError, match="monthly_volume"):
        project(write_csv(tmp_path / "c.csv", "w,summary,-5,1,1,low,internal,x"), builtin)
    bad_prices = tmp_path / "p.toml"
    bad_prices.write_text('[models."x"]\ninput = "cheap"\noutput = 1\n')
    with pytest.raises(InventoryError, match=r"models\.x"):
        project(SMALL, builtin, prices=bad_prices)
    with pytest.raises(InventoryError, match="no price"):
        project(SMALL, builtin, baseline_model="granite3.2-vision:2b")


SEED_FLEET = """
[tiers.rules]
place = "rules"

[tiers.local-mac]
place = "local"
models = { default = "qwen3:4b" }

[tiers.paid]
place = "paid"
models = { default = "claude-sonnet-4-6" }

[hosts.mac]
kind = "ollama"
url = "http://127.0.0.1:1"
tier = "local-mac"
models = ["qwen3:4b"]

[hosts.gateway]
kind = "openai"
url = "http://127.0.0.1:2/v1"
tier = "paid"
models = ["claude-opus-4-7", "claude-sonnet-4-6", "gpt-5.5", "deepseek-chat"]
context_window = 400000

[models."qwen3:4b"]
[models."claude-opus-4-7"]
input_per_mtok = 5.00
output_per_mtok = 25.00
[models."claude-sonnet-4-6"]
input_per_mtok = 3.00
output_per_mtok = 15.00
[models."gpt-5.5"]
input_per_mtok = 3.00
output_per_mtok = 12.00
[models."deepseek-chat"]
input_per_mtok = 0.27
output_per_mtok = 1.10

[policy]
spill_order = ["paid"]
large_job_tier = "paid"

[policy.kind_tiers]
classification = "local-mac"
extraction = "local-mac"
summary = "local-mac"
translation = "local-mac"
chat = "local-mac"
code = "paid"
reasoning = "paid"
vision = "paid"
writing = "paid"

[ledger]
baseline_model = "claude-sonnet-4-6"
"""


def test_seed_003_as_an_inventory(tmp_path: Path) -> None:
    """The seed's month (6,000 requests of 37.5K in / 37.5K out), pinned to its four models."""
    cfg_path = tmp_path / "fleet.toml"
    cfg_path.write_text(SEED_FLEET)
    cfg = load_config(cfg_path)
    csv_path = write_csv(
        tmp_path / "seed003.csv",
        'p,reasoning,1200,37500,37500,low,internal,"Design a 3-region cache.",paid,claude-opus-4-7',
        'p,code,1800,37500,37500,low,internal,"Fix the failing test.",paid,claude-sonnet-4-6',
        'p,extraction,900,37500,37500,low,internal,"Return the endpoints as JSON.",paid,gpt-5.5',
        'p,code,2100,37500,37500,low,internal,"Generate unit tests.",paid,deepseek-chat',
        header=HEADER + ",tier,model",
    )
    inv = project(csv_path, cfg)
    assert [r.model for r in inv.rows] == [
        "claude-opus-4-7",
        "claude-sonnet-4-6",
        "gpt-5.5",
        "deepseek-chat",
    ]
    assert inv.total_before_usd == pytest.approx(4050.0)
    assert inv.total_after_usd == pytest.approx(3179.1375)
    assert inv.savings.fraction == pytest.approx(0.21503, abs=1e-5)
    print(
        f"\nseed 003 as an inventory: {inv.total_before_usd:,.2f} -> "
        f"{inv.total_after_usd:,.2f} USD/month, saves {inv.savings.fraction:.1%}"
    )


def test_inventory_plot_and_cli(builtin: FleetConfig, tmp_path: Path) -> None:
    png = plot_inventory(project(SMALL, builtin), tmp_path / "inv.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 2_000_000
    assert struct.unpack(">II", data[16:24])[0] >= 800

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out_png = tmp_path / "cli.png"
    res = runner.invoke(
        app, ["inventory", str(SMALL), "--config", str(BUILTIN), "--json", "--plot", str(out_png)]
    )
    assert res.exit_code == 0, res.output
    data_json = json.loads(res.stdout)
    assert data_json["total_before_usd"] == pytest.approx(26.70)
    assert out_png.stat().st_size > 10_000
    res = runner.invoke(app, ["inventory", str(SMALL), "--config", str(BUILTIN)])
    assert res.exit_code == 0 and "helpdesk" in res.stdout and "$26.70" in res.stdout
    res = runner.invoke(app, ["inventory", str(tmp_path / "missing.csv"), "--config", str(BUILTIN)])
    assert res.exit_code == 2 and "cannot read" in res.stderr and "Traceback" not in res.output


def test_inventory_names_its_config_and_why_each_row_stays(builtin_config: FleetConfig) -> None:
    inv = project(DATA / "inventory_small.csv", builtin_config)
    assert inv.config_file.endswith("defaults.toml")
    assert all(r.why for r in inv.rows)
    assert any("priced at $0 on tier local-gpu" in w for w in inv.warnings)
