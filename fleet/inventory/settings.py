"""Connection settings: Ansible's `ansible_*` keys and Fleet's native `address/user/port/key`.

They may be given at every level (all, group, host, group_vars/ and host_vars/ files) and
resolve per host through the same precedence as every other variable. Where Ansible knows
two names for one setting, the later name in its connection plugin wins whatever the level
(`ansible_ssh_user` over `ansible_user`), as in Ansible itself.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from fleet.errors import InputError

# Fleet's field -> the names Ansible reads for it, the last one defined winning.
ALIASES: dict[str, tuple[str, ...]] = {
    "address": ("ansible_host", "ansible_ssh_host"),
    "user": ("ansible_user", "ansible_ssh_user"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "key": ("ansible_private_key_file", "ansible_ssh_private_key_file"),
    "sudo_password": ("ansible_become_password", "ansible_become_pass", "ansible_sudo_pass"),
}
NATIVE = {"address": "ansible_host", "user": "ansible_user", "port": "ansible_port", "key": "ansible_ssh_private_key_file"}
PORTS = set(ALIASES["port"])
STRINGS = {name for field in ("address", "user", "key", "sudo_password") for name in ALIASES[field]}
# Read and honoured without being a connection field.
UNDERSTOOD = {"ansible_become", "ansible_connection", "ansible_become_method", "ansible_become_user",
              "ansible_group_priority"}
PASSWORD_LOGIN = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password")
KNOWN = {name for names in ALIASES.values() for name in names} | UNDERSTOOD


class Setting(NamedTuple):
    value: Any
    file: str        # "inv.yml:12"
    key: str         # "all.vars.ansible_user"

    @property
    def source(self) -> str:
        return f"{self.file} {self.key}"


def is_setting(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("ansible_")


def check_value(key: str, value: Any, file: str, where: str) -> None:
    """Per level, before anything is resolved: a bad port is refused even where a host overrides it."""
    if key in PORTS:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise InputError(f"expected a port number (an integer in 1..65535), got {value!r}", file=file, key=where)
    elif key in STRINGS:
        if not isinstance(value, str) or not value:
            raise InputError(f"expected a non-empty string, got {value!r}", file=file, key=where)
        if "{{" in value or "{%" in value:
            raise InputError("Jinja2 in a connection setting is not supported (write the value itself)",
                             file=file, key=where)


def resolve(levels: list[dict[str, Setting]]) -> dict[str, Setting]:
    merged: dict[str, Setting] = {}
    for level in levels:
        merged.update(level)
    return merged


def fields(host: str, merged: dict[str, Setting]) -> dict[str, Setting]:
    """Fleet's connection fields for one host, after refusing what Fleet cannot honour."""
    _refuse(host, merged)
    found: dict[str, Setting] = {}
    for field, names in ALIASES.items():
        for name in names:
            if name in merged:
                found[field] = merged[name]
    return found


def unused(merged: dict[str, Setting]) -> dict[str, Setting]:
    """`ansible_*` keys Fleet reads but has no use for (ansible_python_interpreter, ...)."""
    return {k: v for k, v in merged.items() if k not in KNOWN}


def _refuse(host: str, merged: dict[str, Setting]) -> None:
    def fail(name: str, message: str) -> None:
        raise InputError(f"{message} (host {host})", file=merged[name].file, key=merged[name].key)

    connection = merged.get("ansible_connection")
    if connection is not None and connection.value not in ("ssh", "paramiko", "smart"):
        why = ("Fleet reaches every host over SSH; give the machine's address instead"
               if connection.value == "local" else "Fleet connects over SSH only")
        fail("ansible_connection", f"ansible_connection: {connection.value} is not supported: {why}")
    become = merged.get("ansible_become")
    if become is not None and str(become.value).lower() in ("false", "no", "0", "off"):
        fail("ansible_become", "ansible_become: false is not supported: Fleet runs every change as root through sudo")
    method = merged.get("ansible_become_method")
    if method is not None and method.value != "sudo":
        fail("ansible_become_method", f"ansible_become_method: {method.value} is not supported: Fleet uses sudo")
    user = merged.get("ansible_become_user")
    if user is not None and user.value != "root":
        fail("ansible_become_user", f"ansible_become_user: {user.value} is not supported: Fleet's scripts run as root "
                                    "and switch to course users themselves")
    for name in PASSWORD_LOGIN:
        if name in merged:
            fail(name, f"{name}: SSH password logins are not supported: Fleet logs in with a key "
                       "(ansible_ssh_private_key_file) or your SSH agent")
