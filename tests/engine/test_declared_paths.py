"""Every step that changes a path declares it, in every shipped role: the root guard
(fleet.engine.rootguard) can only check the paths a step declares, so a step that changes a path
without declaring it would be unguarded. Plans are built for every role with representative
course variables (offline); each step must declare its paths or say why it has none (`PATHLESS`
of its kind, or a Command marked writes_nothing=True)."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from fleet.engine.compile import compile_plans
from fleet.engine.roles import RoleSet
from fleet.engine.secrets import CourseSecrets, Masker
from fleet.engine.steps import Command
from fleet.inventory import files as inventory_mod
from tests.test_shipped import OfflineResolver

SHIPPED = sorted(RoleSet().roles)
BASE = {"roles": SHIPPED, "course_user": "student", "julia_sha256": "a" * 64,
        "repos_list": [{"url": "https://example.org/course.git", "dest": "course", "ref": "main"}],
        "r_kernel_cran_packages": ["data.table"], "mxnet_allow_cpu_fallback": True}
VARIANTS = {
    "defaults": {},
    "notebooks outside the home": {"jupyter_notebook_dir": "/srv/notebooks"},
    "knob-named venvs and prefixes": {"mxnet_venv": "/opt/mxnet", "julia_prefix": "/usr/local/julia",
                                      "jupyter_venv": "/opt/jv"},
    "repositories cloned by root": {"repos_user": "root", "repos_base": "/srv/course"},
}


def plans(tmp_path: Path, extra: dict):
    path = tmp_path / "course.yml"
    path.write_text(__import__("yaml").safe_dump({"name": "course", "vars": {**BASE, **extra},
                                                   "hosts": {"h1": {"address": "192.0.2.1"}}}))
    inv = inventory_mod.load(path)
    masker = Masker()
    return compile_plans(inv, ["h1"], roleset=RoleSet(), overrides={}, only_roles=None,
                         secrets=CourseSecrets(tmp_path, "course", masker), masker=masker,
                         resolver=OfflineResolver())["h1"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_step_of_every_role_declares_the_paths_it_changes(tmp_path, variant):
    plan = plans(tmp_path, VARIANTS[variant])
    assert {role for role, _ in plan.steps} == set(SHIPPED)     # every role contributed steps
    undeclared = [f"{role}: {step.name} ({type(step).__name__})" for role, step in plan.steps
                  if not step.paths() and not step.pathless()]
    assert undeclared == [], "steps that change paths without declaring them:\n" + "\n".join(undeclared)
    for role, step in plan.steps:
        for path in step.paths():
            assert PurePosixPath(path).is_absolute() and ".." not in PurePosixPath(path).parts, (role, step.name, path)


def test_knob_named_install_folders_are_the_declared_ones(tmp_path):
    plan = plans(tmp_path, VARIANTS["knob-named venvs and prefixes"])
    declared = {path for _, step in plan.steps for path in step.paths()}
    assert {"/opt/mxnet/bin", "/opt/jv/bin"} <= declared                      # pip and mxnet's own install
    assert any(p.startswith("/usr/local/julia/julia-") for p in declared)      # julia's unpacked release
    assert "/usr/local/bin/julia" in declared                                 # the Link step


def test_a_command_declares_or_is_marked():
    assert Command("true", idempotent=False).pathless() == "" and Command("true", idempotent=False).paths() == ()
    assert Command("true", idempotent=False, writes_nothing=True).pathless()
    assert Command("touch /srv/x", creates="/srv/x", writes=("/srv/y",)).paths() == ("/srv/y", "/srv/x")
    with pytest.raises(Exception, match="absolute path"):
        Command("true", idempotent=False, writes=("relative/x",))


def test_a_commands_creates_is_probed_as_the_steps_user():
    step = Command("make", creates="/home/u/built", user="u")
    [fact] = step.facts()
    assert fact.command.startswith("__read_as u ") and fact.user == "u"
    assert not step.plan({fact.key: {"kind": "regular file"}}).changed
    assert step.plan({fact.key: None}).changed
    [root_fact] = Command("make", creates="/srv/built").facts()
    assert not root_fact.command.startswith("__read_as")
