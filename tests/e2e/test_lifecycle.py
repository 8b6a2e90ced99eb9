"""The `meshgate` CLI contract: `validate` exit codes, `up` readiness output, SIGTERM shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx2
import pytest

from e2e_support import (
    ENVOY,
    HS_SECRET_ENV,
    MESHGATE,
    REPO,
    WASM,
    Proc,
    api_key,
    describe,
    modern_body,
    modern_headers,
    pid_alive,
    post,
    start_gateway,
    stop_gateway,
    write_test_registry,
)

pytestmark = [pytest.mark.e2e, pytest.mark.lifecycle]


def validate(registry: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if not MESHGATE.exists():
        pytest.fail(f"{MESHGATE} missing (run `make build`)", pytrace=False)
    return subprocess.run(
        [str(MESHGATE), "validate", "--registry", str(registry)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_validate_shipped_example_registry():
    result = validate(REPO / "examples" / "registry.yaml")
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"


def test_validate_test_registry(tmp_path, keys, upstreams):
    result = validate(write_test_registry(tmp_path, keys, upstreams), {HS_SECRET_ENV: keys.hs_secret})
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"


# case -> (text to replace, replacement, a word the error output must contain: the bad value or field)
BROKEN = {
    "unknown-top-level-field": ("policy:", "polcy_typo: {}\npolicy:", "polcy_typo"),
    "duplicate-server-name": ("  - name: docs\n", "  - name: crm\n", "crm"),
    "api-key-sha256-not-hex": ('sha256: "', 'sha256: "zz', "sha256"),
    "missing-jwks-file": ("jwks_file: jwks.json", "jwks_file: no-such-jwks.json", "no-such-jwks.json"),
    "server-url-not-http": ("url: http://127.0.0.1", "url: ftp://127.0.0.1", "ftp"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_validate_rejects_broken_registry(case, tmp_path, keys, upstreams):
    registry = write_test_registry(tmp_path, keys, upstreams)
    old, new, needle = BROKEN[case]
    text = registry.read_text()
    assert old in text, f"test premise: {old!r} not in generated registry"
    registry.write_text(text.replace(old, new, 1))
    # The HS256 secret is provided: each case must fail for its own reason only.
    result = validate(registry, {HS_SECRET_ENV: keys.hs_secret})
    assert result.returncode == 1, (
        f"{case}: expected exit 1, got {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    )
    assert needle in result.stderr + result.stdout, f"{case}: error does not name {needle!r}:\n{result.stderr}"


def test_validate_rejects_unset_hs256_secret_env(tmp_path, keys, upstreams):
    registry = write_test_registry(tmp_path, keys, upstreams)
    env = {k: v for k, v in os.environ.items() if k != HS_SECRET_ENV}
    result = subprocess.run(
        [str(MESHGATE), "validate", "--registry", str(registry)], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 1, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    assert HS_SECRET_ENV in result.stderr + result.stdout


def test_up_ready_file_stdout_and_sigterm(tmp_path, keys, upstreams, runtime):
    """A second, independent gateway: ready file shape, printed URLs, Envoy flags, clean SIGTERM."""
    registry = write_test_registry(tmp_path, keys, upstreams)
    gateway = start_gateway(registry, tmp_path, env={HS_SECRET_ENV: keys.hs_secret}, runtime=runtime)
    try:
        ready = gateway.ready
        assert re.fullmatch(r"127\.0\.0\.1:\d+", ready["listener"]), ready
        assert not ready["listener"].endswith(":0"), ready
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", ready["admin"]), ready
        assert isinstance(ready["envoy_pid"], int) and pid_alive(ready["envoy_pid"]), ready
        base = f"http://{ready['listener']}"
        assert ready["servers"] == {"crm": f"{base}/mcp/crm", "docs": f"{base}/mcp/docs"}, ready

        stdout = gateway.proc.output.read_text(errors="replace")
        for name, url in ready["servers"].items():
            assert f"meshgate: {name} -> {url}" in stdout, f"missing ready line for {name}:\n{stdout}"

        cmdline = Path(f"/proc/{ready['envoy_pid']}/cmdline").read_bytes().split(b"\0")
        assert b"--disable-hot-restart" in cmdline, f"Envoy must run with --disable-hot-restart: {cmdline}"

        admin_ready = httpx2.get(f"{ready['admin']}/ready", timeout=5)
        assert admin_ready.status_code == 200, describe(admin_ready)
        served = post(gateway.url("docs"), modern_body("tools/list", {}), api_key("e2e-reader-key"), modern_headers("tools/list"))
        assert served.status_code == 200, describe(served)

        envoy_pid = gateway.envoy_pid
        gateway.proc.popen.send_signal(signal.SIGTERM)
        try:
            code = gateway.proc.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"meshgate did not exit within 20s of SIGTERM:\n{gateway.proc.tail()}")
        assert code == 0, f"meshgate exited {code} on SIGTERM:\n{gateway.proc.tail()}"
        deadline = time.monotonic() + 5
        while pid_alive(envoy_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(envoy_pid), "Envoy still running after meshgate exited"
    finally:
        stop_gateway(gateway)


def test_up_fails_cleanly_on_invalid_registry(tmp_path, keys, upstreams):
    """`up` runs the same validation as `validate`: exits non-zero, never reports ready."""
    registry = write_test_registry(tmp_path, keys, upstreams)
    registry.write_text(registry.read_text().replace("policy:", "polcy_typo: {}\npolicy:", 1))
    ready_file = tmp_path / "ready.json"
    proc = Proc.start(
        "meshgate-invalid",
        [str(MESHGATE), "up", "--registry", str(registry), "--ready-file", str(ready_file),
         "--envoy", str(ENVOY), "--wasm", str(WASM)],
        tmp_path / "meshgate.out",
        env={HS_SECRET_ENV: keys.hs_secret},
    )
    try:
        code = proc.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        proc.stop()
    assert code not in (None, 0), f"`up` accepted an invalid registry (exit {code}):\n{proc.tail()}"
    assert not ready_file.exists()
