"""Variables with provenance, merged in one documented order (lowest first):

    fleet defaults < role defaults < inventory `all` < groups (parents first)
        < group_vars/all < group_vars/<group> < host < host_vars/<host> < --set

Each value remembers where it came from, so `invoke vars --host X` can show it and an
error can name the file that set a bad value. String values may use Jinja2 and refer to
other variables; they are rendered on the controller with StrictUndefined.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

import yaml
from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.nativetypes import NativeEnvironment

from fleet.errors import InputError
from fleet.inventory.model import Host, Inventory


@dataclass(frozen=True)
class Var:
    value: Any
    source: str


Layer = tuple[str, dict[str, Any]]


def inventory_layers(inventory: Inventory, host: Host) -> list[Layer]:
    """The inventory's layers for one host, in Ansible's order (see Inventory.levels)."""
    return [(level.label, level.vars) for level in inventory.levels(host)]


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--set k=v` pairs; values are read as YAML so `--set jupyter_port=8890` is an integer."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected KEY=VALUE, got {item!r}", key="--set")
        try:
            result[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            result[key.strip()] = raw
    return result


def merge(layers: list[Layer]) -> dict[str, Var]:
    merged: dict[str, Var] = {}
    for source, values in layers:
        for key, value in (values or {}).items():
            merged[key] = Var(value, source)
    return merged


_ENV = NativeEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=4096)
def _compiled(text: str) -> tuple[Template, frozenset[str]]:
    """Parse and compile a value's Jinja2 once per run, not once per host: 30 hosts share it."""
    return _ENV.from_string(text), frozenset(meta.find_undeclared_variables(_ENV.parse(text)))


def render(merged: dict[str, Var], functions: Mapping[str, Callable[..., Any]] | None = None) -> dict[str, Var]:
    """Render Jinja2 in string values, following references between variables."""
    functions = functions or {}
    done: dict[str, Var] = {}

    def resolve(name: str, trail: tuple[str, ...]) -> Any:
        if name in done:
            return done[name].value
        if name in trail:
            raise InputError(f"variables refer to each other in a loop: {' -> '.join(trail + (name,))}",
                             file=merged[name].source, key=name)
        var = merged[name]
        done[name] = Var(walk(var.value, name, trail + (name,)), var.source)
        return done[name].value

    def walk(value: Any, name: str, trail: tuple[str, ...]) -> Any:
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            return render_string(value, name, trail)
        if isinstance(value, list):
            return [walk(v, name, trail) for v in value]
        if isinstance(value, dict):
            return {k: walk(v, name, trail) for k, v in value.items()}
        return value

    def render_string(text: str, name: str, trail: tuple[str, ...]) -> Any:
        try:
            template, deps = _compiled(text)
            context = {dep: resolve(dep, trail) for dep in deps if dep in merged}
            return template.render({**functions, **context})
        except InputError:
            raise
        except TemplateError as exc:
            raise InputError(f"cannot render {text!r}: {exc.message}", file=merged[name].source, key=name) from None

    for name in merged:
        resolve(name, ())
    return done


class HostVars(dict[str, Any]):
    """Plain values for one host, readable as attributes in role code (`v.jupyter_port`)."""

    sources: dict[str, str] = {}

    @classmethod
    def from_merged(cls, merged: dict[str, Var]) -> "HostVars":
        values = cls({k: v.value for k, v in merged.items()})
        values.sources = {k: v.source for k, v in merged.items()}
        return values

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no variable {name!r}") from None
