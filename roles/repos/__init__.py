"""Course repositories: clone, update clean checkouts to the course ref, keep student work."""
from __future__ import annotations

from pathlib import PurePosixPath

from fleet.engine.git import Git
from fleet.engine.roles import RoleContext
from fleet.engine.steps import Apt, Step
from fleet.inventory.variables import HostVars

ITEM_KEYS = {"url", "dest", "ref"}


def steps(v: HostVars, ctx: RoleContext) -> list:
    items: list[Step] = [Apt(("git",), cache_max_age=v.apt_cache_max_age, lock_timeout=v.apt_lock_timeout)]
    for index, repo in enumerate(v.repos_list):
        key = f"repos_list[{index}]"
        unknown = set(repo) - ITEM_KEYS
        if unknown:
            raise ctx.fail(f"{key}.{sorted(unknown)[0]}", f"unknown key (expected {', '.join(sorted(ITEM_KEYS))})")
        if not isinstance(repo.get("url"), str) or not repo["url"]:
            raise ctx.fail(f"{key}.url", "expected the repository's URL")
        dest = repo.get("dest") or PurePosixPath(repo["url"].rstrip("/")).stem
        if not isinstance(dest, str) or dest.startswith("/") or ".." in PurePosixPath(dest).parts:
            raise ctx.fail(f"{key}.dest", f"expected a folder inside {v.repos_base} (no leading '/', no '..'), got {dest!r}")
        ref = str(repo.get("ref") or "main")
        items.append(Git(repo["url"], f"{v.repos_base}/{dest}", ref, user=v.repos_user, resolver=ctx.resolver))
    return items
