"""Streaming through the filter: progress notifications arrive while the tool call is still running.

A gateway that buffers the whole response (e.g. to filter it) would deliver
every progress notification together with the result; these tests time them.
"""

from __future__ import annotations

import time

import pytest

from e2e_support import api_key, legacy_session, modern_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.streaming]

STEPS = 4
DELAY = 1.0  # seconds per step: the call takes ~4 s; a 1 s stall still passes


@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_progress_streams_before_result(era, gateway, crm):
    connect = legacy_session if era.startswith("legacy") else modern_client
    arrivals: list[tuple[float, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append((time.monotonic(), progress))

    async with connect(gateway.url("crm"), api_key("e2e-admin-key")) as client:
        started = time.monotonic()
        result = await client.call_tool(
            "slow_report", {"steps": STEPS, "delay": DELAY}, progress_callback=on_progress
        )
        finished = time.monotonic()

    assert not result.is_error, result
    assert "report ready" in result.content[0].text
    offsets = [round(at - started, 2) for at, _ in arrivals]
    assert [p for _, p in arrivals] == [float(i) for i in range(1, STEPS + 1)], f"progress values/offsets: {arrivals}"
    # First notification after ~DELAY, result after ~STEPS*DELAY: it must come well before the result.
    first_lead = finished - arrivals[0][0]
    assert first_lead >= (STEPS - 2) * DELAY, (
        f"first progress arrived only {first_lead:.2f}s before the result (offsets {offsets}, "
        f"result at {finished - started:.2f}s): the response is being buffered"
    )
    spread = arrivals[-1][0] - arrivals[0][0]
    assert spread >= (STEPS - 2) * DELAY, f"progress arrived in a burst (offsets {offsets})"


@pytest.mark.slow
async def test_long_call_outlives_default_route_timeout(gateway, crm):
    """Envoy's default 15 s route timeout must not cut a long tool call (crm timeout is 120s in the registry)."""
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with legacy_session(gateway.url("crm"), api_key("e2e-admin-key")) as session:
        started = time.monotonic()
        result = await session.call_tool("slow_report", {"steps": 9, "delay": 2.0}, progress_callback=on_progress)
        elapsed = time.monotonic() - started
    assert not result.is_error, result
    assert elapsed >= 17, elapsed
    assert seen == [float(i) for i in range(1, 10)]
