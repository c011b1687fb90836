"""How students reach their machine: the SSH tunnel command and the Jupyter URL with its token,
one host at a time (`tunnel`), as the instructor's class-wide handout (`handout`), or as one
folder per student holding only that student's key, commands and URL (`handout --bundle`).

Every row names the student's own key and the course user, never the admin login or its key:
the student's key opens that student's machine only (roles/jupyter/login.py).
"""
from __future__ import annotations

import csv
import io
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path

from fleet import app, atomic
from fleet.engine import state
from fleet.errors import InputError

COLUMNS = ["student", "email", "host", "address", "login", "tunnel", "url"]
BUNDLE_KEY = "id_ed25519"

# What may stand where ssh expects a destination: never an option (no leading '-'), no spaces.
_ADDRESS = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9_.:%\[\]-]*")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_destination(session: app.Session, host, login: str) -> None:
    where = session.inventory.source
    if not _ADDRESS.fullmatch(host.address or ""):
        raise InputError(f"expected a host name or an IP address, got {host.address!r}", file=where,
                         key=f"hosts.{host.name}.address")
    if host.user is not None and not _USER.fullmatch(host.user):
        raise InputError(f"expected a user name (letters, digits, '_', '.', '-'; not starting with '-'), "
                         f"got {host.user!r}", file=where, key=f"hosts.{host.name}.user")
    if not _USER.fullmatch(login):
        raise InputError(f"expected a user name (letters, digits, '_', '.', '-'; not starting with '-'), "
                         f"got {login!r}", file=where, key="course_user")


def parse_local_port(value: object) -> int | None:
    """--local-port: a whole number from 1 to 65535."""
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise InputError(f"expected a port number from 1 to 65535, got {str(value)!r}", key="--local-port")
    return int(text)


def access(session: app.Session, name: str, local: int | None = None, key_path: str | None = None) -> dict:
    """How the host's student reaches its Jupyter. `key_path` replaces where the student's private key
    is (a bundle names its own copy); a student who gave their own public key uses their usual key."""
    host = session.inventory.hosts[name]
    values = session.values(name)
    login = str(values["course_user"])
    check_destination(session, host, login)
    student = session.inventory.students.get(name)
    own_key = bool(student and student.ssh_key)
    key = None if own_key else (key_path or str(session.secrets.students.private_path(str(values["student"]))))
    port = int(values["jupyter_port"])
    local = local or port
    ssh = ["ssh", "-N", "-L", f"{local}:localhost:{port}"]
    if key:
        ssh += ["-i", key]
    if host.port and host.port != 22:
        ssh += ["-p", str(host.port)]
    # `--`: whatever follows is the destination, never an option, even if a check above is loosened.
    ssh += ["--", f"{login}@{host.address}"]
    auth = values.get("jupyter_auth", "token")
    url = f"http://localhost:{local}/lab" + (f"?token={values['jupyter_token']}" if auth == "token" else "")
    return {"host": name, "student": values["student"], "email": values.get("student_email", ""),
            "address": host.address, "login": login, "tunnel": shlex.join(ssh), "url": url, "argv": ssh,
            "own_key": own_key, "port": host.port or 22}


def handout(session: app.Session, hosts: str, fmt: str) -> tuple[str, int]:
    """The instructor's class-wide handout (every student's row and token), as CSV or a Markdown
    table; the text and its number of rows. Students get `bundle`s, not this."""
    if fmt not in ("csv", "md"):
        raise InputError(f"expected csv or md, got {fmt!r}", key="--format")
    names = session.select(hosts)
    rows = [access(session, name) for name in names]
    _remember(session, names)
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


def bundle(session: app.Session, hosts: str, directory: str) -> list[tuple[str, Path]]:
    """One folder per student under `directory` (mode 0700): their private key (none when they gave
    their own public key), tunnel commands for Linux/macOS and Windows, their URL and a how-to. A
    folder holds one student's credentials only; it is written whole and renamed into place."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = session.select(hosts)
    rows = [access(session, name, key_path=BUNDLE_KEY) for name in names]
    _remember(session, names)
    written = []
    for row in rows:
        files = _bundle_files(session, row)
        target = root / row["student"]
        scratch = Path(tempfile.mkdtemp(prefix=f".{row['student']}.", dir=root))
        try:
            for name, (content, mode) in files.items():
                atomic.replace(scratch / name, content, mode=mode)
            old = root / f".{row['student']}.old"
            if target.is_symlink() or target.is_file():
                target.unlink()
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.rename(target, old)
            os.rename(scratch, target)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        written.append((row["student"], target))
    return written


def _bundle_files(session: app.Session, row: dict) -> dict[str, tuple[str | bytes, int]]:
    argv = row["argv"]
    files: dict[str, tuple[str | bytes, int]] = {}
    if not row["own_key"]:
        files[BUNDLE_KEY] = (session.secrets.students.private_path(row["student"]).read_bytes(), 0o600)
    pinned = _known_host_lines(row)
    options: list[str] = []
    if pinned:   # the machine's key as Fleet recorded it: the student's ssh checks it, no first-use prompt
        files["known_hosts"] = (pinned, 0o600)
        options = ["-o", "UserKnownHostsFile=known_hosts", "-o", "StrictHostKeyChecking=yes"]
    unix = ["ssh", *options, *argv[1:]]
    windows = [("%~dp0" + BUNDLE_KEY) if a == BUNDLE_KEY else
               ("UserKnownHostsFile=%~dp0known_hosts" if a == "UserKnownHostsFile=known_hosts" else a)
               for a in [*options, *argv[1:]]]
    files["tunnel.sh"] = ("#!/bin/sh\n# Opens the tunnel to your Jupyter; leave it running, then open url.txt.\n"
                          'cd "$(dirname "$0")" || exit 1\n'
                          + ("chmod 600 " + BUNDLE_KEY + "\n" if not row["own_key"] else "")
                          + "exec " + shlex.join(unix) + "\n", 0o700)
    files["tunnel.cmd"] = ("@echo off\r\nrem Opens the tunnel to your Jupyter with Windows' own OpenSSH; leave it open, "
                           "then open url.txt.\r\n"
                           + "ssh.exe " + " ".join(f'"{a}"' if "%" in a or " " in a else a for a in windows) + "\r\n", 0o600)
    files["url.txt"] = (row["url"] + "\n", 0o600)
    files["README.txt"] = (_howto(row, bool(pinned)), 0o600)
    return files


def _known_host_lines(row: dict) -> str:
    """The lines of the project's known_hosts (recorded on first contact) for this host's address."""
    path = state.state_dir() / "known_hosts"
    if not path.exists():
        return ""
    names = {row["address"], f"[{row['address']}]:{row['port']}"}
    lines = [line for line in path.read_text().splitlines()
             if line.split(" ", 1)[0] and set(line.split(" ", 1)[0].split(",")) & names]
    return "\n".join(lines) + "\n" if lines else ""


def _howto(row: dict, pinned: bool) -> str:
    key = ("your own SSH key (the public key you gave the instructor)" if row["own_key"]
           else f"the key in this folder ({BUNDLE_KEY}); keep it private, it is yours alone")
    return (f"Your Jupyter: {row['student']}\n\n"
            f"Your machine is {row['address']}; you log in as {row['login']} with {key}.\n"
            "It opens one thing: the tunnel to your own Jupyter.\n\n"
            "1. Open the tunnel and leave it running:\n"
            "   Linux or macOS: sh tunnel.sh\n"
            "   Windows 10/11 (built-in OpenSSH): double-click tunnel.cmd\n"
            f"   (the command itself: {row['tunnel']})\n"
            "2. Open the address in url.txt in your browser. It holds your token: do not share it.\n\n"
            + ("The machine's own key is in known_hosts: ssh checks it and refuses an impostor.\n" if pinned else
               "The first time, ssh asks you to confirm the machine's key fingerprint; your instructor can tell\n"
               "you what it should be.\n"))


def _remember(session: app.Session, names: list[str]) -> None:
    """These machines are students' now: `bake` never images them (fleet.course.imaging.builder)."""
    ids = [str(session.inventory.hosts[n].vars.get("instance_id") or "") for n in names]
    state.record_handout(session.inventory.name, [*names, *filter(None, ids)])
