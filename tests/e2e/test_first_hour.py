"""The first hour with Meshgate: the README's demo, run and compared; the docs; the example client.

- `test_the_readme_demo_prints_what_the_readme_shows`: runs `scripts/run.sh` (what `make run`
  starts once built), compares its banner with the README's, runs every command the banner
  offers, compares their output with the README's, edits the registry live and stops the
  demo with SIGTERM. The demo runs on free ports (ports are shared on a test machine); they
  are mapped back to the defaults the README shows (10000, 9101, 9102, 9901, 18001), and the
  run folder and registry path to `.run` and `examples/registry.yaml`: those are the only
  substitutions, as the README says.
- Docs: no page names a path of a build machine; every relative link resolves.
- The example client reports failures in one line (gateway down here; a policy refusal in the
  demo test).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from e2e_support import ENVOY, MESHGATE, NATIVE, REPO, WASM, free_port

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
USER_DOCS = [README, REPO / "BENCHMARKS.md", REPO / "examples" / "README.md", *DOCS]
PY = REPO / ".venv" / "bin" / "python"

# The README's ports, as `make run` uses them.
DEFAULT_PORTS = {"listener": 10000, "envoy_admin": 9901, "crm": 9101, "docs": 9102, "admin": 18001}
BANNER_END = "Ctrl-C or `make stop` stops everything."


# --- docs -------------------------------------------------------------------------------------

# Folders that exist only on some machine: a user's home, a scratch or build folder.
BUILD_MACHINE_PATH = re.compile(r"(?<![\w.~-])(/work/|/home/|/root/|/Users/|/tmp/|/var/folders/|[A-Z]:\\\\Users)")


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_name_no_paths_of_a_build_machine(page: Path) -> None:
    hits = [
        f"{page.relative_to(REPO)}:{number}: {line.strip()}"
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if BUILD_MACHINE_PATH.search(line)
    ]
    assert not hits, "user docs must not name paths of a build machine:\n" + "\n".join(hits)


def test_the_detector_finds_build_machine_paths() -> None:
    assert BUILD_MACHINE_PATH.search("see /work/main/.venv/bin/envoy")
    assert BUILD_MACHINE_PATH.search("files in `/tmp/obs-research`")
    assert not BUILD_MACHINE_PATH.search("ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/opt/meshgate, ~/.local/bin")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", USER_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_readme_leads_to_every_docs_page() -> None:
    text = README.read_text()
    for page in [*DOCS, REPO / "BENCHMARKS.md"]:
        assert f"]({page.relative_to(REPO)})" in text, f"README.md does not link {page.relative_to(REPO)}"
    assert len(text.splitlines()) < 250, "the README is read in ten minutes: reference material goes to docs/"


# --- the example client -----------------------------------------------------------------------


def test_the_client_reports_an_unreachable_gateway_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp/crm"
    done = subprocess.run(
        [str(PY), str(REPO / "examples" / "client.py"), "--url", url, "--api-key", "demo-reader-key"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 3, done
    assert done.stdout == "", done.stdout
    assert done.stderr == f"error: cannot connect to {url} (is the gateway running? `make run`)\n", done.stderr


# --- the README's demo ------------------------------------------------------------------------


def readme_blocks() -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The README's `make run` output, and its (command, output lines) pairs."""
    text = README.read_text()
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    run = next(b for b in blocks if b.startswith("$ make run\n"))
    calls = next(b for b in blocks if "examples/client.py" in b and not b.startswith("$ make run"))
    pairs: list[tuple[str, list[str]]] = []
    for line in calls.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], []))
        else:
            pairs[-1][1].append(line)
    return run.splitlines()[1:], pairs


def demo_registry(folder: Path, ports: dict[str, int]) -> Path:
    """examples/registry.yaml on `ports`, with the files it names next to it."""
    text = (REPO / "examples" / "registry.yaml").read_text()
    for old, new in [
        ("port: 10000", f"port: {ports['listener']}"),
        ("port: 9901", f"port: {ports['envoy_admin']}"),
        ("127.0.0.1:9101", f"127.0.0.1:{ports['crm']}"),
        ("127.0.0.1:9102", f"127.0.0.1:{ports['docs']}"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    shutil.copytree(REPO / "examples" / "keys", folder / "keys")
    registry = folder / "registry.yaml"
    registry.write_text(text)
    return registry


class Demo:
    """`scripts/run.sh` in its own session, its output collected line by line by a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            ["scripts/run.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        self.printed: list[str] = []  # every line so far
        self.unread = 0  # index of the first line read_until has not looked at
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.printed.append(line.rstrip("\n"))

    def read_until(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            while self.unread < len(self.printed):
                line = self.printed[self.unread]
                self.unread += 1
                if re.search(pattern, line):
                    return line
            ended = not self.reader.is_alive() and self.unread >= len(self.printed)
            if time.monotonic() > deadline or ended:
                raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.printed))
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def normalise(text: str, ports: dict[str, int], folder: Path, registry: Path) -> str:
    text = text.replace(str(registry), "examples/registry.yaml").replace(str(folder / "run"), ".run")
    for name, port in ports.items():
        text = re.sub(rf"(?<=[:/]){port}\b", str(DEFAULT_PORTS[name]), text)
    return text


def test_the_readme_demo_prints_what_the_readme_shows(tmp_path: Path) -> None:
    for artifact in (MESHGATE, NATIVE, WASM, ENVOY):
        if not artifact.exists():
            pytest.skip(f"{artifact} missing (make build)")
    expected_run, expected_calls = readme_blocks()
    building, *expected_banner = expected_run
    assert building.replace(".run/", "$(RUN_DIR)/") in (REPO / "Makefile").read_text(), building

    ports = {name: free_port() for name in DEFAULT_PORTS}
    registry = demo_registry(tmp_path, ports)
    env = {
        **os.environ,
        "MESHGATE_REGISTRY": str(registry),
        "MESHGATE_ADMIN_PORT": str(ports["admin"]),
        "MESHGATE_RUN_DIR": str(tmp_path / "run"),
    }
    demo = Demo(env)
    try:
        demo.read_until(re.escape(BANNER_END), 120)
        start = next(i for i, line in enumerate(demo.printed) if line.startswith("Starting Meshgate"))
        printed = demo.printed[start:demo.unread]
        # Everything from "Starting Meshgate" to the banner's last line, as the README shows it.
        got = normalise("\n".join(printed), ports, tmp_path, registry)
        banner = "\n".join(expected_banner)
        assert got == banner, f"README's banner:\n{banner}\n\nscripts/run.sh printed:\n{got}"

        # Every command the banner offers works; those the README shows answer as it shows.
        commands = [line.strip() for line in printed if line.startswith(("  .venv/", "  curl "))]
        assert len(commands) == 5, commands
        outputs = {}
        for command in commands:
            done = subprocess.run(["bash", "-c", command + " 2>&1"], cwd=REPO, capture_output=True, text=True, timeout=60)
            outputs[normalise(command, ports, tmp_path, registry)] = (done.returncode, normalise(done.stdout, ports, tmp_path, registry))
            assert "Traceback" not in done.stdout, done.stdout
        assert [c for c, _ in expected_calls] == list(outputs)[:4], list(outputs)
        differ = [
            f"$ {command}\nREADME:\n" + "\n".join(lines) + f"\ngot:\n{outputs[command][1]}"
            for command, lines in expected_calls
            if outputs[command][1].rstrip("\n").split("\n") != lines
        ]
        assert not differ, "\n\n".join(differ)
        status, catalog_text = outputs[normalise(commands[-1], ports, tmp_path, registry)]
        assert status == 0, catalog_text
        catalog = {s["name"]: s for s in json.loads(catalog_text)["servers"]}
        assert catalog["crm"]["discovery"]["status"] == "ok", catalog["crm"]
        assert {"get_customer", "list_customers", "delete_customer", "slow_report"} <= {t["name"] for t in catalog["crm"]["tools"]}
        assert {t["name"] for t in catalog["docs"]["tools"]} == {"search_docs", "get_doc", "admin_reindex"}

        # A live edit is announced in one line; so is a refused one.
        original = registry.read_text()
        docs_url = f"    url: http://127.0.0.1:{ports['docs']}/mcp\n"
        assert docs_url in original
        registry.write_text(original.replace(docs_url, docs_url + "  - name: spare\n" + docs_url, 1))
        line = demo.read_until(r"^live: ", 30)
        assert re.fullmatch(r"live: registry applied \(version [0-9a-f]{1,12}\); added /mcp/spare", line), line
        registry.write_text(original + "\nbogus_key: 1\n")
        line = demo.read_until(r"^live: ", 30)
        assert line.startswith("live: registry edit refused, still serving the last good one: "), line
        assert "bogus_key" in line, line

        # Stopping as a script would: SIGTERM, exit 0, every process it started gone.
        ready = json.loads((tmp_path / "run" / "ready.json").read_text())
        demo.proc.send_signal(signal.SIGTERM)
        assert demo.proc.wait(timeout=30) == 0
        demo.read_until(r"^Stopped: gateway and example servers", 5)
        for pid in [ready["envoy_pid"]]:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
        for port in ports.values():
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after the stop"
        assert not (tmp_path / "run" / "run.pid").exists()
    finally:
        demo.kill()


def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole process group (run.sh, meshgate, Envoy,
    the servers): the demo still stops in order, says so and exits 0, leaving nothing behind."""
    for artifact in (MESHGATE, NATIVE, WASM, ENVOY):
        if not artifact.exists():
            pytest.skip(f"{artifact} missing (make build)")
    ports = {name: free_port() for name in DEFAULT_PORTS}
    registry = demo_registry(tmp_path, ports)
    env = {
        **os.environ,
        "MESHGATE_REGISTRY": str(registry),
        "MESHGATE_ADMIN_PORT": str(ports["admin"]),
        "MESHGATE_RUN_DIR": str(tmp_path / "run"),
    }
    demo = Demo(env)
    try:
        demo.read_until(re.escape(BANNER_END), 120)
        ready = json.loads((tmp_path / "run" / "ready.json").read_text())
        os.killpg(demo.proc.pid, signal.SIGINT)
        assert demo.proc.wait(timeout=30) == 0, "\n".join(demo.printed)
        demo.read_until(r"^Stopped: gateway and example servers", 5)
        assert not [line for line in demo.printed[demo.unread:] if line.strip()], demo.printed
        time.sleep(0.5)
        assert not Path(f"/proc/{ready['envoy_pid']}").exists() or "zombie" in Path(
            f"/proc/{ready['envoy_pid']}/status").read_text().lower()
        for port in ports.values():
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after Ctrl-C"
    finally:
        demo.kill()
