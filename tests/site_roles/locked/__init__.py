"""Test role for the course lock: one small venv (requests and its dependencies) plus extras."""
from fleet.engine.steps import Apt, Pip


def steps(v, ctx):
    return [Apt(("python3-venv",), lock_timeout=v.apt_lock_timeout),
            Pip("/opt/locked", ["requests==2.32.3", *v.locked_extra])]
