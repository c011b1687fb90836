"""The controller-side phase: variables, specs, templates and steps for every selected host,
all checked before a single connection is opened."""
from __future__ import annotations

import functools
import getpass
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from fleet.engine import pylock
from fleet.engine.git import RefResolver
from fleet.engine.roles import PROJECT, HostPlan, RoleContext, RoleSet, Templates
from fleet.engine.secrets import CourseSecrets, Masker
from fleet.engine.pylock import LockedVenv
from fleet.engine.steps import Apt, Handler, Pip, Step, Verify
from fleet.engine.steps.packages import UV_VENV, UvInstall
from fleet.errors import InputError, InputErrors
from fleet.inventory.model import Host, Inventory
from fleet.inventory.variables import HostVars, Var, inventory_layers, merge, render


def host_vars(inventory: Inventory, name: str, roleset: RoleSet, overrides: dict[str, object],
              secrets: CourseSecrets) -> dict[str, Var]:
    host = inventory.hosts[name]
    builtin = {"inventory_hostname": name, "host_address": host.address, "course": inventory.name,
               **student_vars(inventory, name, secrets)}
    layers = [("built-in", builtin)] + roleset.default_layers() + inventory_layers(inventory, host)
    layers.append(("--set", overrides))
    functions = {"host_secret": partial(secrets.host_secret, name), "argon2": partial(secrets.argon2_hash, name)}
    return render(merge(layers), functions)


def mask_secrets(masker: Masker, roleset: RoleSet, values: dict[str, Any]) -> None:
    """The one rule of what is secret among a host's values: a knob a role's spec marks `secret`
    (every role's, used by this host or not), and any value whose name says token, password or
    secret (fleet.engine.secrets.SECRET_NAME: inventory vars no spec describes)."""
    masker.add_vars(values)
    for role in roleset.roles.values():
        for knob, rule in role.spec.items():
            if rule.get("secret") and values.get(knob):
                masker.add(values[knob])


def student_vars(inventory: Inventory, name: str, secrets: CourseSecrets) -> dict[str, str]:
    """The host's student (fleet/inventory/roster.py) and the public key that opens their login."""
    student = inventory.students.get(name)
    if student is None:  # an inventory built in memory without a roster check
        return {"student": name, "student_email": "", "student_key": secrets.students.public_key(name)}
    key = student.ssh_key or secrets.students.public_key(student.name)
    return {"student": student.name, "student_email": student.email, "student_key": key}


def login_user(host: Host) -> str:
    """The user Fleet logs in as: the inventory's, else ~/.ssh/config's, else the local login (as Fabric does)."""
    if host.user:
        return host.user
    config = _ssh_config()
    found = config.lookup(host.address).get("user") if config is not None else None
    return found or getpass.getuser()


@functools.lru_cache(maxsize=1)
def _ssh_config() -> Any:   # paramiko.SSHConfig | None (paramiko ships no types)
    """~/.ssh/config, parsed once per process (compile asks for every host)."""
    path = Path("~/.ssh/config").expanduser()
    if not path.is_file():
        return None
    import paramiko

    return paramiko.SSHConfig.from_path(str(path))


def check_course_user(host: Host, values: HostVars, merged: dict[str, Var]) -> None:
    """Students log in as the course user with their own key: it must not be the admin login (which
    can sudo, and whose key is the instructor's) nor root."""
    user, source = values.course_user, merged["course_user"].source
    if user == "root":
        raise InputError("the course user cannot be root: students get this login", file=source, key="course_user")
    admin = login_user(host)
    if user == admin:
        raise InputError(f"the course user {user!r} is also the SSH login Fleet uses on host {host.name} "
                         f"(it can sudo and is reached with the instructor's key); students need a login of "
                         f"their own: set course_user to another name (default: student)", file=source,
                         key="course_user")


def compile_plans(inventory: Inventory, hosts: list[str], *, roleset: RoleSet, overrides: dict[str, object],
                  only_roles: list[str] | None, secrets: CourseSecrets, masker: Masker,
                  resolver: RefResolver | None = None, templates: Templates | None = None,
                  use_lock: bool = True) -> dict[str, HostPlan]:
    """Build every host's plan, or raise one InputErrors listing everything wrong. With a course
    lock beside the inventory (fleet/engine/pylock.py), its Pip steps install exactly that."""
    resolver = resolver or RefResolver()
    templates = templates or Templates(roleset.template_dirs())
    if only_roles:
        roleset.check_names(only_roles, "--roles")
    plans: dict[str, HostPlan] = {}
    errors: list[InputError] = []
    peers: dict[str, HostVars] = {}

    def peer_vars(other: str) -> HostVars:
        if other not in peers:
            peers[other] = HostVars.from_merged(host_vars(inventory, other, roleset, overrides, secrets))
        return peers[other]
    for name in hosts:
        host = inventory.hosts[name]
        if host.key and not os.access(Path(host.key).expanduser(), os.R_OK):
            origin = host.origins["key"]
            errors.append(InputError(f"cannot read the SSH key file {host.key}", file=origin.file, key=origin.key))
        try:
            merged = host_vars(inventory, name, roleset, overrides, secrets)
            all_roles = list(merged["roles"].value or [])
            roleset.check_names(all_roles, merged["roles"].source)
            roles = all_roles
            if only_roles:
                roles = [r for r in all_roles if r in only_roles] if all_roles else list(only_roles)
            problems = roleset.validate(name, list(dict.fromkeys(roles + all_roles)), merged)
            if problems:
                errors += problems
                continue
            values = HostVars.from_merged(merged)
            check_course_user(host, values, merged)
            mask_secrets(masker, roleset, values)
            if host.sudo_password:
                masker.add(host.sudo_password)
            plans[name] = _role_steps(name, inventory.hosts[name], values, roles, all_roles, roleset, templates,
                                      resolver, secrets, inventory, peer_vars)
            for _, step in plans[name].steps:   # e.g. a repository URL's password
                for value in step.secrets():
                    masker.add(value)
        except InputErrors as exc:
            errors += exc.errors
        except InputError as exc:
            errors.append(exc)
    errors += _cross_host_checks(inventory, plans, roleset)
    if errors:
        unique = list({str(e): e for e in errors}.values())
        raise unique[0] if len(unique) == 1 else InputErrors(unique)
    lock_path = pylock.path_for(inventory.source, PROJECT)
    locked = pylock.load(lock_path) if use_lock else None
    if locked is not None:
        attach_lock(plans, locked, lock_path, every_host=set(hosts) == set(inventory.hosts))
    return plans


def _cross_host_checks(inventory: Inventory, plans: dict[str, HostPlan], roleset: RoleSet) -> list[InputError]:
    """A role may define `check_hosts(inventory, {host: vars})` for rules that span hosts (one cluster per host)."""
    errors: list[InputError] = []
    for role in roleset.roles.values():
        using = {n: p.vars for n, p in plans.items() if role.name in (p.vars.get("roles") or [])}
        check = getattr(role.module, "check_hosts", None) if using else None
        if check:
            errors += check(inventory, using)
    return errors


def _role_steps(name: str, host: Host, values: HostVars, roles: list[str], all_roles: list[str], roleset: RoleSet,
                templates: Templates, resolver: RefResolver, secrets: CourseSecrets,
                inventory: Inventory | None = None,
                peer_vars: Callable[[str], HostVars] | None = None) -> HostPlan:
    """Steps and verifications of the selected roles; handlers of all the host's roles, so a
    `--roles mxnet` run that changes the venv still restarts the jupyter role's server."""
    plan = HostPlan(host=host, vars=values, roles=roles)
    for role in dict.fromkeys(roles + all_roles):
        ctx = RoleContext(role=role, vars=values, templates=templates, resolver=resolver, host=name, secrets=secrets,
                          inventory=inventory, peer_vars=peer_vars)
        try:
            items = roleset.roles[role].module.steps(values, ctx)
        except InputError as exc:
            where = exc.file or f"roles/{role}"
            raise InputError(f"{exc.detail} (host {name})", file=where, key=exc.key) from None
        for item in items:
            if isinstance(item, Handler):
                plan.handlers.append(item)
            elif role not in roles:
                continue
            elif isinstance(item, Verify):
                plan.verifies.append((role, item))
            elif isinstance(item, Step):
                plan.steps.append((role, item))
            else:
                raise TypeError(f"roles/{role}: steps() returned {item!r}")
    _installer(plan, values)
    handler_names = {h.name for h in plan.handlers}
    for role, step in plan.steps:
        for wanted in step.notify:
            if wanted not in handler_names:
                raise InputError(f"step {step.name!r} notifies unknown handler {wanted!r}", file=f"roles/{role}")
    return plan


def _installer(plan: HostPlan, values: HostVars) -> None:
    """Every Pip step installs with the course's python_installer; with uv, a step that puts uv in
    place (UvInstall: from its locked wheel, or with pip into a venv of its own) comes before the
    host's first Pip step."""
    pips = [i for i, (_, step) in enumerate(plan.steps) if isinstance(step, Pip)]
    for _, step in plan.steps:
        if isinstance(step, (Pip, Apt)):
            step.source = values.package_source
    if not pips or values.python_installer != "uv":
        return
    for i in pips:
        pip = plan.steps[i][1]
        if isinstance(pip, Pip):   # it is: pips holds Pip steps only (this tells the type checker)
            pip.installer = "uv"
    role = plan.steps[pips[0]][0]
    plan.steps.insert(pips[0], (role, UvInstall(UV_VENV, [f"uv=={values.uv_version}"], source=values.package_source)))


def wanted_packages(steps: Iterable[Step]) -> dict[str, list[str]]:
    """Venv -> every requirement the given Pip steps ask for (sorted, each once)."""
    found: dict[str, set[str]] = {}
    for step in steps:
        if isinstance(step, Pip):
            found.setdefault(step.venv, set()).update(step.packages)
    return {venv: sorted(packages) for venv, packages in found.items()}


def attach_lock(plans: dict[str, HostPlan], locked: dict[str, LockedVenv], path: Path, every_host: bool) -> None:
    """Give each host's Pip steps the course lock (the first step of a venv installs it, the others
    are covered), after refusing a lock that is stale for what these hosts want."""
    wants = wanted_packages(step for plan in plans.values() for _, step in plan.steps)
    for venv, packages in sorted(wants.items()):
        have = locked.get(venv)
        new = sorted(set(packages) - set(have.wants if have else ()))
        dropped = sorted(set(have.wants) - set(packages)) if have and every_host else []
        if new or dropped:
            what = "; ".join(part for part in (f"the roles now want {', '.join(new)}" if new else "",
                                               f"no longer want {', '.join(dropped)}" if dropped else "") if part)
            raise InputError(f"the lock is stale for {venv}: {what}; run `invoke lock` to update it (then commit "
                             f"{path.name})", file=str(path), key=f"venvs.{venv}")
    for plan in plans.values():
        seen: set[str] = set()
        for _, step in plan.steps:
            if isinstance(step, Pip):
                step.lock, step.covered = locked[step.venv], step.venv in seen
                seen.add(step.venv)
