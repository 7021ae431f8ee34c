"""The package's front door, as httpx tests its own: ``__all__`` is complete and sorted,
and the functions a producer calls say what they return."""

from __future__ import annotations

import inspect
import typing

import tierfleet
from tierfleet.dispatch import Handle
from tierfleet.reports.spend import GroupBy, Report


def _defined_here(value: object) -> bool:
    # Public names the package defines (classes, functions), not the modules and typing
    # helpers its own imports leave behind.
    return (inspect.isclass(value) or inspect.isfunction(value)) and \
        getattr(value, "__module__", "").startswith("tierfleet")


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert tierfleet.__all__ == sorted(tierfleet.__all__)
    assert len(set(tierfleet.__all__)) == len(tierfleet.__all__)
    for name in tierfleet.__all__:
        assert getattr(tierfleet, name) is not None, name


def test_all_names_every_public_member() -> None:
    public = {n for n, v in vars(tierfleet).items() if not n.startswith("_") and _defined_here(v)}
    assert public <= set(tierfleet.__all__), sorted(public - set(tierfleet.__all__))


def test_handle_and_user_tier_are_exported() -> None:
    assert tierfleet.Handle is Handle
    assert {"Handle", "UserTier"} <= set(tierfleet.__all__)
    assert tierfleet.UserTier.PREMIUM.value == "premium"


def test_the_entry_points_are_typed() -> None:
    # The TYPE_CHECKING names, as a type checker sees them.
    namespace = {**vars(tierfleet), "Handle": Handle, "Report": Report, "GroupBy": GroupBy}
    hints = {fn.__name__: typing.get_type_hints(fn, globalns=namespace)
             for fn in (tierfleet.submit, tierfleet.submit_many, tierfleet.result, tierfleet.report)}
    assert hints["submit"]["return"] is Handle
    assert hints["submit_many"]["return"] == list[Handle]
    assert hints["result"]["return"] is tierfleet.Result
    assert hints["report"]["return"] is Report
    for name, h in hints.items():
        assert typing.Any not in (h["return"], *typing.get_args(h["return"])), name


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    assert not hasattr(tierfleet, "no_such_member")
