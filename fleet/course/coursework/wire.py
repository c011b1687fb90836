"""How the controller talks to hostside.py on a host: one root script through the connection
Fleet already has, which hands the program to `python3 -I` run as the course user (runuser,
from `/`), with the parameters and any payload on stdin, never in arguments."""
from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

from fleet.shell import q

PROGRAM = (Path(__file__).resolve().parent / "hostside.py").read_text()


class HostSideError(Exception):
    """hostside.py did not answer as expected (no trailer, a damaged stream)."""


def script(user: str, params: dict[str, Any], payload: bytes = b"") -> tuple[str, str]:
    """The root script and the mark its output is framed with."""
    mark = "FLEET-WORK-" + secrets.token_hex(8)
    end = "__FLEET_WORK_END_" + secrets.token_hex(8)
    body = json.dumps(params | {"mark": mark})
    if payload:
        encoded = base64.b64encode(payload).decode()
        body += "\n" + "\n".join(encoded[i:i + 76 * 1000] for i in range(0, len(encoded), 76 * 1000))
    text = (f"set -u\nexport LC_ALL=C.UTF-8\n"
            # A user that does not exist has no work: said plainly, not as a failure.
            f"if ! getent passwd {q(user)} >/dev/null; then echo {mark}-NOUSER; exit 0; fi\n"
            f"cd / && exec runuser -u {q(user)} -- python3 -I -c {q(PROGRAM)} <<'{end}'\n{body}\n{end}\n")
    return text, mark


def parse(output: str, mark: str) -> tuple[dict[str, Any], bytes]:
    """(the trailer, the decoded payload). A user that does not exist gives {"nouser": True}."""
    if f"{mark}-NOUSER" in output:
        return {"nouser": True}, b""
    begin = output.find(f"{mark}-BEGIN\n")
    trailer = output.rfind(f"\n{mark}-TRAILER ")
    if begin < 0 or trailer < begin:
        raise HostSideError(f"no answer from the host's reader: {output.strip()[-400:] or 'no output'}")
    lines = output[begin + len(mark) + 7:trailer].split()
    try:
        payload = b"".join(base64.b64decode(line, validate=True) for line in lines)
    except ValueError:
        raise HostSideError("the host's stream is not base64: " + output[begin:trailer][-300:]) from None
    try:
        result = json.loads(output[trailer + len(mark) + 10:].strip().splitlines()[0])
    except (ValueError, IndexError):
        raise HostSideError("the host's trailer is not JSON") from None
    if not isinstance(result, dict):
        raise HostSideError("the host's trailer is not a JSON object")
    return result, payload
