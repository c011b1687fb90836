"""How students reach a host: the SSH tunnel command and the Jupyter URL with its token, one
host at a time (`tunnel`) or as a handout for the class (`handout`, the demo)."""
from __future__ import annotations

import csv
import io
import re
import shlex

from fleet import app
from fleet.errors import InputError

COLUMNS = ["student", "host", "address", "tunnel", "url"]

# What may stand where ssh expects a destination: never an option (no leading '-'), no spaces.
_ADDRESS = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9_.:%\[\]-]*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_destination(session: app.Session, host) -> None:
    where = session.inventory.source
    if not _ADDRESS.fullmatch(host.address or ""):
        raise InputError(f"expected a host name or an IP address, got {host.address!r}", file=where,
                         key=f"hosts.{host.name}.address")
    if host.user is not None and not _USER.fullmatch(host.user):
        raise InputError(f"expected a user name (letters, digits, '_', '.', '-'; not starting with '-'), "
                         f"got {host.user!r}", file=where, key=f"hosts.{host.name}.user")


def parse_local_port(value: object) -> int | None:
    """--local-port: a whole number from 1 to 65535."""
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise InputError(f"expected a port number from 1 to 65535, got {str(value)!r}", key="--local-port")
    return int(text)


def access(session: app.Session, name: str, local: int | None = None) -> dict:
    from fleet.engine.compile import host_vars

    host = session.inventory.hosts[name]
    check_destination(session, host)
    values = {k: v.value for k, v in host_vars(session.inventory, name, session.roleset, {}, session.secrets).items()}
    port = int(values["jupyter_port"])
    local = local or port
    ssh = ["ssh", "-N", "-L", f"{local}:localhost:{port}"]
    if host.key:
        ssh += ["-i", host.key]
    if host.port and host.port != 22:
        ssh += ["-p", str(host.port)]
    # `--`: whatever follows is the destination, never an option, even if a check above is loosened.
    ssh += ["--", f"{host.user}@{host.address}" if host.user else host.address]
    auth = values.get("jupyter_auth", "token")
    url = f"http://localhost:{local}/lab" + (f"?token={values['jupyter_token']}" if auth == "token" else "")
    return {"host": name, "student": values.get("student", name), "address": host.address,
            "tunnel": shlex.join(ssh), "url": url, "argv": ssh}



def handout(session: app.Session, hosts: str, fmt: str) -> tuple[str, int]:
    """One row per selected host, as CSV or a Markdown table; the text and its number of rows."""
    if fmt not in ("csv", "md"):
        raise InputError(f"expected csv or md, got {fmt!r}", key="--format")
    rows = [access(session, name) for name in session.select(hosts)]
    _remember(session, [row["host"] for row in rows])
    buffer = io.StringIO()
    if fmt == "csv":
        writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        buffer.write("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n")
        for row in rows:
            buffer.write("| " + " | ".join(f"`{row[c]}`" if c in ("tunnel", "url") else str(row[c]) for c in COLUMNS) + " |\n")
    return buffer.getvalue(), len(rows)


def _remember(session: app.Session, names: list[str]) -> None:
    """These machines are students' now: `bake` never images them (fleet.engine.builder)."""
    from fleet.engine import state

    ids = [str(session.inventory.hosts[n].vars.get("instance_id") or "") for n in names]
    state.record_handout(session.inventory.name, [*names, *filter(None, ids)])
