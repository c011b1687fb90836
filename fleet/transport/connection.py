"""`connect`: a connection kept open between runs by the SSH keeper (fleet.transport.keeper,
like OpenSSH's ControlPersist) or, with FLEET_SSH_PERSIST=0, a direct one (fleet.transport.ssh)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fleet.inventory.model import Host
from fleet.transport.base import Connection, ConnectOptions, persist_seconds


def connect(host: Host, options: ConnectOptions, state: Path) -> Connection:
    """A connection for one host; open() logs in, or reuses the keeper's open connection. `state`
    is the project's state folder (fleet.engine.state), where the keeper lives."""
    if host.sudo_password and not options.sudo_password:  # the inventory's ansible_become_password
        options = replace(options, sudo_password=host.sudo_password)
    persist = persist_seconds()
    if persist:
        from fleet.transport.keeper import KeptConnection
        return KeptConnection(host, options, state, persist)
    from fleet.transport.ssh import SSHConnection  # paramiko only where a connection is made in this process
    return SSHConnection(host, options)
