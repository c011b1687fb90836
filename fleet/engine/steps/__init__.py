"""Steps: idempotent operations that compare facts with the wanted state.

Each step lists the facts it reads, then `plan` compares them with what is wanted and
returns an Outcome: unchanged with a message ("python3-venv already installed"), or
changed with the shell commands that make it so. The check sits next to the change;
commands never decide on their own whether something changed. Roles import them from here.
"""
from fleet.engine.steps.base import (KEPT, MAX_DIFF_BYTES, STATE_DIR, Handler, Outcome, Step, Verify, check_path,
                                     home_territory, read_as, territory)
from fleet.engine.steps.files import Absent, Directory, File, Line, path_fact
from fleet.engine.steps.packages import APT_AGE, Apt, Pip, dpkg_fact, unsatisfied, venv_fact
from fleet.engine.steps.system import Command, Service, User, reload_if_changed, unit_fact

__all__ = ["KEPT", "MAX_DIFF_BYTES", "STATE_DIR", "Handler", "Outcome", "Step", "Verify", "check_path", "home_territory",
           "read_as", "territory", "Absent", "Directory", "File", "Line", "path_fact", "APT_AGE", "Apt", "Pip",
           "dpkg_fact", "unsatisfied", "venv_fact", "Command", "Service", "User", "reload_if_changed", "unit_fact"]
