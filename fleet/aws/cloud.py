"""AWS lifecycle of a course: key pair, security group, tagged GPU instances.

Everything the fleet owns in EC2 is found again by tags, never by local state, so
every command can be re-run safely and two people running it see the same course:

* instances carry ``jupyter-fleet:managed=true``, ``jupyter-fleet:course=<course>``,
  ``jupyter-fleet:slot=<n>`` and ``Name=<course>-<n>``; stop/start/terminate only
  ever touch instances that carry *both* the managed tag and the course tag;
* the key pair and the security group are both named ``jupyter-fleet-<course>``.

Credentials and region come from the normal boto3 chain (env vars, profiles, SSO,
instance roles); ``AWS_ENDPOINT_URL`` is honoured, which is how the tests point us at
a moto server. Every boto3/botocore failure leaves this module as a ``CloudError``
whose message says what to do and never contains credentials.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    WaiterError,
)

PREFIX = "jupyter-fleet"
MANAGED_TAG = f"{PREFIX}:managed"
COURSE_TAG = f"{PREFIX}:course"
SLOT_TAG = f"{PREFIX}:slot"

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
DEFAULT_KEY_DIR = Path(".fleet/keys")
PRICES_FILE = Path(__file__).with_name("prices.yml")

# Instance families with GPUs that don't follow the g<digit>/p<digit> naming.
_GPU_FAMILIES_EXTRA = {"gr6": True, "g4ad": True, "g5g": True}
_COURSE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
# Scrubbed from anything we show, in case an AWS message ever echoes a key id.
_ACCESS_KEY_RE = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")

_BOTO_CONFIG = Config(
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
        return sorted(self.launched + self.existing, key=_slot_order)


@dataclass(frozen=True)
class StatusRow:
    instance_id: str
    name: str
    state: str
    type: str
    uptime: timedelta | None  # since the last start (EC2 resets LaunchTime on start)
    hourly_usd: float | None  # None: type not in the price table
    cost_usd: float | None  # cost of the current run; None when price unknown


@dataclass(frozen=True)
class PriceTable:
    date: str
    source: str
    region: str
    hourly: dict[str, float]


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


def _slot_order(inst: Instance) -> tuple[int, str]:
    return (inst.slot if inst.slot is not None else 1 << 30, inst.name)


def _check_course(course: str) -> str:
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
def _aws(region: str | None = None, instance_type: str | None = None) -> Iterator[None]:
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


def _ec2(region: str | None) -> tuple[Any, Any, str]:
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
    with _aws(name):
        if session.get_credentials() is None:
            raise explain(NoCredentialsError())
    return session, session.client("ec2", config=_BOTO_CONFIG), name


# ------------------------------------------------------------------- key pair


def public_key_openssh(private_key_file: Path) -> str:
    """The 'ssh-rsa AAAA…' / 'ssh-ed25519 AAAA…' line for a PEM or OpenSSH private key."""
    from cryptography.hazmat.primitives import serialization

    data = private_key_file.read_bytes()
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError) as exc:
        raise CloudError(
            f"cannot read private key {private_key_file} ({exc}); it must be an unencrypted "
            "RSA or Ed25519 key"
        ) from None
    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")


def _write_private_key(path: Path, material: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0400 in the open() itself, so the key is never readable by others even
    # for an instant; O_EXCL so we never overwrite a key someone else depends on.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o400)
    with os.fdopen(fd, "w") as fh:
        fh.write(material if material.endswith("\n") else material + "\n")
    os.chmod(path, 0o400)  # in case an odd umask/ACL widened it


def ensure_key_pair(ec2: Any, course: str, key_dir: Path | str = DEFAULT_KEY_DIR) -> tuple[str, Path, str]:
    """Make the local key file and the EC2 key pair agree; returns (name, path, action)."""
    name, path = key_name(course), key_path(course, key_dir)
    try:
        ec2.describe_key_pairs(KeyNames=[name])
        in_ec2 = True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "InvalidKeyPair.NotFound":
            raise
        in_ec2 = False
    local = path.exists()
    if local and in_ec2:
        return name, path, "existing"
    if local:
        ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=public_key_openssh(path).encode(),
            TagSpecifications=[_tag_spec("key-pair", course)],
        )
        return name, path, "imported"
    if in_ec2:
        raise CloudError(
            f"EC2 key pair {name!r} exists but the private key {path} is missing here. "
            f"Copy the key from whoever launched the course to {path} (mode 0400), or, if it is "
            f"lost, delete the pair (`aws ec2 delete-key-pair --key-name {name}`) and run "
            "launch again (existing instances keep the old key and need it to log in)"
        )
    created = ec2.create_key_pair(
        KeyName=name, KeyType="rsa", TagSpecifications=[_tag_spec("key-pair", course)]
    )
    try:
        _write_private_key(path, created["KeyMaterial"])
    except OSError as exc:
        # Without the private key the pair is useless and blocks the next run: undo it.
        with contextlib.suppress(ClientError):
            ec2.delete_key_pair(KeyName=name)
        raise CloudError(f"cannot write the private key to {path}: {exc.strerror}") from None
    return name, path, "created"


# ------------------------------------------------------------- security group


def _default_vpc(ec2: Any) -> str:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise CloudError(
            "this region has no default VPC; create one (`aws ec2 create-default-vpc`) "
            "or use another region"
        )
    return vpcs[0]["VpcId"]


def _unwanted_permissions(permissions: list[dict[str, Any]], cidr: str) -> list[dict[str, Any]]:
    """Every ingress grant except 'tcp 22 from cidr', split one grant per entry for revoke."""
    extra: list[dict[str, Any]] = []
    for perm in permissions:
        base = {k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm}
        is_ssh = perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 22 and perm.get("ToPort") == 22
        for rng in perm.get("IpRanges", []):
            if not (is_ssh and rng.get("CidrIp") == cidr):
                extra.append({**base, "IpRanges": [{"CidrIp": rng["CidrIp"]}]})
        for rng in perm.get("Ipv6Ranges", []):
            if not (is_ssh and rng.get("CidrIpv6") == cidr):
                extra.append({**base, "Ipv6Ranges": [{"CidrIpv6": rng["CidrIpv6"]}]})
        for pair in perm.get("UserIdGroupPairs", []):
            extra.append({**base, "UserIdGroupPairs": [{"GroupId": pair["GroupId"]}]})
        for pl in perm.get("PrefixListIds", []):
            extra.append({**base, "PrefixListIds": [{"PrefixListId": pl["PrefixListId"]}]})
    return extra


def _has_ssh_rule(permissions: list[dict[str, Any]], cidr: str) -> bool:
    key = "Ipv6Ranges" if ":" in cidr else "IpRanges"
    field_ = "CidrIpv6" if ":" in cidr else "CidrIp"
    return any(
        p.get("IpProtocol") == "tcp" and p.get("FromPort") == 22 and p.get("ToPort") == 22
        and any(r.get(field_) == cidr for r in p.get(key, []))
        for p in permissions
    )


def ensure_security_group(ec2: Any, course: str, cidr: str) -> str:
    """Group `jupyter-fleet-<course>` allowing exactly tcp/22 from `cidr`; returns its id.

    Jupyter itself is never opened: users reach it through an SSH tunnel. Anything
    else found on the group (added by hand, or an old CIDR) is revoked.
    """
    name = group_name(course)
    vpc = _default_vpc(ec2)
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
    )["SecurityGroups"]
    if groups:
        group_id = groups[0]["GroupId"]
        permissions = groups[0].get("IpPermissions", [])
    else:
        group_id = ec2.create_security_group(
            GroupName=name,
            Description=f"Jupyter Fleet course {course}: SSH only",
            VpcId=vpc,
            TagSpecifications=[_tag_spec("security-group", course)],
        )["GroupId"]
        permissions = []
    extra = _unwanted_permissions(permissions, cidr)
    if extra:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=extra)
    if not _has_ssh_rule(permissions, cidr):
        rng = ({"Ipv6Ranges": [{"CidrIpv6": cidr, "Description": "jupyter-fleet ssh"}]}
               if ":" in cidr else {"IpRanges": [{"CidrIp": cidr, "Description": "jupyter-fleet ssh"}]})
        ec2.authorize_security_group_ingress(
            GroupId=group_id, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **rng}]
        )
    return group_id


# ---------------------------------------------------------------------- AMI


def resolve_ami(
    session: Any, ec2: Any, ami: str | None = None, ssm_parameter: str = DLAMI_SSM_PARAMETER
) -> str:
    """Explicit AMI (checked to exist), else the DLAMI SSM parameter, else a name search."""
    if ami:
        try:
            ec2.describe_images(ImageIds=[ami])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")).startswith("InvalidAMIID"):
                raise CloudError(f"AMI {ami} does not exist in this region (AMI ids are per region)") from None
            raise
        return ami
    try:
        ssm = session.client("ssm", config=_BOTO_CONFIG)
        value = ssm.get_parameter(Name=ssm_parameter)["Parameter"]["Value"]
        if value.startswith("ami-"):
            return value
    except ClientError:
        pass  # not found in this partition, or SSM not allowed by policy: search by name
    for pattern in DLAMI_NAME_PATTERNS:
        images = ec2.describe_images(
            Owners=["amazon"],
            Filters=[
                {"Name": "name", "Values": [pattern]},
                {"Name": "architecture", "Values": ["x86_64"]},
                {"Name": "state", "Values": ["available"]},
            ],
        )["Images"]
        # Neuron images target Inferentia/Trainium and lack the NVIDIA driver.
        images = [i for i in images if "neuron" not in i.get("Name", "").lower()]
        if images:
            return max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"]
    raise CloudError("no Deep Learning AMI found in this region: pass --ami with an Ubuntu image id")


# ------------------------------------------------------------------ instances


def _tag_spec(resource: str, course: str, **extra: str) -> dict[str, Any]:
    tags = {MANAGED_TAG: "true", COURSE_TAG: course, **extra}
    return {"ResourceType": resource, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}


def _to_instance(raw: dict[str, Any]) -> Instance:
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    slot_text = tags.get(SLOT_TAG, "")
    itype = raw.get("InstanceType", "")
    return Instance(
        id=raw["InstanceId"],
        name=tags.get("Name", raw["InstanceId"]),
        slot=int(slot_text) if slot_text.isdigit() else None,
        state=raw.get("State", {}).get("Name", "unknown"),
        type=itype,
        public_ip=raw.get("PublicIpAddress"),
        private_ip=raw.get("PrivateIpAddress"),
        launch_time=raw.get("LaunchTime"),
        key_name=raw.get("KeyName"),
        gpu=is_gpu_type(itype),
    )


def _describe(ec2: Any, course: str, states: Iterable[str]) -> list[Instance]:
    filters = [
        {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]},
        {"Name": f"tag:{COURSE_TAG}", "Values": [course]},
        {"Name": "instance-state-name", "Values": list(states)},
    ]
    found: list[Instance] = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            for raw in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
                # Re-checked here, not only trusted to the filter: these are the
                # instances stop/terminate will act on.
                if tags.get(MANAGED_TAG) == "true" and tags.get(COURSE_TAG) == course:
                    found.append(_to_instance(raw))
    return sorted(found, key=_slot_order)


def course_instances(
    course: str, region: str | None = None, states: Iterable[str] = ACTIVE_STATES
) -> list[Instance]:
    """The course's managed instances in the given states, ordered by slot."""
    _check_course(course)
    _, ec2, name = _ec2(region)
    with _aws(name):
        return _describe(ec2, course, states)


def _run_one(ec2: Any, course: str, slot: int, *, ami: str, instance_type: str,
             key: str, group_id: str) -> Instance:
    name = f"{course}-{slot}"
    tags = _tag_spec("instance", course, Name=name, **{SLOT_TAG: str(slot)})
    resp = ec2.run_instances(
        ImageId=ami,
        InstanceType=instance_type,
        KeyName=key,
        SecurityGroupIds=[group_id],
        MinCount=1,
        MaxCount=1,
        # The idle auto-stop runs `poweroff` inside the VM: with "stop" that stops the
        # instance (disk kept, billing paused) instead of destroying a student's work.
        InstanceInitiatedShutdownBehavior="stop",
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},
        # Tags go on at creation (one call per slot, as tags differ): an instance can
        # never exist untagged, so it can never escape status/stop/terminate.
        TagSpecifications=[tags, {**_tag_spec("volume", course, Name=name)}],
        # Retries of this same call (by botocore) must not start a second instance.
        ClientToken=f"{course[:24]}-{slot}-{uuid.uuid4().hex}",
    )
    return _to_instance(resp["Instances"][0])


def launch(
    course: str,
    count: int,
    *,
    instance_type: str = "g4dn.xlarge",
    region: str | None = None,
    ami: str | None = None,
    cidr: str | None = None,
    key_dir: Path | str = DEFAULT_KEY_DIR,
    wait_ssh: bool = True,
    user: str = "ubuntu",
    ssh_timeout: float = 600.0,
    ip_lookup: Callable[[], str] = caller_public_ip,
) -> LaunchResult:
    """Bring the course up to `count` managed instances; safe to re-run.

    Existing non-terminated instances (stopped ones included) count towards `count`;
    only the missing slots are launched, lowest numbers first. Never shrinks.
    `user` is accepted for symmetry with inventory_hosts (the AMI decides the login).
    """
    _check_course(course)
    if count < 1:
        raise CloudError("count must be at least 1")
    session, ec2, region_name = _ec2(region)
    allowed = normalize_cidr(cidr if cidr else f"{ip_lookup()}/32")
    with _aws(region_name, instance_type):
        key, path, key_action = ensure_key_pair(ec2, course, key_dir)
        group_id = ensure_security_group(ec2, course, allowed)
        existing = _describe(ec2, course, ACTIVE_STATES)
        result = LaunchResult(course, region_name, key, path, key_action, group_id, allowed, None,
                              existing=existing)
        missing = free_slots((i.slot for i in existing if i.slot is not None), count - len(existing))
        if len(existing) > count:
            result.notes.append(f"{len(existing)} instances exist, more than {count}: none removed")
        if missing:
            result.ami = resolve_ami(session, ec2, ami)
        for slot in missing:
            try:
                result.launched.append(_run_one(ec2, course, slot, ami=result.ami or "",
                                                instance_type=instance_type, key=key,
                                                group_id=group_id))
            except ClientError as exc:
                done = ", ".join(i.name for i in result.launched) or "none"
                err = explain(exc, region=region_name, instance_type=instance_type)
                raise CloudError(f"{err} (launched before the error: {done}; re-running launch "
                                 "only adds the missing slots)") from None
        stopped = [i.name for i in existing if i.state in ("stopped", "stopping")]
        if stopped:
            result.notes.append(f"stopped, left as is (use `invoke start`): {', '.join(stopped)}")
        waiting = [i.id for i in result.launched + existing if i.state in ("pending", "running")]
        if waiting:
            ec2.get_waiter("instance_running").wait(
                InstanceIds=waiting, WaiterConfig={"Delay": 5, "MaxAttempts": 120}
            )
        # Re-read: public addresses are only known once the instances run.
        current = {i.id: i for i in _describe(ec2, course, ACTIVE_STATES)}
        result.launched = [current.get(i.id, i) for i in result.launched]
        result.existing = [current.get(i.id, i) for i in result.existing]
    if wait_ssh:
        deadline = time.monotonic() + ssh_timeout
        silent = [
            i.name for i in result.instances
            if i.state == "running" and (i.public_ip or i.private_ip)
            and not wait_for_ssh(i.public_ip or i.private_ip or "", 22,
                                 max(1.0, deadline - time.monotonic()))
        ]
        if silent:
            raise CloudError(
                f"instances are running but SSH did not answer within {int(ssh_timeout)}s: "
                f"{', '.join(silent)}; check that your address is inside {allowed} and re-run "
                "launch (it will not start more instances)"
            )
    return result


# -------------------------------------------------------------- inventory


def inventory_hosts(
    course: str,
    region: str | None = None,
    user: str = "ubuntu",
    key_dir: Path | str = DEFAULT_KEY_DIR,
) -> dict[str, Any]:
    """The running instances in the fleet's native inventory shape, with gpu/cpu groups."""
    keyfile = str(key_path(course, key_dir))
    hosts: dict[str, Any] = {}
    groups: dict[str, dict[str, list[str]]] = {"gpu": {"hosts": []}, "cpu": {"hosts": []}}
    for inst in course_instances(course, region, states=("running",)):
        address = inst.public_ip or inst.private_ip
        if not address:
            continue
        name = inst.name if inst.name not in hosts else f"{inst.name}-{inst.id}"
        hosts[name] = {
            "address": address,
            "user": user,
            "key": keyfile,
            "vars": {"instance_type": inst.type, "gpu": inst.gpu, "instance_id": inst.id},
        }
        groups["gpu" if inst.gpu else "cpu"]["hosts"].append(name)
    return {"hosts": hosts, "groups": groups}


def write_snapshot(
    course: str,
    path: Path | str,
    region: str | None = None,
    user: str = "ubuntu",
    key_dir: Path | str = DEFAULT_KEY_DIR,
) -> Path:
    """Write inventory_hosts() as a YAML inventory file (a frozen copy of `aws:<course>`)."""
    data = inventory_hosts(course, region, user=user, key_dir=key_dir)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# Snapshot of AWS course {course!r} taken {stamp} by `invoke snapshot`.\n"
              "# Addresses change when instances stop/start: re-run the snapshot, or use\n"
              f"# --inventory aws:{course} to always read the live list.\n")
    out.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return out


# ------------------------------------------------------------------ costs


@lru_cache(maxsize=4)
def _load_prices(path: str) -> PriceTable:
    data = yaml.safe_load(Path(path).read_text())
    return PriceTable(
        date=str(data.get("date", "unknown")),
        source=str(data.get("source", "")).strip(),
        region=str(data.get("region", "")),
        hourly={str(k): float(v) for k, v in (data.get("hourly") or {}).items()},
    )


def load_prices(path: Path | str = PRICES_FILE) -> PriceTable:
    return _load_prices(str(path))


def status_rows(
    instances: Iterable[Instance], prices: PriceTable, now: datetime | None = None
) -> list[StatusRow]:
    """Uptime and cost of each instance's current run; pure, so it is testable offline.

    EC2 bills Linux per second with a 60 s minimum. Only running/pending instances
    cost per hour; stopped ones cost 0/h (their EBS volumes still cost, not shown).
    """
    now = now or datetime.now(timezone.utc)
    rows = []
    for inst in instances:
        price = prices.hourly.get(inst.type)
        running = inst.state in ("pending", "running")
        uptime = (now - inst.launch_time) if (running and inst.launch_time) else None
        if uptime is not None and uptime.total_seconds() < 0:
            uptime = timedelta(0)
        hourly = price if running else 0.0
        if not running:
            cost: float | None = 0.0
        elif price is None or uptime is None:
            cost = None
        else:
            cost = price * max(uptime.total_seconds(), 60.0) / 3600.0
        rows.append(StatusRow(inst.id, inst.name, inst.state, inst.type, uptime, hourly, cost))
    return rows


def status(course: str, region: str | None = None, *, now: datetime | None = None) -> list[StatusRow]:
    """One row per non-terminated instance: state, type, uptime, $/hour and cost so far."""
    return status_rows(course_instances(course, region), load_prices(), now)


# -------------------------------------------------------------- lifecycle


def _act(course: str, region: str | None, states: Iterable[str], call: str) -> list[Instance]:
    _check_course(course)
    _, ec2, name = _ec2(region)
    with _aws(name):
        targets = _describe(ec2, course, states)
        if targets:
            getattr(ec2, call)(InstanceIds=[i.id for i in targets])
    return targets


def stop(course: str, region: str | None = None) -> list[Instance]:
    """Stop the course's running instances (disks kept); returns those acted on."""
    return _act(course, region, ("pending", "running"), "stop_instances")


def start(course: str, region: str | None = None) -> list[Instance]:
    """Start the course's stopped instances; returns those acted on."""
    return _act(course, region, ("stopped",), "start_instances")


def terminate(course: str, region: str | None = None) -> list[Instance]:
    """Terminate (destroy, disks included) the course's instances; returns those acted on.

    The key pair and security group are kept, so a later launch reuses them.
    """
    return _act(course, region, ACTIVE_STATES, "terminate_instances")
