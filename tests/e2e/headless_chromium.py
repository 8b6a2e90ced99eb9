"""Debian's headless `chromium`, driven over the DevTools protocol on a pipe.

`--remote-debugging-pipe` makes Chromium read protocol commands from fd 3 and write answers
and events to fd 4, NUL-separated JSON: no websocket library, no WebDriver, nothing from the
internet. The browser does everything itself (forms, cookies, redirects, the page's script);
the test only types into fields, clicks buttons and reads the DOM, as a person would.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")


class BrowserError(RuntimeError):
    pass


class HeadlessChromium:
    """One browser with one tab. Use as a context manager (the process is always stopped)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._next_id = 0
        self._buffer = b""
        self.session: str | None = None
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-pipe",
            f"--user-data-dir={workdir / 'chromium-profile'}",
            "about:blank",
        ]
        # Chromium wants the pipe on fds 3 and 4 exactly: moved there in the child, before
        # exec (pass_fds keeps 3 and 4 open across close_fds).
        def pipe_on_3_and_4() -> None:
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.log = (workdir / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [str(CHROMIUM), *args],
            pass_fds=(3, 4),
            preexec_fn=pipe_on_3_and_4,  # noqa: PLW1509 - only dup2 before exec
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        os.set_blocking(self._from_browser, False)

    def __enter__(self) -> HeadlessChromium:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close", timeout=5)
                except BrowserError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.log.close()

    # ------------------------------------------------------------------ protocol

    def _read_message(self, deadline: float) -> dict[str, Any] | None:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                return None
            if self.proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self.proc.returncode}")
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not chunk:
                raise BrowserError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False, timeout: float = 20) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            request["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message is None:
                raise BrowserError(f"{method}: no answer within {timeout}s")
            if message.get("id") != self._next_id:
                continue  # an event, or a late answer
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            return message.get("result", {})

    # ------------------------------------------------------------------ what a person does

    def evaluate(self, expression: str) -> Any:
        """The value of `expression` in the page (`None` while a navigation replaces it)."""
        try:
            result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        except BrowserError:
            return None
        if "exceptionDetails" in result:
            return None
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", what=f"{url} loaded")

    def wait_for(self, condition: str, timeout: float = 20, what: str | None = None) -> Any:
        """Polls a JavaScript condition until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(f"(() => {{ try {{ return ({condition}); }} catch (e) {{ return null; }} }})()")
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"timed out waiting for {what or condition}; page text:\n{self.text()}")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def fill(self, selector: str, value: str) -> None:
        done = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            f" e.focus(); e.value = {json.dumps(value)}; e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()"
        )
        if not done:
            raise BrowserError(f"no field {selector}; page text:\n{self.text()}")

    def click(self, selector: str) -> None:
        done = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false; e.click(); return true; }})()"
        )
        if not done:
            raise BrowserError(f"nothing to click at {selector}; page text:\n{self.text()}")
