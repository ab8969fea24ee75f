"""Headless Chromium driven through its DevTools protocol over ``--remote-debugging-pipe``.

No WebDriver, no download: Debian's ``chromium`` and the standard library. The browser
reads commands on file descriptor 3 and writes answers and events on descriptor 4, one
JSON message per NUL-terminated record.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
]


def chromium_executable() -> str:
    """The Chromium binary; raises (the browser tests fail, they do not skip) when it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("Chromium is needed for the viewer's browser tests: apt-get install chromium")


class Chromium:
    """One headless browser; use as a context manager. ``page()`` opens a tab."""

    def __init__(self, width: int = 1400, height: int = 900):
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="volcam-chromium-")
        cmd_read, self._cmd_write = os.pipe()
        self._res_read, res_write = os.pipe()
        # the child must read on 3 and write on 4: hand it the pipe ends above 9 and let the
        # shell (bash: fd numbers above 9) move them there just before it execs Chromium (no
        # preexec_fn in a threaded process)
        high_read, high_write = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10), fcntl.fcntl(res_write, fcntl.F_DUPFD, 10)
        args = [chromium_executable(), *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
        self.proc = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$@" 3<&{high_read} 4>&{high_write} {high_read}<&- {high_write}>&-',
                "bash",
                *args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(high_read, high_write),
        )
        for fd in (cmd_read, res_write, high_read, high_write):
            os.close(fd)
        self._next_id = 0
        self._lock = threading.Lock()
        self._answers: dict[int, dict] = {}
        self._events: list[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # ---- transport
    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._res_read, "rb", buffering=0) as f:
            while True:
                block = f.read(1 << 16)
                if not block:
                    break
                buf += block
                *records, buf = buf.split(b"\0")
                for record in records:
                    message = json.loads(record)
                    with self._cond:
                        if "id" in message:
                            self._answers[message["id"]] = message
                        else:
                            self._events.append(message)
                        self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60.0) -> dict:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
        message = {"id": mid, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no answer to {method} within {timeout} s")
                self._cond.wait(left)
            answer = self._answers.pop(mid)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def events(self, session: str | None = None) -> list[dict]:
        with self._cond:
            return [e for e in self._events if session is None or e.get("sessionId") == session]

    def wait_event(self, method: str, session: str, timeout: float = 60.0, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [e for e in self._events[after:] if e.get("method") == method and e.get("sessionId") == session]
                if hits:
                    return hits[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {method} within {timeout} s")
                self._cond.wait(left)

    def page(self) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        return Page(self, session)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            os.close(self._cmd_write)
        except OSError:
            pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab: navigation, script evaluation, real mouse and key input, screenshots, and
    the console errors, exceptions and network requests it has seen."""

    def __init__(self, browser: Chromium, session: str):
        self.browser = browser
        self.session = session
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": browser.width, "height": browser.height, "deviceScaleFactor": 1, "mobile": False},
        )

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def goto(self, path: str | Path, timeout: float = 60.0) -> None:
        url = Path(path).resolve().as_uri()
        mark = len(self.browser.events())
        self.send("Page.navigate", {"url": url})
        self.browser.wait_event("Page.loadEventFired", self.session, timeout, after=mark)

    def evaluate(self, expression: str, timeout: float = 60.0):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "timeout": timeout * 1000},
            timeout=timeout + 5,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def mouse(self, kind: str, x: float, y: float, **extra) -> None:
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra})

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, button="left", buttons=1, clickCount=1)
        self.mouse("mouseReleased", x, y, button="left", buttons=0, clickCount=1)

    def click_element(self, selector: str) -> None:
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        self.click(*box)

    def wheel(self, x: float, y: float, delta_y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mouseWheel", x, y, deltaX=0, deltaY=delta_y)

    def key(self, key: str, code: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code})

    def screenshot(self) -> np.ndarray:
        """The viewport as an RGB array ``[H, W, 3]``."""
        from PIL import Image

        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def save_screenshot(self, path: str | Path) -> None:
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        Path(path).write_bytes(png)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries of this tab."""
        out = []
        for e in self.browser.events(self.session):
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append(params["entry"].get("text", ""))
        return out

    def requests(self) -> list[str]:
        """URLs of every request the tab made (the page itself included)."""
        return [
            e["params"]["request"]["url"]
            for e in self.browser.events(self.session)
            if e.get("method") == "Network.requestWillBeSent"
        ]
