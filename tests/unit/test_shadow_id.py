"""Shadow job ids stay distinct, and valid job ids, whatever the job id's length."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tierfleet.jobs import Job
from tierfleet.shadow import shadow_id

IDS = st.text(alphabet="abc123.:-_", min_size=1, max_size=128)


@given(IDS, IDS)
def test_distinct_jobs_get_distinct_valid_shadow_ids(a: str, b: str) -> None:
    assert (shadow_id(a) == shadow_id(b)) == (a == b)
    Job(id=shadow_id(a), prompt="x")  # a valid id: the shadow job passes validation


def test_two_long_ids_sharing_a_prefix() -> None:
    a, b = "j" * 126 + "a", "j" * 126 + "b"
    assert shadow_id(a) != shadow_id(b) and shadow_id(a).startswith("sh.")
