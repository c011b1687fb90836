"""Roles: `roles/<name>/` with `__init__.py` (the steps), `defaults.yml` and `spec.yml`.

Specs are checked before any host is touched: every knob's type, choices and whether it
is required, plus knobs with a role's prefix that the role does not know (typos).
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Callable

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound

from fleet import yamlfile
from fleet.engine.steps import File, Handler, Step, Verify
from fleet.errors import InputError
from fleet.inventory.variables import HostVars, Var

PROJECT = Path(__file__).resolve().parents[2]
ROLES_DIR = PROJECT / "roles"
TEMPLATES_DIR = PROJECT / "templates"
ENGINE_DEFAULTS = Path(__file__).resolve().parent / "defaults.yml"
ENGINE_SPEC = Path(__file__).resolve().parent / "spec.yml"

TYPES: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "port": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535,
    "path": lambda v: isinstance(v, str) and v.startswith("/") and ".." not in PurePosixPath(v).parts,
    "subpath": lambda v: isinstance(v, str) and bool(v) and not v.startswith("/") and ".." not in PurePosixPath(v).parts,
    "any": lambda v: True,
}
EXPECTED = {"str": "a string", "int": "an integer", "bool": "true or false", "list": "a list", "dict": "a mapping",
            "port": "a port number (1-65535)", "path": "an absolute path without '..'",
            "subpath": "a relative path inside the role's folder (no leading '/', no '..')", "any": "anything"}
SPEC_SCHEMA = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"type": {"enum": sorted(TYPES)}, "required": {"type": "boolean"},
                       "choices": {"type": "array"}, "items": {"enum": sorted(TYPES)},
                       "secret": {"type": "boolean"}, "description": {"type": "string"}},
        "required": ["type"],
    },
}


@dataclass
class Role:
    name: str
    path: Path
    defaults_file: Path
    defaults: dict[str, Any]
    spec: dict[str, dict[str, Any]]

    @cached_property
    def prefix(self) -> str:
        """The knob prefix: what all its knobs share up to an underscore (julia_kernel -> julia_)."""
        names = list(self.spec) or [self.name + "_"]
        common = os.path.commonprefix(names)
        return common[: common.rfind("_") + 1] or self.name + "_"

    @cached_property
    def module(self) -> ModuleType:
        if self.path.parent == ROLES_DIR:
            if str(PROJECT) not in sys.path:
                sys.path.insert(0, str(PROJECT))
            return importlib.import_module(f"roles.{self.name}")
        # A site role from FLEET_ROLES_PATH: imported from its folder under a private name.
        spec = importlib.util.spec_from_file_location(f"fleet_site_roles.{self.name}", self.path / "__init__.py")
        assert spec is not None and spec.loader is not None   # the path is a file: a spec with a loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def _load_yaml_mapping(path: Path) -> tuple[dict[str, Any], yamlfile.Lines]:
    if not path.exists():
        return {}, {}
    data, lines = yamlfile.load(path)
    if data is None:
        return {}, lines
    if not isinstance(data, dict):
        raise InputError("expected a mapping of knob names", file=str(path))
    return data, lines


class RoleSet:
    """Every role under roles/, loaded once per run."""

    def __init__(self, roles_dir: Path = ROLES_DIR) -> None:
        extra = [Path(p) for p in os.environ.get("FLEET_ROLES_PATH", "").split(":") if p]
        self.roles: dict[str, Role] = {}
        self.engine_defaults, _ = _load_yaml_mapping(ENGINE_DEFAULTS)
        self.engine_spec, lines = _load_yaml_mapping(ENGINE_SPEC)
        yamlfile.validate(self.engine_spec, SPEC_SCHEMA, ENGINE_SPEC, lines)
        folders = [p for d in [roles_dir, *extra] for p in sorted(d.iterdir()) if (p / "__init__.py").exists()]
        for path in folders:
            defaults, _ = _load_yaml_mapping(path / "defaults.yml")
            spec, lines = _load_yaml_mapping(path / "spec.yml")
            yamlfile.validate(spec, SPEC_SCHEMA, path / "spec.yml", lines)
            self.roles[path.name] = Role(path.name, path, path / "defaults.yml", defaults, spec)

    def template_dirs(self) -> list[Path]:
        """templates/ first, then any `templates/` folder a role carries (site roles)."""
        return [TEMPLATES_DIR] + [r.path / "templates" for r in self.roles.values() if (r.path / "templates").is_dir()]

    def default_layers(self) -> list[tuple[str, dict[str, Any]]]:
        layers = [(_rel(ENGINE_DEFAULTS), self.engine_defaults)]
        layers += [(_rel(role.defaults_file), role.defaults) for role in self.roles.values()]
        return layers

    def check_names(self, names: list[str], source: str) -> None:
        for name in names:
            if name not in self.roles:
                close = difflib.get_close_matches(name, self.roles, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise InputError(f"unknown role {name!r}{hint}; known roles: {', '.join(self.roles)}",
                                 file=source, key="roles")

    def validate(self, host: str, role_names: list[str], merged: dict[str, Var]) -> list[InputError]:
        errors: list[InputError] = []
        specs = [("fleet", self.engine_spec)] + [(n, self.roles[n].spec) for n in role_names]
        for _, spec in specs:
            for knob, rule in spec.items():
                var = merged.get(knob)
                errors += _check_knob(host, knob, rule, var)
        known = set(self.engine_spec)
        for role in self.roles.values():
            known |= set(role.spec)
        for key, var in merged.items():
            owner = next((r for r in self.roles if key.startswith(self.roles[r].prefix)), None)
            if owner and key not in known:
                close = difflib.get_close_matches(key, list(self.roles[owner].spec), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                errors.append(InputError(f"unknown knob for role {owner}{hint}", file=var.source, key=key))
        return errors


def _check_knob(host: str, knob: str, rule: dict[str, Any], var: Var | None) -> list[InputError]:
    if var is None or var.value is None or var.value == "":
        if rule.get("required"):
            src = var.source if var else "no inventory level"
            return [InputError(f"required knob is not set for host {host} (set it in the inventory vars)",
                               file=src, key=knob)]
        return []
    kind = rule["type"]
    if not TYPES[kind](var.value):
        return [InputError(f"expected {EXPECTED[kind]}, got {var.value!r}", file=var.source, key=knob)]
    if "choices" in rule and var.value not in rule["choices"]:
        return [InputError(f"expected one of {rule['choices']}, got {var.value!r}", file=var.source, key=knob)]
    if kind == "list" and "items" in rule:
        bad = [item for item in var.value if not TYPES[rule["items"]](item)]
        if bad:
            return [InputError(f"each item must be {EXPECTED[rule['items']]}, got {bad[0]!r}", file=var.source, key=knob)]
    return []


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(PROJECT))
    except ValueError:
        return str(path)


class Templates:
    """Jinja2 templates under templates/, rendered on the controller with StrictUndefined."""

    def __init__(self, directories: list[Path] | None = None) -> None:
        directories = directories or [TEMPLATES_DIR]
        self.env = Environment(loader=FileSystemLoader([str(d) for d in directories]), undefined=StrictUndefined,
                               keep_trailing_newline=True, autoescape=False)
        self.env.filters["tojson_str"] = lambda v: __import__("json").dumps(v)
        self.directories = directories

    def render(self, name: str, values: dict[str, Any]) -> str:
        try:
            template = self.env.get_template(name)
        except TemplateNotFound:
            raise InputError(f"template not found in {', '.join(map(_rel, self.directories))}", file=name) from None
        except TemplateError as exc:
            raise InputError(f"invalid template: {exc.message}", file=f"{name}:{getattr(exc, 'lineno', '?')}") from None
        try:
            return template.render(values)
        except TemplateError as exc:
            line = _template_line(exc, template.filename)
            where = _rel(Path(template.filename or name)) + (f":{line}" if line else "")
            raise InputError(f"cannot render: {exc.message}", file=where) from None


def _template_line(exc: Exception, filename: str | None) -> int | None:
    """The template line an undefined variable was met on, read off the traceback."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename or tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@dataclass
class RoleContext:
    """What a role's `steps()` gets besides its variables."""

    role: str
    vars: HostVars
    templates: Templates
    resolver: Any
    host: str
    secrets: Any = None
    inventory: Any = None  # the whole inventory, for roles that span hosts (e.g. a cluster's group and head)
    peer_vars: Any = None  # host name -> that host's HostVars (resolved on demand, cached)

    def fail(self, key: str, message: str) -> InputError:
        """An error about a knob's value, naming the file that set it."""
        top = key.split("[", 1)[0].split(".", 1)[0]
        return InputError(message, file=self.vars.sources.get(top), key=key)

    def template(self, name: str, dest: str, **file_args: Any) -> File:
        """A template step is a render plus a file step."""
        return self.template_with(name, dest, self.vars, **file_args)

    def template_with(self, name: str, dest: str, values: dict[str, Any], **file_args: Any) -> File:
        return File(dest, self.templates.render(name, values), label=f"template {name} -> {dest}", **file_args)

    def argon2(self, password: str) -> str:
        hashed: str = self.secrets.argon2_hash(self.host, password)
        return hashed


@dataclass
class HostPlan:
    host: Any
    vars: HostVars
    roles: list[str]
    steps: list[tuple[str, Step]] = field(default_factory=list)
    handlers: list[Handler] = field(default_factory=list)
    verifies: list[tuple[str, Verify]] = field(default_factory=list)
