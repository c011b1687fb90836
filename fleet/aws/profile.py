"""An instance profile on a course's machines: refused unless the course asks for it twice.

Every local user of an EC2 instance can read its instance profile's credentials from the
metadata service, and students have a shell. So launch attaches none unless the course's
inventory names one (`aws_instance_profile`) *and* says it accepts that
(`aws_allow_instance_profile: true`); then it prints a warning saying who can read them.
The refusal comes before any call to AWS, so no instance starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.aws.common import CloudError

PROFILE_KNOB = "aws_instance_profile"
ALLOW_KNOB = "aws_allow_instance_profile"
# IMDSv2 only, and a hop limit of 1: a token answer never leaves the instance itself (no
# container or forwarded hop can fetch one). Every instance the fleet starts gets these.
METADATA_OPTIONS = {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"}


@dataclass(frozen=True)
class ProfileChoice:
    name: str | None = None      # an instance profile name or ARN; None: no profile
    allowed: bool = False        # the course set aws_allow_instance_profile: true
    source: str = ""             # where the name came from, for messages

    def request(self) -> dict[str, Any]:
        """The run_instances parameter for this choice ({} when no profile)."""
        if not self.name:
            return {}
        key = "Arn" if self.name.startswith("arn:") else "Name"
        return {"IamInstanceProfile": {key: self.name}}

    def warning(self) -> str | None:
        if not self.name:
            return None
        return (f"WARNING: instance profile {self.name} is attached ({self.source}): every student with a shell "
                "on these machines can read its credentials from the instance metadata service and act with "
                "its permissions")


def check(choice: ProfileChoice) -> ProfileChoice:
    """The choice itself, or a CloudError (before anything starts) when the course did not allow it."""
    if choice.name and not choice.allowed:
        raise CloudError(
            f"instance profile {choice.name} ({choice.source}) refused: its credentials would be readable by "
            f"every student with a shell on the machines. If the course really needs one, set "
            f"`{ALLOW_KNOB}: true` in the course inventory's vars; nothing was launched")
    return choice


def from_inventory(path: Path | None, cli_name: str | None = None) -> ProfileChoice:
    """The profile a launch asks for: `--instance-profile`, else the inventory's `aws_instance_profile`;
    allowed only by the inventory's `aws_allow_instance_profile: true` (never by a flag alone)."""
    values: dict[str, Any] = {}
    if path is not None:
        from fleet.inventory import files as inventory_mod

        values = inventory_mod.load(path).vars
    name, allowed = values.get(PROFILE_KNOB), values.get(ALLOW_KNOB, False)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise CloudError(f"{path}: vars.{PROFILE_KNOB}: expected an instance profile name or ARN, got {name!r}")
    if not isinstance(allowed, bool):
        raise CloudError(f"{path}: vars.{ALLOW_KNOB}: expected true or false, got {allowed!r}")
    if cli_name:
        return ProfileChoice(cli_name, allowed, "--instance-profile")
    return ProfileChoice(name, allowed, f"{path}: vars.{PROFILE_KNOB}" if name else "")
