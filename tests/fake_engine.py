"""A fake Docker engine: just enough of the Engine HTTP API, on a unix socket, to drive the docker
runner's error paths (missing image, start failure, interrupt) without a real engine."""

from __future__ import annotations

import json
import re
import socketserver
import struct
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

API = "1.41"


class Engine:
    """What the fake engine does; tests flip the switches and read `calls`."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, Any]] = {}
        self.fail_start = False
        self.block_logs = False  # the run container "runs" until it is stopped
        self.calls: list[str] = []
        self.stopped = threading.Event()
        self.created = 0
        self.containers: list[dict[str, Any]] = []  # the create request of each container

    def add_image(self, ref: str, digest: str | None = None) -> None:
        self.images[ref] = {
            "Id": "sha256:" + "1" * 64,
            "RepoDigests": [digest] if digest else [],
            "RepoTags": [ref],
        }


class Handler(BaseHTTPRequestHandler):
    engine: Engine

    def log_message(self, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "fake"

    def reply(self, code: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"null") if n else None

    def route(self, method: str) -> None:
        path = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
        e = self.engine
        e.calls.append(f"{method} {path}")
        if path == "/_ping":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
        elif path == "/version":
            self.reply(200, {"ApiVersion": API, "Version": "0.0-fake", "MinAPIVersion": "1.24"})
        elif path == "/info":
            self.reply(200, {"Runtimes": {"runc": {}}})
        elif m := re.fullmatch(r"/images/(.+)/json", path):
            image = e.images.get(m.group(1))
            self.reply(200, image) if image else self.reply(404, {"message": f"No such image: {m.group(1)}"})
        elif path == "/images/create":
            self.reply(404, {"message": "pull access denied: no registry here"})
        elif path == "/containers/create":
            e.containers.append(self.body())
            e.created += 1
            self.reply(201, {"Id": f"c{e.created}", "Warnings": []})
        elif m := re.fullmatch(r"/containers/(c[0-9]+)/json", path):
            self.reply(200, {"Id": m.group(1), "Config": {"Tty": False}, "State": {"Status": "created"}})
        elif m := re.fullmatch(r"/containers/(c[0-9]+)/start", path):
            if e.fail_start:
                self.reply(500, {"message": "could not select device driver with capabilities: [[gpu]]"})
            else:
                self.reply(204)
        elif m := re.fullmatch(r"/containers/(c[0-9]+)/logs", path):
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.end_headers()
            line = f"log line from {m.group(1)}\n".encode()
            self.wfile.write(struct.pack(">BxxxL", 2, len(line)) + line)
            self.wfile.flush()
            if e.block_logs and m.group(1) != "c1":  # c1 is the fetch container
                e.stopped.wait(60)
        elif m := re.fullmatch(r"/containers/(c[0-9]+)/wait", path):
            if e.block_logs and m.group(1) != "c1":
                e.stopped.wait(60)
            self.reply(200, {"StatusCode": 143 if e.stopped.is_set() else 0})
        elif m := re.fullmatch(r"/containers/(c[0-9]+)/stop", path):
            e.stopped.set()
            self.reply(204)
        elif m := re.fullmatch(r"/containers/(c[0-9]+)", path):
            self.reply(204)
        else:
            self.reply(404, {"message": f"fake engine: no route {method} {path}"})

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def do_HEAD(self) -> None:
        self.route("HEAD")


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(socket_path: Path) -> tuple[Engine, UnixServer]:
    engine = Engine()
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server = UnixServer(str(socket_path), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return engine, server
