"""The Delivery on the wire, and who may import what to build or read it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from tierfleet.envelope import Delivery
from tierfleet.jobs import Job, Kind, Route

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "tierfleet"


def a_delivery(**kw: object) -> Delivery:
    job = Job(id="j1", prompt="hello", kind=Kind.CHAT)
    return Delivery(job=job, route=Route(tier="local-mac", kind=Kind.CHAT, fallbacks=["paid"]),
                    **kw)  # type: ignore[arg-type]


def test_kwargs_round_trip_and_keep_the_old_names() -> None:
    d = a_delivery(trail=("local-gpu",), attempt=2, parks=1, escalated=True)
    kwargs = d.to_kwargs()
    assert set(kwargs) == {"job", "route", "trail", "attempt", "parks", "escalated"}
    assert kwargs["trail"] == ["local-gpu"]
    assert Delivery.from_kwargs(kwargs) == d
    assert "escalated" not in a_delivery().to_kwargs()  # an ordinary body is unchanged


def test_an_older_senders_nulls_mean_defaults() -> None:
    kwargs = {**a_delivery().to_kwargs(), "trail": None, "attempt": None, "parks": None}
    assert Delivery.from_kwargs(kwargs) == a_delivery()


def test_a_delivery_is_frozen_and_strict() -> None:
    d = a_delivery()
    with pytest.raises(ValidationError):
        d.attempt = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Delivery(job=d.job, route=d.route, secret="x")  # type: ignore[call-arg]


def test_moved_restarted_and_replayed() -> None:
    d = a_delivery(trail=("local-gpu",), attempt=2, parks=1)
    paid = Route(tier="paid", kind=Kind.CHAT)
    moved = d.moved(paid, escalated=True)
    assert (moved.tier, moved.trail, moved.attempt, moved.parks, moved.escalated) == (
        "paid", ("local-gpu", "local-mac"), 3, 1, True)
    assert moved.moved(d.route).escalated  # one escalation per job: the flag stays

    # Parked: back on the dispatcher's route (d's), not the tier it parked on; the
    # escalation flag stays (one per job).
    back = moved.restarted("every host down")
    assert (back.tier, back.trail, back.attempt, back.parks, back.escalated) == (
        d.route.tier, (), 4, 2, True)
    assert back.route.fallbacks == d.route.fallbacks
    assert "parked: every host down" in back.route.reasons[-1].text

    again = back.replayed()
    assert (again.trail, again.attempt, again.parks) == ((), back.attempt + 1, 0)
    assert again.route == back.route


def imports_of(module: str) -> set[str]:
    """Modules of the package ``module`` imports (relative imports resolved), at any depth."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
    return found


def test_the_producer_does_not_import_worker_side_modules() -> None:
    assert imports_of("dispatch").isdisjoint({"runner", "reaper", "worker"})


def names_from(module: str, source: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    return {a.name for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module == source
            for a in n.names}


@pytest.mark.parametrize("module", ["store", "health", "metrics", "ledger", "cache", "runner",
                                    "reaper", "heartbeats"])
def test_state_modules_take_their_keys_from_keys_py(module: str) -> None:
    assert "keys" in imports_of(module)
    # From the Celery module only what publishes or connects, never a key.
    assert names_from(module, "broker") <= {"send", "redis_client"}
    assert "worker" not in imports_of(module)


def test_heartbeats_need_no_celery() -> None:
    tree = ast.parse((PACKAGE / "heartbeats.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n.startswith("celery") for n in names)
    assert imports_of("heartbeats") <= {"keys", "config"}
