"""A node in its own process, strangers parking half frames on its join protocol, a member fetching."""

from __future__ import annotations

import pytest

from benchmarks.strangers import measure

RSS_GROWTH_LIMIT_MB = 50  # the requirement's bound for 2,000 parked streams; this test parks 1,000


@pytest.mark.parametrize(("declared", "sent"), [(8192, 4096), (256 * 1024, 128 * 1024)], ids=["within-limit", "oversized"])
async def test_parked_half_frames_cost_bounded_memory_and_member_is_served(declared: int, sent: int) -> None:
    m = await measure(streams=1000, ids=50, declared=declared, sent=sent)  # raises unless the member got the blob
    assert m.rss_peak_mb - m.rss_before_mb < RSS_GROWTH_LIMIT_MB, m
