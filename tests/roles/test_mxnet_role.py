"""The mxnet role's gate and install plans on recorded nvidia-smi outputs (tests as data)."""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from roles.mxnet.gpu import GPU_FACT
from fleet.engine.steps import path_fact, venv_fact
from roles.mxnet import FrameworkEnv, FrameworkGate, FrameworkInstall

DATA = Path(__file__).parents[1] / "data" / "gpu"
VENV = "/opt/jupyter"


def facts(recording: str, installed: dict | None) -> dict:
    return {GPU_FACT.key: GPU_FACT.parse((DATA / f"{recording}.txt").read_text()), venv_fact(VENV).key: installed}


CASES = [
    # (recording, options, installed packages, changed, failed, message fragment, command fragments)
    ("no-driver", {}, {}, True, False, "install mxnet==1.9.1", ["-q mxnet==1.9.1 'numpy<1.24'"]),
    ("t4", {}, {}, True, False, "install mxnet-cu117==1.9.1", ["mxnet-cu117==1.9.1"]),
    ("a10g", {}, {}, True, False, "install mxnet-cu114==1.9.1", ["mxnet-cu114==1.9.1"]),
    ("2x-v100", {}, {}, True, False, "install mxnet-cu110==1.9.1", ["mxnet-cu110==1.9.1"]),
    ("t4", {"prefer": "cpu"}, {}, True, False, "install mxnet==1.9.1", ["-q mxnet==1.9.1 "]),
    ("t4", {}, {"mxnet": "1.9.1", "numpy": "1.23.5"}, True, False, "replacing mxnet",
     ["uninstall -y -q mxnet", "mxnet-cu117==1.9.1"]),
    ("t4", {}, {"mxnet-cu117": "1.9.1", "numpy": "1.23.5"}, False, False, "mxnet-cu117==1.9.1 already installed", []),
    ("t4", {}, {"mxnet-cu117": "1.9.1", "numpy": "1.26.4"}, True, False, "install", ["'numpy<1.24'"]),
    ("h200", {}, {}, False, True, "refused: compute capability 9.0", []),
    ("h100", {"allow_cpu_fallback": True}, {}, True, False, "install mxnet==1.9.1", ["-q mxnet==1.9.1 "]),
    ("k80-old-driver", {}, {}, False, True, "refused: driver 410.48", []),
    ("no-driver", {"prefer": "gpu"}, {}, False, True, "refused", []),
]


@pytest.mark.parametrize("recording,options,installed,changed,failed,message,commands", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_install_plan(recording, options, installed, changed, failed, message, commands):
    outcome = FrameworkInstall(**options, venv=VENV).plan(facts(recording, installed))
    assert (outcome.changed, outcome.failed) == (changed, failed), outcome
    assert message in outcome.message
    for fragment in commands:
        assert any(fragment in c for c in outcome.commands), outcome.commands


@pytest.mark.parametrize("recording,failed,fragment", [
    ("no-driver", False, "mxnet 1.9.1"),
    ("t4", False, "mxnet-cu117 1.9.1"),
    ("h200", True, "refused: compute capability 9.0 (NVIDIA H200)"),
])
def test_gate_decides_before_anything_is_installed(recording, failed, fragment):
    gate = FrameworkGate()
    assert gate.facts() == [GPU_FACT]  # the gate reads GPU facts only: it runs before any install
    outcome = gate.plan(facts(recording, None))
    assert outcome.failed is failed and not outcome.changed and outcome.commands == []
    assert fragment in outcome.message


DROPIN = "/etc/systemd/system/jupyter.service.d/fleet-mxnet.conf"
L4_DROPIN = ("# Managed by Jupyter Fleet: what mxnet-cu117 needs on this host's GPU.\n"
             "[Service]\nEnvironment=MXNET_USE_FUSION=0\n")


def dropin(content: str | None) -> dict | None:
    if content is None:
        return None
    return {"kind": "regular file", "mode": "0644", "owner": "root", "group": "root",
            "sha256": hashlib.sha256(content.encode()).hexdigest(), "content": None}


@pytest.mark.parametrize("recording,on_host,changed,message,command", [
    ("l4", None, True, "create " + DROPIN + " (MXNET_USE_FUSION=0)", "__put " + DROPIN),     # Ada: fusion off
    ("l4", L4_DROPIN, False, "already up to date", None),
    ("l4", "[Service]\n", True, "update " + DROPIN, "__put " + DROPIN),
    ("t4", None, False, "already absent", None),                                          # nothing needed
    ("t4", L4_DROPIN, True, "remove " + DROPIN + " (mxnet-cu117 needs no environment)", "rm -rf -- " + DROPIN),
    ("no-driver", L4_DROPIN, True, "remove", "rm -rf -- " + DROPIN),                      # GPU gone: CPU build
    ("h200", L4_DROPIN, False, "no build chosen", None),                                  # the gate refuses first
])
def test_kernel_environment(recording, on_host, changed, message, command):
    step = FrameworkEnv(path=DROPIN, notify=("restart jupyter",))
    assert step.facts() == [GPU_FACT, path_fact(DROPIN)]
    plan_facts = {GPU_FACT.key: GPU_FACT.parse((DATA / f"{recording}.txt").read_text()),
                  path_fact(DROPIN).key: dropin(on_host)}
    outcome = step.plan(plan_facts)
    assert outcome.changed is changed and not outcome.failed, outcome
    assert message in outcome.message
    assert [c for c in outcome.commands if command and c.startswith(command)] or (not command and not outcome.commands)
    if command and command.startswith("__put"):
        written = base64.b64decode(outcome.commands[0].split()[-1].strip("'")).decode()
        assert written == L4_DROPIN
