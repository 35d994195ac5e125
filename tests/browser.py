"""A real browser for the site's tests and screenshots: Debian's Chromium, headless, driven over the
DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in NUL on fds 3 and 4),
so no driver package and no port are needed.

    with Browser.start() as b:
        b.open(Path("leaderboard/site/arithmetic.html"), "#mem=2")
        b.evaluate("document.title"); b.key("Enter"); b.type("3"); b.screenshot(path)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")
KEYS = {"Enter": ("Enter", 13, "\r"), "Tab": ("Tab", 9, ""), " ": ("Space", 32, " ")}


def find_chromium() -> str | None:
    return next((p for b in BINARIES if (p := shutil.which(b))), None)


class Browser:
    def __init__(
        self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int, profile: str
    ) -> None:
        self.proc, self.to_browser, self.from_browser, self.profile = proc, to_browser, from_browser, profile
        self.next_id, self.buffer, self.session = 0, b"", None

    @classmethod
    def start(cls) -> Browser:
        binary = find_chromium()
        if binary is None:
            raise RuntimeError("no Chromium found (apt-get install chromium)")
        profile = tempfile.mkdtemp(prefix="peftrepro-browser-")
        commands_r, commands_w = os.pipe()
        events_r, events_w = os.pipe()

        def fds() -> None:  # in the child: the protocol's fds are 3 (commands in) and 4 (replies out)
            commands, events = os.dup(commands_r), os.dup(events_w)  # above 4: neither clobbers the other
            os.dup2(commands, 3)  # dup2 makes them inheritable (pipes are close-on-exec)
            os.dup2(events, 4)

        proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            preexec_fn=fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_r)
        os.close(events_w)
        return cls(proc, commands_w, events_r, profile)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self.to_browser, self.from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self.buffer += chunk
        raise TimeoutError(method)

    def open(self, page: Path, fragment: str = "") -> None:
        url = page.resolve().as_uri() + fragment
        if self.session is None:
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.send(
                "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
            )["sessionId"]
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            )
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + 30
        while self.evaluate("document.readyState") != "complete" or self.evaluate("location.href") != url:
            if time.monotonic() > deadline:
                raise TimeoutError(f"loading {url}")
            time.sleep(0.05)

    def evaluate(self, expression: str) -> Any:
        reply = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in reply:
            raise RuntimeError(f"{expression}: {reply['exceptionDetails'].get('text')}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 5.0) -> bool:
        """Whether `expression` became truthy within `seconds` (for what a page does in a later task)."""
        deadline = time.monotonic() + seconds
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def key(self, name: str) -> None:
        """Press and release a key in the focused element, as a keyboard would."""
        code, vk, text = KEYS[name]
        down = {"type": "keyDown", "key": name, "code": code, "windowsVirtualKeyCode": vk}
        self.send("Input.dispatchKeyEvent", {**down, **({"text": text} if text else {})})
        self.send(
            "Input.dispatchKeyEvent",
            {"type": "keyUp", "key": name, "code": code, "windowsVirtualKeyCode": vk},
        )

    def type(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: Path) -> int:
        """The whole page as PNG; returns its byte count."""
        height = self.evaluate("document.documentElement.scrollHeight")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": int(height), "deviceScaleFactor": 1, "mobile": False},
        )
        png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(png)
        return len(png)
