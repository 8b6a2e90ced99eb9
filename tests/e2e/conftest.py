"""Fixtures for Meshgate's real-Envoy end-to-end suite.

Session layout (everything on loopback, every port chosen by the OS):

    pytest ──HTTP──▶ Envoy (+ meshgate_wasm.wasm) ──▶ crm_server.py  (stateful, SSE)
                     started by `meshgate up`     └─▶ docs_server.py (stateless, JSON)

Keys (RSA + EC in a JWKS file, an HS256 secret in an env var) and the
registry are generated per run under pytest's tmp dir. Each upstream writes
every request it receives to a JSON-lines log, which tests read to prove a
rejected request never reached it.

Hostile-upstream tests use `hostile_gateway`: the same registry plus server `evil`, the
scripted malicious upstream (scripted_upstream.py) running in this process, whose every
answer a test writes byte by byte.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e_support import (
    HS_SECRET_ENV,
    Gateway,
    Keys,
    Upstream,
    running_gateway,
    start_gateway,
    start_upstream,
    stop_gateway,
    write_test_registry,
)
from scripted_upstream import ScriptedUpstream, scripted_upstream


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Upstream]]:
    workdir = tmp_path_factory.mktemp("upstreams")
    started: dict[str, Upstream] = {}
    try:
        started["crm"] = start_upstream("crm", "crm_server.py", workdir)
        started["docs"] = start_upstream("docs", "docs_server.py", workdir)
        yield started
    finally:
        for upstream in started.values():
            upstream.proc.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream]) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("gateway")
    registry = write_test_registry(workdir, keys, upstreams)
    gw = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret})
    try:
        yield gw
    finally:
        stop_gateway(gw)


@pytest.fixture(scope="session")
def scripted() -> Iterator[ScriptedUpstream]:
    """The malicious upstream, scripted per test (tests/e2e/scripted_upstream.py)."""
    with scripted_upstream() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def hostile_gateway(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], scripted: ScriptedUpstream
) -> Iterator[Gateway]:
    """A gateway whose registry adds server `evil`, the scripted upstream (see `registry_yaml`)."""
    workdir = tmp_path_factory.mktemp("hostile-gateway")
    with running_gateway(workdir, keys, upstreams["crm"].url, upstreams["docs"].url, evil_url=scripted.url) as gw:
        yield gw


@pytest.fixture
def crm(upstreams: dict[str, Upstream]) -> Upstream:
    return upstreams["crm"]


@pytest.fixture
def docs(upstreams: dict[str, Upstream]) -> Upstream:
    return upstreams["docs"]
