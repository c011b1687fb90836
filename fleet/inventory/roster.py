"""Who has which machine: the course roster.

A roster is a CSV file (header `student,email,ssh_key,host`; only `student` is required) or a
YAML list of the same fields, named by the inventory's `roster:` key (a path beside the
inventory, or the list itself), else found beside the inventory as `<name>.roster.csv` or
`<name>.roster.yml`. It is checked with the inventory, before any host is touched.

Students who name a `host` get it; the others take the remaining machines in the inventory's
order (slot order). A machine no student takes gets a placeholder student named after the host,
so every machine has exactly one student login and one key.
"""
from __future__ import annotations

import base64
import csv
import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import yamlfile
from fleet.errors import InputError, InputErrors
from fleet.inventory.model import Student

FIELDS = ("student", "email", "ssh_key", "host")
SUFFIXES = (".roster.csv", ".roster.yml", ".roster.yaml")
# A student's name names their key file and bundle folder: a plain file name.
STUDENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+")
# Public key types OpenSSH accepts in authorized_keys (ssh-dss is gone from OpenSSH 9.8).
KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
YAML_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["student"],
        "properties": {name: {"type": "string"} for name in FIELDS},
    },
}


@dataclass(frozen=True)
class _Entry:
    fields: dict[str, str]
    where: str


def students(given: Any, inventory_file: Path | None, hosts: list[str]) -> dict[str, Student]:
    """Host name -> its student, for every host. `given` is the inventory's `roster:` value (a
    path, a list, or None to look beside `inventory_file`)."""
    entries = _entries(given, inventory_file)
    return assign(entries, hosts, _roster_name(given, inventory_file))


def find(inventory_file: Path | None) -> Path | None:
    """The roster beside an inventory (`course.yml` -> `course.roster.csv` ...), if there is one."""
    if inventory_file is None:
        return None
    for suffix in SUFFIXES:
        candidate = inventory_file.with_name(inventory_file.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _roster_name(given: Any, inventory_file: Path | None) -> str:
    if isinstance(given, str) and inventory_file is not None:
        return str(inventory_file.parent / given)
    if isinstance(given, list):
        return f"{inventory_file}: roster" if inventory_file else "roster"
    found = find(inventory_file)
    return str(found) if found else "roster"


def _entries(given: Any, inventory_file: Path | None) -> list[_Entry]:
    if isinstance(given, list):
        source = str(inventory_file) if inventory_file else "inventory"
        return [_Entry({k: str(v) for k, v in (item or {}).items()}, f"{source}: roster[{i}]")
                for i, item in enumerate(given)]
    if isinstance(given, str):
        base = inventory_file.parent if inventory_file else Path.cwd()
        path = base / given
        if not path.is_file():
            raise InputError(f"no roster file {path}", file=str(inventory_file) if inventory_file else None,
                             key="roster")
        return read(path)
    found = find(inventory_file)
    return read(found) if found else []


def read(path: Path) -> list[_Entry]:
    """A roster file's entries, each with the file and line it came from."""
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    data, lines = yamlfile.load(path)
    data = data or []
    yamlfile.validate(data, YAML_SCHEMA, path, lines)
    return [_Entry(dict(item), yamlfile.where(path, lines, (i,))) for i, item in enumerate(data)]


def _read_csv(path: Path) -> list[_Entry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the roster ({exc})", file=str(path)) from None
    # Blank lines and lines starting with '#' are comments; line numbers stay the file's own.
    kept = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not kept:
        return []
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in kept))))
    header = [h.strip().lower() for h in rows[0]]
    unknown = [h for h in header if h not in FIELDS]
    if unknown or "student" not in header or len(set(header)) != len(header):
        raise InputError(f"expected a header row with the columns {', '.join(FIELDS)} (student required, each once), "
                         f"got {', '.join(rows[0])}", file=f"{path}:{kept[0][0]}")
    entries = []
    # Not strict: a quoted field may span lines, giving fewer rows than kept lines.
    for (number, _), row in zip(kept[1:], rows[1:], strict=False):
        if len(row) > len(header):
            raise InputError(f"expected at most {len(header)} columns ({', '.join(header)}), got {len(row)}",
                             file=f"{path}:{number}")
        entries.append(_Entry({h: v.strip() for h, v in zip(header, row, strict=False) if v.strip()}, f"{path}:{number}"))
    return entries


def assign(entries: list[_Entry], hosts: list[str], roster: str = "roster") -> dict[str, Student]:
    """Check every entry, give each student a machine, and give every other machine a placeholder."""
    errors: list[InputError] = []
    names: dict[str, str] = {}
    claims: dict[str, _Entry] = {}
    checked: list[tuple[_Entry, dict[str, str]]] = []
    for entry in entries:
        fields, problems = _check(entry, hosts)
        errors += problems
        name = fields.get("student", "")
        if name in names:
            errors.append(InputError(f"student {name!r} is listed twice (first at {names[name]})", file=entry.where,
                                     key="student"))
            continue
        names[name] = entry.where
        host = fields.get("host")
        if host and host in claims:
            errors.append(InputError(f"machine {host!r} is claimed by {claims[host].fields['student']!r} "
                                     f"({claims[host].where}) and by {name!r}: one student per machine",
                                     file=entry.where, key="host"))
            continue
        if host:
            claims[host] = entry
        checked.append((entry, fields))
    free = [h for h in hosts if h not in claims]
    result: dict[str, Student] = {}
    for entry, fields in checked:
        host = fields.get("host") or (free.pop(0) if free else "")
        if not host:
            errors.append(InputError(f"student {fields.get('student')!r} has no machine: the roster names more "
                                     f"students than the inventory has hosts ({len(hosts)})", file=entry.where,
                                     key="student"))
            continue
        result[host] = Student(fields["student"], host, fields.get("email", ""), fields.get("ssh_key", ""), entry.where)
    for host in free:
        placeholder = host if host not in names else f"{host}-student"
        result[host] = Student(placeholder, host)
    if errors:
        raise errors[0] if len(errors) == 1 else InputErrors(errors)
    return {host: result[host] for host in hosts}


def _check(entry: _Entry, hosts: list[str]) -> tuple[dict[str, str], list[InputError]]:
    fields, errors = dict(entry.fields), []

    def fail(key: str, message: str) -> None:
        errors.append(InputError(message, file=entry.where, key=key))

    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        fail(unknown[0], f"unknown field (expected one of: {', '.join(FIELDS)})")
    name = fields.get("student", "")
    if not STUDENT_NAME.fullmatch(name):
        fail("student", f"expected a name of letters, digits, '_', '.', '-' (64 at most, not starting with "
                        f"'.' or '-'), got {name!r}")
    if fields.get("email") and not EMAIL.fullmatch(fields["email"]):
        fail("email", f"expected an email address, got {fields['email']!r}")
    if fields.get("host") and fields["host"] not in hosts:
        fail("host", f"no host {fields['host']!r} in the inventory (hosts: {', '.join(hosts) or 'none'})")
    if fields.get("ssh_key"):
        try:
            fields["ssh_key"] = public_key(fields["ssh_key"])
        except ValueError as exc:
            fail("ssh_key", str(exc))
    return fields, errors


def public_key(text: str) -> str:
    """An OpenSSH public key as `type base64` (its comment dropped), or ValueError saying why not.
    Options are refused: Fleet writes the key's restrictions itself."""
    parts = text.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise ValueError("expected an OpenSSH public key ('ssh-ed25519 AAAA... comment', no options), "
                         f"got {text[:40]!r}")
    kind, blob = parts[0], parts[1]
    try:
        raw = base64.b64decode(blob, validate=True)
        (length,) = struct.unpack(">I", raw[:4])
        inner = raw[4:4 + length].decode("ascii")
    except (ValueError, struct.error, UnicodeDecodeError):
        raise ValueError(f"the {kind} key's data is not valid base64 key data") from None
    if inner != kind:
        raise ValueError(f"the key says {kind} but its data is a {inner or 'broken'} key")
    return f"{kind} {blob}"
