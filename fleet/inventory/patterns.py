"""Host patterns for --hosts: names, groups, globs, comma lists, `!exclusions`, `&intersections`, `@failed`."""
from __future__ import annotations

from fnmatch import fnmatchcase

from fleet.errors import InputError
from fleet.inventory.model import Inventory

GLOB_CHARS = set("*?[")


def select(inventory: Inventory, pattern: str, failed: list[str] | None = None) -> list[str]:
    """Host names matching a pattern, in inventory order. Raises InputError on unknown names or no match."""
    pattern = (pattern or "").strip()
    if not pattern:
        raise InputError("empty host pattern (try `all`, a group, a host name or a glob like `gpu-*`)", key="--hosts")
    chosen: set[str] = set()
    intersect: list[set[str]] = []
    excluded: set[str] = set()
    terms = [t.strip() for t in pattern.replace(":", ",").split(",") if t.strip()]
    for term in terms:
        if term.startswith("!"):
            excluded |= _expand(inventory, term[1:], failed)
        elif term.startswith("&"):
            intersect.append(_expand(inventory, term[1:], failed))
        else:
            chosen |= _expand(inventory, term, failed)
    if not any(not t.startswith(("!", "&")) for t in terms):
        chosen = set(inventory.hosts)  # only exclusions given: start from everything, as Ansible does
    for subset in intersect:
        chosen &= subset
    chosen -= excluded
    if not chosen:
        raise InputError(f"pattern '{pattern}' matches no host in {inventory.source}", key="--hosts")
    return [name for name in inventory.hosts if name in chosen]


def _expand(inventory: Inventory, term: str, failed: list[str] | None) -> set[str]:
    if term == "all" or term == "*":
        return set(inventory.hosts)
    if term == "@failed":
        if failed is None:
            raise InputError("no previous run is recorded for @failed", key="--hosts")
        return {h for h in failed if h in inventory.hosts}
    if term in inventory.groups:
        return set(inventory.group_hosts(term))
    if term in inventory.hosts:
        return {term}
    if GLOB_CHARS & set(term):
        hosts = {h for h in inventory.hosts if fnmatchcase(h, term)}
        for group in inventory.groups:
            if fnmatchcase(group, term):
                hosts |= set(inventory.group_hosts(group))
        if not hosts:
            raise InputError(f"glob '{term}' matches no host or group in {inventory.source}", key="--hosts")
        return hosts
    raise InputError(f"unknown host or group '{term}' in {inventory.source}", key="--hosts")
