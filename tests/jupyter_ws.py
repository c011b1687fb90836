"""A small Jupyter client for the tests: REST plus the kernel websocket, spoken through an
SSH tunnel exactly as a student's browser would."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import requests
import websocket

from tests.fixtures import free_port, stop, wait_port


@contextmanager
def ssh_tunnel(host, remote_port: int) -> Iterator[int]:
    """`ssh -N -L local:localhost:remote` to a test host over its admin login; yields the local port."""
    local = free_port()
    with forwarding(["ssh", "-N", "-L", f"{local}:localhost:{remote_port}", "-i", str(host.key),
                     f"{host.user}@{host.address}"], local):
        yield local


@contextmanager
def forwarding(argv: list[str], local: int) -> Iterator[None]:
    """Run an `ssh -N -L local:...` command line (quiet, no host-key memory) until the block ends."""
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes", "-o", "IdentitiesOnly=yes"]
    proc = subprocess.Popen([argv[0], *options, *argv[1:]], stdin=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", local)
        yield
    finally:
        stop(proc)


class Jupyter:
    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.auth = {"Authorization": f"token {token}"}

    def get(self, path: str, auth: bool = True, **kw) -> requests.Response:
        return requests.get(self.base + path, headers=self.auth if auth else {}, timeout=30, **kw)

    def post(self, path: str, body: dict | None = None) -> requests.Response:
        return requests.post(self.base + path, headers=self.auth, json=body or {}, timeout=30)

    def start_kernel(self, name: str = "python3") -> str:
        response = self.post("/api/kernels", {"name": name})
        response.raise_for_status()
        return response.json()["id"]

    def shutdown(self, kernel: str) -> None:
        requests.delete(f"{self.base}/api/kernels/{kernel}", headers=self.auth, timeout=30)

    def execute(self, kernel: str, code: str, timeout: float = 120) -> str:
        """Run code in a kernel over its websocket; return the stream and result text, raise on error."""
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.base.rsplit(':', 1)[1]}/api/kernels/{kernel}/channels",
                                         header=[f"Authorization: token {self.token}"], timeout=timeout)
        try:
            msg_id = uuid.uuid4().hex
            ws.send(json.dumps({
                "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                           "msg_type": "execute_request", "version": "5.3"},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            output, deadline = [], time.monotonic() + timeout
            while time.monotonic() < deadline:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    output.append(content["text"])
                elif kind in ("execute_result", "display_data"):
                    output.append(content["data"].get("text/plain", ""))
                elif kind == "error":
                    raise RuntimeError(f"{content['ename']}: {content['evalue']}")
                elif kind == "status" and content["execution_state"] == "idle":
                    return "".join(output)
            raise TimeoutError(f"no idle status within {timeout} s")
        finally:
            ws.close()

    def run_notebook(self, path: str, kernel_name: str = "python3") -> list[str]:
        """Execute every code cell of a notebook stored on the server; return each cell's output."""
        notebook = self.get(f"/api/contents/{path}").json()["content"]
        kernel = self.start_kernel(kernel_name)
        try:
            return [self.execute(kernel, "".join(cell["source"])) for cell in notebook["cells"]
                    if cell["cell_type"] == "code"]
        finally:
            self.shutdown(kernel)
