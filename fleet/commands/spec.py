"""What a command's description is (Option, Command), how it is checked, run (`call`) and turned into an
invoke Task (`task`). Cheap to import: no rich, no engine, no boto3; a command's function is imported only
when that command runs."""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

KINDS = ("str", "int", "bool", "list")


@dataclass(frozen=True)
class Option:
    """One option. `name` is the Python name invoke sees (`from_` for --from); `dest` the keyword the
    command's function takes (default: name); `positional` options have no default and may be given bare."""

    name: str
    help: str = ""
    default: Any = None
    kind: str = "str"
    dest: str = ""
    required: bool = False
    why: str = ""          # added to the "--x is required" message
    positional: bool = False

    @property
    def flag(self) -> str:
        return self.name.rstrip("_").replace("_", "-")

    @property
    def to(self) -> str:
        return self.dest or self.name


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    run: str                                  # "module:function", imported when the command runs
    options: tuple[Option, ...] = ()
    fixed: dict = field(default_factory=dict)  # keywords always passed (check = provision with check=True)
    missing_exit: int = 1                      # exit code for a missing required option
    context: bool = False                      # the function takes invoke's Context first (`test` runs pytest)

    def __post_init__(self) -> None:
        check(self)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options if not o.positional}


class DescriptionError(ValueError):
    """A command described wrongly: refused when the description is built, before any command runs."""


def check(command: Command) -> None:
    where = f"command {command.name!r}"
    if ":" not in command.run:
        raise DescriptionError(f"{where}: run must be 'module:function', got {command.run!r}")
    flags: set[str] = set()
    dests: set[str] = set()
    for o in command.options:
        if o.kind not in KINDS:
            raise DescriptionError(f"{where}: option {o.name!r} has kind {o.kind!r}; expected one of {', '.join(KINDS)}")
        if o.flag in flags or o.to in dests:
            raise DescriptionError(f"{where}: option {o.name!r} is described twice")
        flags.add(o.flag)
        dests.add(o.to)
        expected = {"str": (str, type(None)), "int": (int,), "bool": (bool,), "list": (type(None),)}[o.kind]
        if not o.positional and (not isinstance(o.default, expected) or o.kind == "int" and isinstance(o.default, bool)):
            raise DescriptionError(f"{where}: option {o.name!r} of kind {o.kind} has default {o.default!r}")
        if o.positional and o.default is not None:
            raise DescriptionError(f"{where}: positional option {o.name!r} takes no default")
        if o.kind == "bool" and o.required:
            raise DescriptionError(f"{where}: a flag ({o.name!r}) cannot be required")
    if set(command.fixed) & dests:
        raise DescriptionError(f"{where}: {', '.join(sorted(set(command.fixed) & dests))} is both fixed and an option")
    positions = [o.positional for o in command.options]
    if positions != sorted(positions, reverse=True):
        raise DescriptionError(f"{where}: positional options come first")


def function(command: Command) -> Callable[..., Any]:
    module, name = command.run.split(":")
    return getattr(importlib.import_module(module), name)


def call(command: Command, context: Any = None, **given: Any) -> Any:
    """Run a command as invoke would: fill in the defaults, refuse a missing required option, call its
    function with its keywords, and turn a non-zero returned code into that exit."""
    from invoke import Exit

    unknown = set(given) - {o.name for o in command.options}
    if unknown:
        raise TypeError(f"{command.name}: no option {', '.join(sorted(unknown))}")
    values = {**command.defaults(), **given}
    for o in command.options:
        if (o.required or o.positional) and values.get(o.name) in (None, ""):
            raise Exit(f"--{o.flag} is required" + (f" ({o.why})" if o.why else ""), command.missing_exit)
        if o.kind == "int" and values[o.name] is not None:
            values[o.name] = int(values[o.name])
    kwargs = {**{o.to: values[o.name] for o in command.options}, **command.fixed}
    result = function(command)(*([context] if command.context else []), **kwargs)
    if isinstance(result, int) and not isinstance(result, bool) and result:
        raise Exit(code=result)
    return result


def task(command: Command):
    """The invoke Task for a command: a body whose signature is the description (invoke reads it)."""
    from invoke import Task

    def body(c, **given):
        return call(command, c, **given)

    params = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 **({} if o.positional else {"default": o.default})) for o in command.options]
    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__name__ = body.__qualname__ = command.name.replace("-", "_")
    body.__doc__ = command.summary
    return Task(body, name=command.name, help={o.flag: o.help for o in command.options if o.help},
                iterable=[o.name for o in command.options if o.kind == "list"])
