"""Runs on a host, not here: `invoke report`'s Jupyter probe (fleet.course.classreport.jupyter_fact).

GET /api (no token: is it answering, which version) and /api/kernelspecs (with the token: what
the server lists), printed as one JSON line. The probe sends this file's text to `python3 -I -`
on stdin, followed by a call of `main` with the address and the token, so the token is never in
a process's arguments. Standard library only; nothing runs on import.
"""
import json
import urllib.request
from typing import Any


def main(base: str, token: str) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    out: dict[str, Any] = {"answering": False}
    try:
        with opener.open(base + "/api", timeout=5) as r:
            out.update(answering=True, version=json.load(r).get("version"))
        req = urllib.request.Request(base + "/api/kernelspecs", headers={"Authorization": "token " + token})
        with opener.open(req, timeout=5) as r:
            specs = json.load(r)
        out["default"] = specs.get("default")
        out["kernels"] = sorted((n, (s.get("spec") or {}).get("display_name", n))
                                for n, s in specs.get("kernelspecs", {}).items())
    except Exception as exc:
        out["error"] = (exc.__class__.__name__ + ": " + str(exc))[:200]
    print(json.dumps(out))
