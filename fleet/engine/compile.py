"""The controller-side phase: variables, specs, templates and steps for every selected host,
all checked before a single connection is opened."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from fleet.engine.git import RefResolver
from fleet.engine.roles import HostPlan, RoleContext, RoleSet, Templates
from fleet.engine.secrets import CourseSecrets, Masker
from fleet.engine.steps import Handler, Step, Verify
from fleet.errors import InputError, InputErrors
from fleet.inventory.model import Inventory
from fleet.inventory.variables import HostVars, Var, inventory_layers, merge, render


def host_vars(inventory: Inventory, name: str, roleset: RoleSet, overrides: dict,
              secrets: CourseSecrets) -> dict[str, Var]:
    host = inventory.hosts[name]
    builtin = {"inventory_hostname": name, "host_address": host.address, "course": inventory.name}
    layers = [("built-in", builtin)] + roleset.default_layers() + inventory_layers(inventory, host)
    layers.append(("--set", overrides))
    functions = {"host_secret": partial(secrets.host_secret, name), "argon2": partial(secrets.argon2_hash, name)}
    return render(merge(layers), functions)


def compile_plans(inventory: Inventory, hosts: list[str], *, roleset: RoleSet, overrides: dict,
                  only_roles: list[str] | None, secrets: CourseSecrets, masker: Masker,
                  resolver: RefResolver | None = None, templates: Templates | None = None) -> dict[str, HostPlan]:
    """Build every host's plan, or raise one InputErrors listing everything wrong."""
    resolver = resolver or RefResolver()
    templates = templates or Templates(roleset.template_dirs())
    if only_roles:
        roleset.check_names(only_roles, "--roles")
    plans: dict[str, HostPlan] = {}
    errors: list[InputError] = []
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
            masker.add_vars(values)
            if host.sudo_password:
                masker.add(host.sudo_password)
            for role in roleset.roles.values():  # every role's secrets, used by this host's roles or not
                for knob, rule in role.spec.items():
                    if rule.get("secret") and values.get(knob):
                        masker.add(values[knob])
            plans[name] = _role_steps(name, inventory.hosts[name], values, roles, all_roles, roleset, templates,
                                      resolver, secrets)
            for _, step in plans[name].steps:   # e.g. a repository URL's password
                for value in step.secrets():
                    masker.add(value)
        except InputErrors as exc:
            errors += exc.errors
        except InputError as exc:
            errors.append(exc)
    if errors:
        unique = list({str(e): e for e in errors}.values())
        raise unique[0] if len(unique) == 1 else InputErrors(unique)
    return plans


def _role_steps(name: str, host, values: HostVars, roles: list[str], all_roles: list[str], roleset: RoleSet,
                templates: Templates, resolver: RefResolver, secrets: CourseSecrets) -> HostPlan:
    """Steps and verifications of the selected roles; handlers of all the host's roles, so a
    `--roles mxnet` run that changes the venv still restarts the jupyter role's server."""
    plan = HostPlan(host=host, vars=values, roles=roles)
    for role in dict.fromkeys(roles + all_roles):
        ctx = RoleContext(role=role, vars=values, templates=templates, resolver=resolver, host=name, secrets=secrets)
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
    handler_names = {h.name for h in plan.handlers}
    for role, step in plan.steps:
        for wanted in step.notify:
            if wanted not in handler_names:
                raise InputError(f"step {step.name!r} notifies unknown handler {wanted!r}", file=f"roles/{role}")
    return plan
