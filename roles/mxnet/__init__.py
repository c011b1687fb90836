"""MXNet 1.9.1 with the wheel each host can run: GPU facts first, a gate that refuses a
wheel that cannot run (e.g. Hopper GPUs, old drivers) before anything is installed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from packaging.utils import canonicalize_name

from fleet.engine.facts import Fact
from fleet.engine.roles import RoleContext
from fleet.engine.steps import Absent, Apt, File, Outcome, Step, Verify, path_fact, unsatisfied, venv_fact
from fleet.inventory.variables import HostVars
from fleet.shell import q
from roles.mxnet.gpu import ALL_PACKAGES, GPU_FACT, MxnetChoice, choose_mxnet_build

# A framework is a chooser (GPU facts -> build) plus the packages it may install; another
# framework is added as one more entry and one more value in spec.yml.
FRAMEWORKS = {"mxnet": (choose_mxnet_build, ALL_PACKAGES)}


@dataclass
class FrameworkGate(Step):
    """Decides the build from the host's GPU facts; refuses before anything is installed."""

    PATHLESS = "it only reads the GPU facts"
    framework: str = "mxnet"
    prefer: Literal["auto", "cpu", "gpu"] = "auto"
    cuda: str = ""
    allow_cpu_fallback: bool = False
    notify: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.name = f"{self.framework} build check"

    def choice(self, facts: dict[str, Any]) -> MxnetChoice:
        chooser, _ = FRAMEWORKS[self.framework]
        return chooser(facts[GPU_FACT.key], prefer=self.prefer, cuda=self.cuda or None,
                       allow_cpu_fallback=self.allow_cpu_fallback)

    def facts(self, diff: bool = False) -> list[Fact]:
        return [GPU_FACT]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        choice = self.choice(facts)
        if not choice.ok:
            return Outcome(False, f"refused: {choice.reason}. {choice.advice}", failed=True)
        return Outcome(False, f"{choice.package} {choice.version}: {choice.reason}")


@dataclass
class FrameworkInstall(FrameworkGate):
    venv: str = "/opt/jupyter"
    numpy: str = "numpy<1.24"

    def __post_init__(self) -> None:
        self.name = f"{self.framework} in {self.venv}"

    def pathless(self) -> str:
        return ""

    def paths(self) -> tuple[str, ...]:
        return (self.venv + "/bin",)   # the venv a knob names: never a folder a student owns

    def facts(self, diff: bool = False) -> list[Fact]:
        return [GPU_FACT, venv_fact(self.venv)]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        choice = self.choice(facts)
        if not choice.ok:
            return Outcome(False, f"refused: {choice.reason}", failed=True)
        installed = facts[venv_fact(self.venv).key] or {}
        _, packages = FRAMEWORKS[self.framework]
        # Builds share one import name: another build left installed would shadow this one.
        others = [p for p in packages if p != choice.package and canonicalize_name(p) in installed]
        missing = unsatisfied([choice.spec, self.numpy], installed)
        if not missing and not others:
            return Outcome(False, f"{choice.spec} already installed")
        pip = q(self.venv + "/bin/pip")
        commands = [f"{pip} uninstall -y -q {' '.join(map(q, others))}"] if others else []
        commands.append(f"__retry 3 {pip} install --disable-pip-version-check -q {q(choice.spec)} {q(self.numpy)}")
        return Outcome(True, f"install {choice.spec}" + (f" (replacing {', '.join(others)})" if others else ""),
                       commands)


@dataclass
class FrameworkEnv(FrameworkGate):
    """The environment the chosen build needs in the kernels (MXNET_USE_FUSION=0 on GPUs newer
    than the wheel's NVRTC), as a drop-in for the Jupyter unit: kernels and the engines the
    Clusters tab starts inherit the server's environment. No such need: no drop-in."""

    path: str = ""

    def __post_init__(self) -> None:
        self.name = f"{self.framework} environment for the kernels"

    def pathless(self) -> str:
        return ""

    def paths(self) -> tuple[str, ...]:
        return (self.path,)

    def facts(self, diff: bool = False) -> list[Fact]:
        return [GPU_FACT, path_fact(self.path)]

    def plan(self, facts: dict[str, Any]) -> Outcome:
        choice = self.choice(facts)
        if not choice.ok:
            return Outcome(False, "no build chosen")
        if not choice.env:
            return Absent(self.path, reason=f"{choice.package} needs no environment").plan(facts)
        lines = [f"# Managed by Jupyter Fleet: what {choice.package} needs on this host's GPU.", "[Service]",
                 *(f"Environment={key}={value}" for key, value in sorted(choice.env.items()))]
        outcome = File(self.path, "\n".join(lines) + "\n").plan(facts)
        outcome.message += f" ({', '.join(f'{k}={v}' for k, v in sorted(choice.env.items()))})"
        return outcome


# The verification's program: a file of the role's (linted), sent on stdin with a call of its main.
VERIFY = Path(__file__).parent / "files" / "verify_mxnet.py"


def steps(v: HostVars, ctx: RoleContext) -> list:
    options = dict(framework=v.mxnet_framework, prefer=v.mxnet_build, cuda=v.mxnet_cuda,
                   allow_cpu_fallback=v.mxnet_allow_cpu_fallback)
    check = VERIFY.read_text() + f"\nmain({f'{v.mxnet_venv}/lib/python3*/site-packages'!r})\n"
    return [
        FrameworkGate(**options),
        Apt(("libquadmath0",), cache_max_age=v.apt_cache_max_age, lock_timeout=v.apt_lock_timeout),
        FrameworkInstall(**options, venv=v.mxnet_venv, numpy=v.mxnet_numpy, notify=("restart jupyter",)
                         if "jupyter" in v.roles else ()),
        # Without the jupyter role there is no server whose kernels would need it.
        *([FrameworkEnv(**options, path=f"/etc/systemd/system/{v.jupyter_service}.service.d/fleet-mxnet.conf",
                        notify=("restart jupyter",))] if "jupyter" in v.roles else []),
        Verify("mxnet imports, matches the GPUs and computes", f"{q(v.mxnet_venv + '/bin/python')} -I - <<'PY'\n{check}PY"),
    ]
