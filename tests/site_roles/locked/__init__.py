"""Test role for the course lock: one small venv (requests and its dependencies) plus extras."""
from fleet.engine.steps import Pip


def steps(v, ctx):
    return [Pip("/opt/locked", ["requests==2.32.3", *v.locked_extra])]
