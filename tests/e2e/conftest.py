"""Fixtures for Meshgate's real-Envoy end-to-end suite.

Session layout (everything on loopback, every port chosen by the OS):

    pytest ──HTTP──▶ Envoy (+ libmeshgate.so  ──▶ crm_server.py  (stateful, SSE)
                     or meshgate_wasm.wasm)   └─▶ docs_server.py (stateless, JSON)
                     started by `meshgate up`

Every gateway test runs against both builds of the filter: the session fixture `runtime`
is parametrised (`[native]`, `[wasm]` in test ids), and every fixture that starts a
gateway depends on it, so pytest starts one gateway per build and scope and runs the
tests of one build together.

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
    RUNTIMES,
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


@pytest.fixture(scope="session", params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """The filter build under test: `native` (libmeshgate.so) or `wasm`."""
    return request.param


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], runtime: str
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp(f"gateway-{runtime}")
    registry = write_test_registry(workdir, keys, upstreams)
    gw = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret}, runtime=runtime)
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
    tmp_path_factory: pytest.TempPathFactory,
    keys: Keys,
    upstreams: dict[str, Upstream],
    scripted: ScriptedUpstream,
    runtime: str,
) -> Iterator[Gateway]:
    """A gateway whose registry adds server `evil`, the scripted upstream (see `registry_yaml`)."""
    workdir = tmp_path_factory.mktemp(f"hostile-gateway-{runtime}")
    crm, docs = upstreams["crm"].url, upstreams["docs"].url
    with running_gateway(workdir, keys, crm, docs, evil_url=scripted.url, runtime=runtime) as gw:
        yield gw


@pytest.fixture
def crm(upstreams: dict[str, Upstream]) -> Upstream:
    return upstreams["crm"]


@pytest.fixture
def docs(upstreams: dict[str, Upstream]) -> Upstream:
    return upstreams["docs"]
