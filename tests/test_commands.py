"""fleet/commands: each command's options described once, and every layer reading that one description."""
from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit

from fleet import commands
from fleet.commands import Command, DescriptionError, Option

PROJECT = Path(__file__).resolve().parent.parent
ALL = commands.commands()


def help_text(name: str) -> str:
    done = subprocess.run([sys.executable, "-m", "invoke", "--help", name], cwd=PROJECT, capture_output=True,
                          text=True, timeout=120, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


# --help through the real invoke and tasks.py, for a local command and a cloud one (each run costs a start).
@pytest.mark.parametrize("name", ["provision", "restore", "vars", "terminate", "launch"])
def test_help_shows_every_option_with_its_help(name):
    text = " ".join(help_text(name).split())
    assert " ".join(ALL[name].summary.split()) in text
    for o in ALL[name].options:
        flag = f"--[no-]{o.flag}" if o.kind == "bool" and o.default is True else f"--{o.flag}"
        shown = {"str": "=STRING", "int": "=INT", "bool": "", "list": ""}[o.kind]
        assert f"{flag}{shown} {' '.join(o.help.split())}" in text, o.name


@pytest.mark.parametrize("name", sorted(ALL))
def test_invoke_task_has_the_described_defaults_kinds_and_help(name):
    command = ALL[name]
    task = commands.task(command)
    arguments = {a.name: a for a in task.get_arguments()}
    assert set(arguments) == {o.name for o in command.options}
    for o in command.options:
        argument = arguments[o.name]
        assert argument.help == (o.help or None)
        assert argument.positional == o.positional
        if o.kind == "list":
            assert argument.kind is list
        elif not o.positional:
            assert argument.default == o.default and argument.kind is {"str": str, "int": int, "bool": bool}[o.kind]
    assert task.__doc__ == command.summary


FORWARDS = {"fleet.cli:provision": "fleet.app:provision"}  # takes **kwargs and hands them on


def keywords_of(target: str) -> set[str]:
    module, attr = target.split(":")
    params = inspect.signature(inspect.unwrap(getattr(importlib.import_module(module), attr))).parameters
    named = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    return named | (keywords_of(FORWARDS[target]) if len(named) < len(params) else set())


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_function_takes_the_described_keywords(name):
    command = ALL[name]
    keywords = {o.to for o in command.options} | set(command.fixed)
    taken = keywords_of(command.run) - {"c"}
    assert keywords <= taken
    if command.run not in FORWARDS:
        assert taken == keywords


# The library face keeps its own keyword defaults (fleet.app sits below the faces and may not import them);
# each must equal the description's, so a default changed in one place only fails here.
LIBRARY = [
    ("provision", "fleet.app:provision"),
    ("provision", "fleet.app:connect_options"),
    ("lock", "fleet.app:lock"),
    ("vars", "fleet.app:show_vars"),
    ("launch", "fleet.aws.instances:launch"),
    ("bake", "fleet.course.imaging.bake:bake"),
]


@pytest.mark.parametrize("name, target", LIBRARY)
def test_library_defaults_equal_the_description(name, target):
    module, attr = target.split(":")
    params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
    described = {o.to: o.default for o in ALL[name].options if not o.positional}
    compared = {key: (p.default, described[key]) for key, p in params.items()
                if key in described and p.default is not inspect.Parameter.empty}
    assert compared, f"{target} shares no defaulted keyword with {name}"
    assert {k: str(a) for k, (a, _) in compared.items()} == {k: str(b) for k, (_, b) in compared.items()}


BAD = [  # each a description the module refuses, and the words it says
    (dict(options=(Option("x", kind="float"),)), "kind 'float'"),
    (dict(options=(Option("x"), Option("x"))), "described twice"),
    (dict(options=(Option("x_y"), Option("x-y"))), "described twice"),
    (dict(options=(Option("a", dest="x"), Option("b", dest="x"))), "described twice"),
    (dict(options=(Option("n", default="3", kind="int"),)), "default '3'"),
    (dict(options=(Option("n", default=True, kind="int"),)), "default True"),
    (dict(options=(Option("f", default=None, kind="bool"),)), "default None"),
    (dict(options=(Option("a"), Option("host", positional=True))), "positional options come first"),
    (dict(options=(Option("host", default="h", positional=True),)), "takes no default"),
    (dict(options=(Option("f", default=False, kind="bool", required=True),)), "cannot be required"),
    (dict(options=(Option("n", default=False, kind="int"),)), "default False"),
    (dict(options=(Option("check", default=False, kind="bool"),), fixed={"check": True}), "both fixed and an option"),
    (dict(run="fleet.cli.provision"), "module:function"),
]


@pytest.mark.parametrize("change, words", BAD)
def test_a_wrong_description_is_refused(change, words):
    with pytest.raises(DescriptionError, match=re.escape(words)):
        Command(**{"name": "x", "summary": "s", "run": "m:f", **change})


def test_a_command_described_twice_is_refused(monkeypatch):
    from fleet.commands import local

    monkeypatch.setattr(local, "COMMANDS", (*local.COMMANDS, local.COMMANDS[0]))
    with pytest.raises(DescriptionError, match="'provision' is described twice"):
        commands.commands()


CALLS: list[dict] = []


def record(count: int, name: str | None, tags: list | None, fast: bool, fixed: str) -> int:
    CALLS.append(dict(count=count, name=name, tags=tags, fast=fast, fixed=fixed))
    return count


FAKE = Command("fake", "A command for this test.", f"{__name__}:record", (
    Option("count", "how many", 0, "int"), Option("name", "who", required=True, why="the name matters"),
    Option("tags", "repeatable", kind="list"), Option("fast", "go", True, "bool")),
    fixed={"fixed": "always"}, missing_exit=2)


@pytest.mark.parametrize("given, code, message, called", [
    ({"name": "a"}, None, None, dict(count=0, name="a", tags=None, fast=True, fixed="always")),
    ({"name": "a", "count": "0", "fast": False}, None, None, dict(count=0, name="a", tags=None, fast=False,
                                                                  fixed="always")),
    ({"name": "a", "count": "3"}, 3, None, dict(count=3, name="a", tags=None, fast=True, fixed="always")),
    ({}, 2, "--name is required (the name matters)", None),
    ({"name": ""}, 2, "--name is required (the name matters)", None),
])
def test_call_fills_defaults_refuses_missing_and_exits_with_the_returned_code(given, code, message, called):
    CALLS.clear()
    if code is None:
        commands.call(FAKE, **given)
    else:
        with pytest.raises(Exit) as stopped:
            commands.call(FAKE, **given)
        assert (stopped.value.code, stopped.value.message) == (code, message)
    assert CALLS == ([called] if called else [])


def test_call_refuses_an_option_it_does_not_describe():
    with pytest.raises(TypeError, match="no option colour"):
        commands.call(FAKE, name="a", colour="red")


def test_listing_imports_no_command_work():
    # `invoke --list` builds every task: none of the commands' own modules (nor boto3) may load for it.
    code = ("import sys, tasks; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('boto3', 'jsonschema', 'bench', 'rich') or m.startswith(('fleet.testhosts', 'fleet.app', 'fleet.cli', "
            "'fleet.aws.', 'fleet.course', 'fleet.lint'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_cli_imports_neither_bench_nor_the_test_hosts():
    text = (PROJECT / "fleet" / "cli.py").read_text()
    assert not re.search(r"^\s*(from|import) (bench|fleet\.testhosts)", text, re.M)


def test_speculation_skips_the_real_flags_of_the_commands_it_speculates_for():
    # fleet.engine may not import the faces, so its copy of the flags is held to the description here.
    from fleet.engine.speculation import COMMANDS, NOT_SPECULATED

    for name in COMMANDS:
        names = {a.name: a.names for a in commands.task(ALL[name]).get_arguments()}
        long_short = {names["insecure_host_keys"]} | ({names["sudo_password"]} if "sudo_password" in names else set())
        shown = {f"--{long}" for long, _ in long_short} | {f"-{short}" for _, short in long_short}
        assert shown <= NOT_SPECULATED, name
