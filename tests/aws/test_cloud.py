"""fleet.aws.cloud and the AWS commands (fleet/cli_cloud.py) against a moto server over real HTTP.

moto runs as a separate process (`python -m moto.server`); boto3 reaches it through
the standard AWS_ENDPOINT_URL variable, exactly like it would reach AWS. Nothing in
this process is patched. The server's state is reset before every test.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from invoke import Exit

from fleet.aws import cloud

from fleet import commands
from fleet.aws.cloud import CloudError

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
CIDR = "198.51.100.23/32"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    port = _free_port()
    folder = tmp_path_factory.mktemp("moto")
    log = (folder / "moto.log").open("w")
    # the recorder (off until a test starts it) writes the requests moto received here
    env = dict(os.environ, MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="true",
               MOTO_RECORDER_FILEPATH=str(folder / "recording.jsonl"))
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:   # a loaded machine: moto is only slow to stop, the tests are done
        proc.kill()
        proc.wait()
    log.close()


def _isolate_env(monkeypatch, tmp_path: Path) -> None:
    """No host AWS config can leak in; no slow instance-metadata lookups."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION",
                "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "aws-credentials").write_text("")
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """Fake credentials, moto endpoint, clean server; returns a plain boto3 EC2 client."""
    urllib.request.urlopen(urllib.request.Request(moto_url + "/moto-api/reset", method="POST")).close()
    _isolate_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.chdir(tmp_path)  # default key dir .fleet/keys lands in tmp
    return boto3.client("ec2", region_name=REGION)


@pytest.fixture
def ami(aws) -> str:
    images = aws.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["ubuntu/*"]}])
    return images["Images"][0]["ImageId"]


def up(course: str, count: int, tmp_path: Path, ami: str, **kw) -> cloud.LaunchResult:
    kw.setdefault("cidr", CIDR)
    kw.setdefault("wait_ssh", False)
    return cloud.launch(course, count, ami=ami, key_dir=tmp_path / "keys", **kw)


def tags_of(ec2, instance_id: str) -> dict[str, str]:
    raw = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in raw.get("Tags", [])}


def ingress(ec2, course: str) -> list[dict]:
    group = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"jupyter-fleet-{course}"]}])["SecurityGroups"]
    assert len(group) == 1
    return group[0]["IpPermissions"]


def simple_rules(perms: list[dict]) -> set[tuple]:
    out = set()
    for p in perms:
        for r in p.get("IpRanges", []):
            out.add((p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), r["CidrIp"]))
        for r in p.get("Ipv6Ranges", []):
            out.add((p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), r["CidrIpv6"]))
    return out


# --------------------------------------------------------------------- launch


def test_launch_twice_no_duplicates_then_tops_up(aws, tmp_path, ami):
    first = up("ds100", 2, tmp_path, ami)
    assert [i.slot for i in first.launched] == [1, 2]
    assert first.existing == [] and first.key_action == "created" and first.ami == ami
    assert {i.state for i in first.instances} == {"running"}

    again = up("ds100", 2, tmp_path, ami)
    assert again.launched == [] and [i.slot for i in again.existing] == [1, 2]
    assert again.ami is None  # nothing to launch: no AMI lookup at all
    assert again.key_action == "existing"

    more = up("ds100", 3, tmp_path, ami)
    assert [i.slot for i in more.launched] == [3]
    assert [i.name for i in cloud.course_instances("ds100")] == ["ds100-1", "ds100-2", "ds100-3"]

    new = more.launched[0]
    assert tags_of(aws, new.id) == {"jupyter-fleet:managed": "true", "jupyter-fleet:course": "ds100",
                                    "jupyter-fleet:slot": "3", "Name": "ds100-3"}
    attr = aws.describe_instance_attribute(InstanceId=new.id, Attribute="instanceInitiatedShutdownBehavior")
    assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "stop"
    assert new.key_name == "jupyter-fleet-ds100" and new.type == "g4dn.xlarge" and new.gpu

    # a terminated slot is refilled with its own number, not appended
    aws.terminate_instances(InstanceIds=[first.launched[1].id])
    refill = up("ds100", 3, tmp_path, ami)
    assert [i.slot for i in refill.launched] == [2]
    assert len(cloud.course_instances("ds100")) == 3

    # asking for fewer never removes anything
    fewer = up("ds100", 1, tmp_path, ami)
    assert fewer.launched == [] and len(fewer.existing) == 3 and fewer.notes


def test_key_file_0400_reused_imported_and_missing(aws, tmp_path, ami):
    first = up("bio", 1, tmp_path, ami)
    key = tmp_path / "keys" / "bio.pem"
    assert first.key_file == key
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert "PRIVATE KEY" in key.read_text()
    before = (key.stat().st_ino, key.stat().st_mtime_ns, key.read_bytes())
    aws.describe_key_pairs(KeyNames=["jupyter-fleet-bio"])

    second = up("bio", 1, tmp_path, ami)
    assert second.key_action == "existing"
    assert (key.stat().st_ino, key.stat().st_mtime_ns, key.read_bytes()) == before

    # EC2 lost the pair but we still have the key: the public half is imported
    aws.delete_key_pair(KeyName="jupyter-fleet-bio")
    third = up("bio", 1, tmp_path, ami)
    assert third.key_action == "imported"
    pair = aws.describe_key_pairs(KeyNames=["jupyter-fleet-bio"])["KeyPairs"][0]
    assert pair["KeyName"] == "jupyter-fleet-bio"
    assert key.read_bytes() == before[2]

    # EC2 has the pair but the local key is gone: refuse, say what to do
    key.chmod(0o600)
    key.unlink()
    with pytest.raises(CloudError) as err:
        up("bio", 1, tmp_path, ami)
    assert "delete-key-pair" in str(err.value) and str(key) in str(err.value)


def test_security_group_exactly_ssh_from_cidr(aws, tmp_path, ami):
    result = up("geo", 1, tmp_path, ami)
    assert simple_rules(ingress(aws, "geo")) == {("tcp", 22, 22, CIDR)}
    raw = aws.describe_instances(InstanceIds=[result.launched[0].id])["Reservations"][0]["Instances"][0]
    assert [g["GroupId"] for g in raw["SecurityGroups"]] == [result.security_group_id]

    # someone opens Jupyter to the world and adds another SSH source by hand
    aws.authorize_security_group_ingress(GroupId=result.security_group_id, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8888, "ToPort": 8888, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "192.0.2.0/24"}],
         "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
    ])
    assert len(simple_rules(ingress(aws, "geo"))) == 5
    up("geo", 1, tmp_path, ami)
    assert simple_rules(ingress(aws, "geo")) == {("tcp", 22, 22, CIDR)}

    # a new address replaces the old one; a bare IP becomes /32
    up("geo", 1, tmp_path, ami, cidr="203.0.113.9")
    assert simple_rules(ingress(aws, "geo")) == {("tcp", 22, 22, "203.0.113.9/32")}

    # default: the caller's public IP (injected here; real runs ask checkip.amazonaws.com)
    res = up("geo", 1, tmp_path, ami, cidr=None, ip_lookup=lambda: "192.0.2.44")
    assert res.cidr == "192.0.2.44/32"
    assert simple_rules(ingress(aws, "geo")) == {("tcp", 22, 22, "192.0.2.44/32")}

    with pytest.raises(CloudError, match="not an IP address"):
        up("geo", 1, tmp_path, ami, cidr="everyone")


# ------------------------------------------------------------------------- AMI


def test_ami_resolution(aws, tmp_path):
    session = boto3.session.Session(region_name=REGION)
    ec2 = session.client("ec2")
    # moto refuses to create parameters under the reserved /aws/ prefix, so the SSM
    # path is exercised with a parameter name of our own
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/test/dlami/ami-id", Value="ami-0123456789abcdef0", Type="String")
    assert cloud.resolve_ami(session, ec2, ssm_parameter="/test/dlami/ami-id") == "ami-0123456789abcdef0"

    # the real public parameter does not exist in moto: the name search finds moto's DLAMI
    dlami = cloud.resolve_ami(session, ec2)
    image = ec2.describe_images(ImageIds=[dlami])["Images"][0]
    assert image["Name"].startswith("Deep Learning") and "Ubuntu" in image["Name"]

    with pytest.raises(CloudError, match="ami-00000000deadbeef0 does not exist"):
        cloud.resolve_ami(session, ec2, "ami-00000000deadbeef0")

    result = cloud.launch("nlp", 1, cidr=CIDR, key_dir=tmp_path / "keys", wait_ssh=False)
    assert result.ami == dlami


# ------------------------------------------------------------ inventory, status


def test_inventory_groups_and_snapshot(aws, tmp_path, ami):
    up("ml", 1, tmp_path, ami, instance_type="t3.micro")
    up("ml", 3, tmp_path, ami, instance_type="g4dn.xlarge")
    up("other", 1, tmp_path, ami)
    third = [i for i in cloud.course_instances("ml") if i.slot == 3][0]
    aws.stop_instances(InstanceIds=[third.id])  # only running instances are inventory

    inv = cloud.inventory_hosts("ml", key_dir=tmp_path / "keys")
    assert sorted(inv["hosts"]) == ["ml-1", "ml-2"]
    assert inv["groups"] == {"gpu": {"hosts": ["ml-2"]}, "cpu": {"hosts": ["ml-1"]}}
    host = inv["hosts"]["ml-2"]
    assert host["user"] == "ubuntu" and host["key"] == str(tmp_path / "keys" / "ml.pem")
    assert host["vars"]["instance_type"] == "g4dn.xlarge" and host["vars"]["gpu"] is True
    assert host["vars"]["instance_id"].startswith("i-")
    live = {i.name: i for i in cloud.course_instances("ml")}
    assert host["address"] == live["ml-2"].public_ip

    out = cloud.write_snapshot("ml", tmp_path / "inventory" / "ml-aws.yml", key_dir=tmp_path / "keys")
    assert yaml.safe_load(out.read_text()) == inv

    commands.run("snapshot", course="ml", key_dir=str(tmp_path / "keys"))
    assert yaml.safe_load((tmp_path / "inventory" / "ml-aws.yml").read_text()) == inv


def test_status_rows_and_costs(aws, tmp_path, ami, capsys):
    up("cost", 1, tmp_path, ami, instance_type="g4dn.xlarge")
    up("cost", 2, tmp_path, ami, instance_type="m6i.large")  # valid type, not in our table
    up("cost", 3, tmp_path, ami, instance_type="t3.micro")
    t3 = [i for i in cloud.course_instances("cost") if i.slot == 3][0]
    aws.stop_instances(InstanceIds=[t3.id])

    prices = cloud.load_prices()
    assert prices.date and "us-east-1" in prices.source and prices.hourly["g4dn.xlarge"] > 0
    launched = {i.name: i.launch_time for i in cloud.course_instances("cost")}
    now = launched["cost-1"] + timedelta(hours=2)
    rows = {r.name: r for r in cloud.status("cost", now=now)}

    gpu = rows["cost-1"]
    assert gpu.state == "running" and gpu.hourly_usd == prices.hourly["g4dn.xlarge"]
    assert gpu.uptime == timedelta(hours=2)
    assert gpu.cost_usd == pytest.approx(2 * prices.hourly["g4dn.xlarge"])
    unknown = rows["cost-2"]
    assert unknown.hourly_usd is None and unknown.cost_usd is None  # unknown, never 0
    stopped = rows["cost-3"]
    assert stopped.state == "stopped" and stopped.hourly_usd == 0.0 and stopped.uptime is None

    commands.run("status", course="cost")
    shown = capsys.readouterr().out
    assert "cost-1" in shown and "unknown" in shown and prices.date in shown and "total" in shown


def test_status_rows_minimum_billing_is_one_minute():
    prices = cloud.PriceTable("d", "s", "us-east-1", {"t3.micro": 3.6})
    inst = cloud.Instance("i-1", "c-1", 1, "running", "t3.micro", None, None, None, None, False)
    from datetime import datetime, timezone
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    fresh = cloud.status_rows([cloud.Instance(**{**inst.__dict__, "launch_time": now})], prices, now)[0]
    assert fresh.cost_usd == pytest.approx(3.6 / 60)


# ----------------------------------------------------------- stop/start/terminate


def test_stop_start(aws, tmp_path, ami):
    up("art", 2, tmp_path, ami)
    stopped = cloud.stop("art")
    assert sorted(i.name for i in stopped) == ["art-1", "art-2"]
    assert {i.state for i in cloud.course_instances("art")} <= {"stopping", "stopped"}
    assert cloud.stop("art") == []  # nothing running any more
    started = cloud.start("art")
    assert sorted(i.name for i in started) == ["art-1", "art-2"]
    assert {i.state for i in cloud.course_instances("art")} <= {"pending", "running"}
    assert cloud.start("art") == []


def test_terminate_touches_only_this_courses_managed_instances(aws, tmp_path, ami):
    mine = up("chem", 2, tmp_path, ami)
    up("phys", 1, tmp_path, ami)

    def plain(tags: dict[str, str]) -> str:
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}] if tags else []
        return aws.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                 TagSpecifications=spec)["Instances"][0]["InstanceId"]

    untagged = plain({})
    course_tag_only = plain({"jupyter-fleet:course": "chem", "Name": "chem-9"})  # not managed by us
    managed_false = plain({"jupyter-fleet:managed": "false", "jupyter-fleet:course": "chem"})
    other_course = [i.id for i in cloud.course_instances("phys")]

    gone = cloud.terminate("chem")
    assert sorted(i.id for i in gone) == sorted(i.id for i in mine.launched)
    states = {i["InstanceId"]: i["State"]["Name"]
              for r in aws.describe_instances()["Reservations"] for i in r["Instances"]}
    for survivor in [untagged, course_tag_only, managed_false, *other_course]:
        assert states[survivor] in ("pending", "running"), survivor
    for victim in gone:
        assert states[victim.id] in ("shutting-down", "terminated")
    assert cloud.course_instances("chem") == []
    assert cloud.terminate("chem") == []
    # key pair and group are kept for the next launch
    aws.describe_key_pairs(KeyNames=["jupyter-fleet-chem"])
    assert ingress(aws, "chem")


def _run_task(args: list[str], env: dict, answer: str | None = None) -> subprocess.CompletedProcess:
    """Run the commands through invoke's real CLI and tasks.py; stdin empty unless `answer` is given."""
    stdin = {"stdin": subprocess.DEVNULL} if answer is None else {"input": answer}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, **stdin)


def test_tasks_cli_launch_and_terminate_confirmation(aws, tmp_path, ami):
    # moto's instances cannot be logged into: their work cannot be read, so each terminate here says
    # --discard-student-work (tests/aws/test_teardown_guard.py tests that refusal).
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", FLEET_STATE_DIR=str(tmp_path / "state"),
               FLEET_SSH_PERSIST="0")
    keys = tmp_path / "cli-keys"
    proc = _run_task(["launch", "--course", "cli", "--count", "2", "--instance-type", "t3.micro",
                      "--ami", ami, "--cidr", CIDR, "--no-wait-ssh", "--key-dir", str(keys)], env)
    assert proc.returncode == 0, proc.stderr
    assert "launched 2" in proc.stdout and "aws:cli" in proc.stdout
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr  # the key is never printed
    assert stat.S_IMODE((keys / "cli.pem").stat().st_mode) == 0o400

    # no terminal to ask: refuses, non-zero, nothing terminated
    proc = _run_task(["terminate", "--course", "cli", "--discard-student-work"], env)
    assert proc.returncode != 0
    assert "nothing terminated" in proc.stderr + proc.stdout
    assert len(cloud.course_instances("cli")) == 2

    # a wrong answer refuses too
    proc = _run_task(["terminate", "--course", "cli", "--discard-student-work"], env, answer="no\n")
    assert proc.returncode != 0 and len(cloud.course_instances("cli")) == 2

    proc = _run_task(["terminate", "--course", "cli", "--yes", "--discard-student-work"], env)
    assert proc.returncode == 0, proc.stderr
    assert cloud.course_instances("cli") == []

    proc = _run_task(["launch", "--help"], env)
    assert proc.returncode == 0 and "--[no-]wait-ssh" in proc.stdout

    proc = _run_task(["launch", "--course", "cli", "--count", "two"], env)
    assert proc.returncode != 0 and "whole number" in proc.stderr


def test_task_errors_become_exit(aws, tmp_path):
    with pytest.raises(Exit) as err:
        commands.run("status", course="x", region="mars-north-1")
    assert err.value.code == 1 and "unknown AWS region" in str(err.value.message)


# ------------------------------------------------------------------- errors


def test_missing_credentials(moto_url, monkeypatch, tmp_path):
    _isolate_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for call in (lambda: cloud.course_instances("x"),
                 lambda: cloud.launch("x", 1, cidr=CIDR, key_dir=tmp_path, wait_ssh=False)):
        with pytest.raises(CloudError, match="no AWS credentials") as err:
            call()
        assert "aws configure" in str(err.value)
    assert not list(tmp_path.glob("*.pem"))


def test_unknown_region_and_bad_course(aws, tmp_path, ami):
    with pytest.raises(CloudError, match="unknown AWS region 'xx-nowhere-1'"):
        cloud.course_instances("x", region="xx-nowhere-1")
    with pytest.raises(CloudError, match="unknown AWS region"):
        up("x", 1, tmp_path, ami, region="us-nowhere-9")
    with pytest.raises(CloudError, match="invalid course name"):
        cloud.course_instances("../etc")


def test_unavailable_instance_type_over_http(aws, tmp_path, ami):
    with pytest.raises(CloudError) as err:
        up("bad", 1, tmp_path, ami, instance_type="g99.mega")
    msg = str(err.value)
    assert "g99.mega is not available" in msg and "--instance-type" in msg


def _client_error(code: str, message: str, op: str = "RunInstances") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


@pytest.mark.parametrize("code,message,expect", [
    ("InstanceLimitExceeded", "Your quota allows for 0 more running instance(s).", "Running On-Demand G and VT instances"),
    ("VcpuLimitExceeded", "You have requested more vCPU capacity than your current vCPU limit of 0", "Service Quotas"),
    ("Unsupported", "Your requested instance type (g4dn.xlarge) is not supported in your requested Availability Zone", "not available"),
    ("InvalidParameterValue", "Invalid value 'g4dn.xlarge' for InstanceType.", "not available"),
    ("InsufficientInstanceCapacity", "We currently do not have sufficient capacity", "capacity"),
    ("AuthFailure", "AWS was not able to validate the provided access credentials AKIAIOSFODNN7EXAMPLE", "rejected the credentials"),
    ("UnauthorizedOperation", "You are not authorized to perform this operation.", "not allowed"),
    ("ExpiredToken", "The security token included in the request is expired", "expired"),
    ("OptInRequired", "You are not subscribed to this service.", "opted in"),
    ("SomethingNew", "odd failure from AKIAIOSFODNN7EXAMPLE", "SomethingNew"),
])
def test_error_messages(code, message, expect):
    err = cloud.explain(_client_error(code, message), region=REGION, instance_type="g4dn.xlarge")
    assert isinstance(err, CloudError) and expect in str(err)
    assert "AKIAIOSFODNN7EXAMPLE" not in str(err)


def test_p_family_quota_name():
    err = cloud.explain(_client_error("VcpuLimitExceeded", "limit"), instance_type="p3.2xlarge")
    assert "Running On-Demand P instances" in str(err)


# ---------------------------------------------------------------- helpers


def test_wait_for_ssh_against_local_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert cloud.wait_for_ssh("127.0.0.1", port, timeout=5) is True


class FakeClock:
    """time.monotonic and time.sleep for code under test: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now, self.sleeps = 100.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_ssh_gives_up_when_its_time_runs_out(monkeypatch):
    """A port that refuses: one attempt per interval until the timeout, never a sleep past it."""
    from fleet.aws import common

    clock, attempts = FakeClock(), []
    real_connect = socket.create_connection
    monkeypatch.setattr(common, "time", clock)
    monkeypatch.setattr(common.socket, "create_connection",
                        lambda address, timeout: attempts.append(timeout) or real_connect(address, timeout))
    assert cloud.wait_for_ssh("127.0.0.1", _free_port(), timeout=1.0, interval=0.25) is False
    assert attempts == [1.0, 0.75, 0.5, 0.25]    # each connect bounded by the time left
    assert clock.sleeps == [0.25] * 4 and clock.now == 101.0


def test_wait_for_ssh_sees_a_late_listener():
    port = _free_port()
    listener = socket.socket()

    def open_later():
        time.sleep(0.6)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    import threading
    t = threading.Thread(target=open_later)
    t.start()
    try:
        assert cloud.wait_for_ssh("127.0.0.1", port, timeout=10, interval=0.2) is True
    finally:
        t.join()
        listener.close()


@pytest.mark.parametrize("itype,gpu", [
    ("g4dn.xlarge", True), ("g5.12xlarge", True), ("p3.2xlarge", True), ("p4d.24xlarge", True),
    ("gr6.4xlarge", True), ("t3.micro", False), ("m5.large", False), ("c5.xlarge", False),
    ("inf2.xlarge", False),
])
def test_gpu_detection(itype, gpu):
    assert cloud.is_gpu_type(itype) is gpu


def test_free_slots():
    assert cloud.free_slots([], 2) == [1, 2]
    assert cloud.free_slots([1, 3], 2) == [2, 4]
    assert cloud.free_slots([1, 2], 0) == []


def test_price_table_has_the_promised_types():
    table = yaml.safe_load((REPO / "fleet" / "aws" / "prices.yml").read_text())
    assert table["date"] and table["source"]
    for t in ["t3.micro", "t3.xlarge", "m5.large", "m5.4xlarge", "c5.large", "g4dn.xlarge",
              "g4dn.12xlarge", "g5.xlarge", "g5.12xlarge", "p3.2xlarge", "p3.8xlarge", "p4d.24xlarge"]:
        assert table["hourly"][t] > 0
    assert json.dumps(table)  # plain data only
