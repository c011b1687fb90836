"""What every EC2 module of a course shares: the tags that find the course's resources again,
the data shapes, small helpers, AWS errors translated for people, and the boto3 session."""
from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import boto3
from botocore.config import Config
from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError,
                                 PartialCredentialsError, ProfileNotFound, WaiterError)

from fleet.aws import DEFAULT_KEY_DIR

PREFIX = "jupyter-fleet"
MANAGED_TAG = f"{PREFIX}:managed"
COURSE_TAG = f"{PREFIX}:course"
SLOT_TAG = f"{PREFIX}:slot"
# bake's builder: the course's, but no class machine (no slot; launch, status, stop and start skip it)
BUILDER_TAG = f"{PREFIX}:builder"

# Deep Learning Base AMI with the NVIDIA driver, resolved through AWS's public SSM
# parameter so we always get the current image without hard-coding per-region ids.
DLAMI_SSM_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/"
    "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
# Fallback when SSM is unavailable (restricted IAM policy, partition without the
# parameter): search Amazon's own images by name, most specific pattern first.
DLAMI_NAME_PATTERNS = (
    "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*",
    "Deep Learning*Ubuntu*",
)

ACTIVE_STATES = ("pending", "running", "stopping", "stopped")
PRICES_FILE = Path(__file__).with_name("prices.yml")

# Instance families with GPUs that don't follow the g<digit>/p<digit> naming.
_GPU_FAMILIES_EXTRA = {"gr6": True, "g4ad": True, "g5g": True}
_COURSE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
# Scrubbed from anything we show, in case an AWS message ever echoes a key id.
_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")

BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=10,
    read_timeout=60,
)


class CloudError(Exception):
    """A failure with a message meant for the person at the terminal."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Instance:
    id: str
    name: str
    slot: int | None
    state: str
    type: str
    public_ip: str | None
    private_ip: str | None
    launch_time: datetime | None
    key_name: str | None
    gpu: bool


@dataclass
class LaunchResult:
    course: str
    region: str
    key_name: str
    key_file: Path
    key_action: str  # "created", "imported" or "existing"
    security_group_id: str
    cidr: str
    ami: str | None  # None when nothing had to be launched
    launched: list[Instance] = field(default_factory=list)
    existing: list[Instance] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        return sorted(self.launched + self.existing, key=slot_order)


# ------------------------------------------------------------------ small helpers


def key_name(course: str) -> str:
    return f"{PREFIX}-{course}"


def group_name(course: str) -> str:
    return f"{PREFIX}-{course}"


def key_path(course: str, key_dir: Path | str = DEFAULT_KEY_DIR) -> Path:
    return Path(key_dir) / f"{course}.pem"


def is_gpu_type(instance_type: str) -> bool:
    """GPU families are g<digit>… and p<digit>… (g4dn, g5, p3, p4d…), plus a few odd names."""
    family = instance_type.split(".", 1)[0].lower()
    if family in _GPU_FAMILIES_EXTRA:
        return _GPU_FAMILIES_EXTRA[family]
    return bool(re.match(r"^[gp]\d", family))


def free_slots(taken: Iterable[int], needed: int) -> list[int]:
    """The `needed` lowest slot numbers (from 1) not in `taken`: gaps are refilled first."""
    taken = set(taken)
    slots: list[int] = []
    n = 1
    while len(slots) < needed:
        if n not in taken:
            slots.append(n)
        n += 1
    return slots


def normalize_cidr(cidr: str) -> str:
    """'1.2.3.4' -> '1.2.3.4/32'; host bits are cleared so comparisons with EC2 match."""
    try:
        return str(ipaddress.ip_network(cidr.strip(), strict=False))
    except ValueError:
        raise CloudError(f"{cidr!r} is not an IP address or CIDR block (e.g. 203.0.113.7/32)") from None


def caller_public_ip(url: str = "https://checkip.amazonaws.com", timeout: float = 5.0) -> str:
    """This machine's public IPv4 as AWS sees it: the default source allowed to SSH in."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read(64).decode("ascii", "replace").strip()
        return str(ipaddress.ip_address(text))
    except (OSError, ValueError) as exc:
        raise CloudError(
            f"could not determine your public IP address from {url} ({exc}); "
            "pass --cidr with the address range allowed to SSH in"
        ) from None


def wait_for_ssh(host: str, port: int = 22, timeout: float = 300.0, interval: float = 2.0) -> bool:
    """True once a TCP connection to host:port succeeds, False if `timeout` runs out.

    A fresh instance is "running" well before sshd listens, so provisioning would fail
    with connection refused if we handed it over on the state alone.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            with socket.create_connection((host, port), timeout=min(5.0, remaining)):
                return True
        except OSError:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def slot_order(inst: Instance) -> tuple[int, str]:
    return (inst.slot if inst.slot is not None else 1 << 30, inst.name)


def check_course(course: str) -> str:
    # The course ends up in file names, key/group names and tag filters.
    if not _COURSE_RE.match(course or ""):
        raise CloudError(
            f"invalid course name {course!r}: use 1-40 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return course


def _scrub(text: str) -> str:
    return _ACCESS_KEY_RE.sub("<access-key-id>", text)


# ------------------------------------------------------------------- AWS errors


def _quota_name(instance_type: str | None) -> str:
    family = (instance_type or "").split(".", 1)[0].lower()
    if family.startswith("p"):
        return "Running On-Demand P instances"
    if family.startswith(("g", "vt")):
        return "Running On-Demand G and VT instances"
    return "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"


def explain(exc: BaseException, *, region: str | None = None, instance_type: str | None = None) -> CloudError:
    """Turn a boto3/botocore exception into a CloudError that says what to do next."""
    where = f" in {region}" if region else ""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return CloudError(
            "no AWS credentials found: run `aws configure` (or `aws sso login`), set "
            "AWS_PROFILE to a configured profile, or export AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, ProfileNotFound):
        return CloudError(f"{_scrub(str(exc))}: check AWS_PROFILE and ~/.aws/config")
    if isinstance(exc, NoRegionError):
        return CloudError("no AWS region configured: pass --region or set AWS_DEFAULT_REGION")
    if isinstance(exc, EndpointConnectionError):
        return CloudError(
            f"cannot reach the AWS endpoint{where} ({_scrub(str(exc))}): check the region "
            "name and your network connection"
        )
    if isinstance(exc, WaiterError):
        return CloudError(f"gave up waiting{where}: {_scrub(str(exc))}")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        message = _scrub(str(err.get("Message", "")))
        op = exc.operation_name
        if code in ("AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch",
                    "UnrecognizedClientException", "IncompleteSignature"):
            return CloudError(
                f"AWS rejected the credentials ({code}): they are wrong or belong to a deleted "
                "user; check `aws sts get-caller-identity` and your profile"
            )
        if code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"):
            return CloudError(
                f"the AWS session has expired ({code}): log in again (e.g. `aws sso login`) "
                "or refresh your temporary credentials; if this persists, check the system clock"
            )
        if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
            return CloudError(
                f"your AWS identity is not allowed to call {op}{where} ({code}); it needs EC2 "
                "permissions for instances, key pairs and security groups (see docs/aws.md)"
            )
        if code == "OptInRequired":
            return CloudError(f"the account is not subscribed/opted in{where}: {message}")
        if code in ("InstanceLimitExceeded", "VcpuLimitExceeded"):
            return CloudError(
                f"EC2 quota exceeded{where} ({code}) launching {instance_type or 'instances'}: "
                f"request an increase of '{_quota_name(instance_type)}' in the Service Quotas "
                "console (the quota counts vCPUs), or launch fewer/smaller instances"
            )
        if code == "InsufficientInstanceCapacity":
            return CloudError(
                f"AWS has no spare {instance_type or 'instance'} capacity right now{where}: "
                "retry later, or try another instance type or region"
            )
        if code in ("Unsupported", "InvalidInstanceType", "InvalidInstanceType.NotFound") or (
            code == "InvalidParameterValue" and op == "RunInstances"
            and (instance_type is None or "instancetype" in message.lower().replace(" ", "")
                 or (instance_type and instance_type in message))
        ):
            return CloudError(
                f"instance type {instance_type or '(unknown)'} is not available{where} ({code}: "
                f"{message}): pick another --instance-type or --region"
            )
        if code.startswith("InvalidAMIID"):
            return CloudError(f"AMI not usable{where} ({code}: {message}): pass another --ami")
        if code in ("InvalidKeyPair.NotFound", "InvalidKeyPair.Duplicate"):
            return CloudError(f"key pair problem{where} ({code}): {message}")
        return CloudError(f"AWS error{where} in {op} ({code}): {message}")
    if isinstance(exc, BotoCoreError):
        return CloudError(f"AWS client error{where}: {_scrub(str(exc))}")
    return CloudError(_scrub(str(exc)))


@contextlib.contextmanager
def explained_errors(region: str | None = None, instance_type: str | None = None) -> Iterator[None]:
    # One place that converts library exceptions, so no caller ever sees a traceback
    # (tracebacks can show request details) for an everyday mistake.
    try:
        yield
    except CloudError:
        raise
    except (BotoCoreError, ClientError) as exc:
        raise explain(exc, region=region, instance_type=instance_type) from None


# ------------------------------------------------------------------- sessions


@lru_cache(maxsize=1)
def known_regions() -> frozenset[str]:
    """Regions botocore knows for EC2 in any partition (from its bundled endpoint data)."""
    session = boto3.session.Session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return frozenset(regions)


def ec2_session(region: str | None) -> tuple[Any, Any, str]:
    """(session, ec2 client, region) with the region validated and credentials present.

    A session per call (not cached) so env/profile changes are picked up and each
    command sees the credentials of the moment.
    """
    try:
        session = boto3.session.Session(region_name=region)
    except ProfileNotFound as exc:
        raise explain(exc) from None
    name = session.region_name
    if not name:
        raise CloudError("no AWS region configured: pass --region or set AWS_DEFAULT_REGION")
    if name not in known_regions():
        # Checked locally: an unknown name otherwise surfaces as a DNS failure.
        raise CloudError(
            f"unknown AWS region {name!r}: use a region code such as us-east-1 or eu-west-1 "
            "(if the region is brand new, upgrade boto3)"
        )
    with explained_errors(name):
        if session.get_credentials() is None:
            raise explain(NoCredentialsError())
    return session, session.client("ec2", config=BOTO_CONFIG), name


def tag_spec(resource: str, course: str, **extra: str) -> dict[str, Any]:
    tags = {MANAGED_TAG: "true", COURSE_TAG: course, **extra}
    return {"ResourceType": resource, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
