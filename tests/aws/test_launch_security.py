"""What a launch asks EC2 for, read from the requests moto's server received (its recorder) and
from the instances it made: IMDSv2 with a hop limit of 1, and no instance profile unless the
course allowed one; a profile without that is refused before any request is sent."""
from __future__ import annotations

import base64
import json
import os
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from fleet.aws import cloud
from fleet.aws.profile import ProfileChoice
from tests.aws.test_cloud import CIDR, REPO, _run_task, ami, aws, moto_url, up  # noqa: F401 (fixtures)

PROFILE = "course-data-reader"


def _recorder(moto_url: str, action: str) -> None:  # noqa: F811
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/recorder/{action}", method="POST")).close()


@pytest.fixture
def recorded(aws, moto_url):  # noqa: F811
    """A function returning the EC2 actions moto received since the test started: [(action, params)]."""
    _recorder(moto_url, "reset-recording")
    _recorder(moto_url, "start-recording")

    def requests() -> list[tuple[str, dict[str, str]]]:
        text = urllib.request.urlopen(f"{moto_url}/moto-api/recorder/download-recording").read().decode()
        found = []
        for line in text.splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode()
            params = {k: v[0] for k, v in parse_qs(body).items()}
            if "Action" in params:
                found.append((params["Action"], params))
        return found

    yield requests
    _recorder(moto_url, "stop-recording")


def _run_instances(requests) -> list[dict[str, str]]:
    return [params for action, params in requests() if action == "RunInstances"]


def _described(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _iam_profile(ec2, name: str) -> None:
    iam = __import__("boto3").client("iam", region_name="us-east-1")
    iam.create_instance_profile(InstanceProfileName=name)


def test_every_launch_request_has_imdsv2_a_hop_limit_of_1_and_no_profile(aws, tmp_path, ami, recorded):  # noqa: F811
    result = up("sec", 2, tmp_path, ami, instance_type="t3.micro")
    sent = _run_instances(recorded)
    assert len(sent) == 2
    for params in sent:
        assert params["MetadataOptions.HttpTokens"] == "required"
        assert params["MetadataOptions.HttpPutResponseHopLimit"] == "1"
        assert not [k for k in params if k.startswith("IamInstanceProfile")], params
    for inst in result.launched:
        raw = _described(aws, inst.id)
        assert raw["MetadataOptions"]["HttpTokens"] == "required"
        assert raw["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert "IamInstanceProfile" not in raw


def test_a_profile_without_the_course_allowing_it_starts_nothing(aws, tmp_path, ami, recorded):  # noqa: F811
    with pytest.raises(cloud.CloudError, match=f"instance profile {PROFILE} .*refused.*aws_allow_instance_profile"):
        up("sec", 1, tmp_path, ami, instance_type="t3.micro", profile=ProfileChoice(PROFILE, False, "test"))
    assert recorded() == []          # not a single request: no key pair, group or instance
    assert aws.describe_instances()["Reservations"] == []


def _course(tmp_path: Path, **vars) -> Path:
    path = tmp_path / "sec.yml"
    path.write_text(yaml.safe_dump({"name": "sec", "vars": {"roles": ["jupyter"], **vars},
                                    "hosts": {"s1": {"address": "192.0.2.1"}}}))
    return path


def _launch(tmp_path: Path, ami: str, *extra: str):  # noqa: F811
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250")
    return _run_task(["launch", "--course", "sec", "--count", "1", "--instance-type", "t3.micro", "--ami", ami,
                      "--cidr", CIDR, "--no-wait-ssh", "--key-dir", str(tmp_path / "keys"), *extra], env)


@pytest.mark.parametrize("how", ["flag", "inventory"])
def test_the_cli_refuses_a_profile_the_course_did_not_allow_with_exit_1(aws, tmp_path, ami, recorded, how):  # noqa: F811
    if how == "flag":
        proc = _launch(tmp_path, ami, "--inventory", str(_course(tmp_path)), "--instance-profile", PROFILE)
    else:
        proc = _launch(tmp_path, ami, "--inventory", str(_course(tmp_path, aws_instance_profile=PROFILE)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"instance profile {PROFILE}" in proc.stderr and "aws_allow_instance_profile: true" in proc.stderr
    assert _run_instances(recorded) == [] and aws.describe_instances()["Reservations"] == []


def test_a_profile_the_course_allowed_is_attached_with_a_warning(aws, tmp_path, ami, recorded):  # noqa: F811
    _iam_profile(aws, PROFILE)
    course = _course(tmp_path, aws_instance_profile=PROFILE, aws_allow_instance_profile=True)
    proc = _launch(tmp_path, ami, "--inventory", str(course))
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" in proc.stdout and "every student with a shell" in proc.stdout
    [params] = _run_instances(recorded)
    assert params["IamInstanceProfile.Name"] == PROFILE
    assert params["MetadataOptions.HttpPutResponseHopLimit"] == "1"
    [inst] = cloud.course_instances("sec")
    assert PROFILE in _described(aws, inst.id)["IamInstanceProfile"]["Arn"]


def test_a_bad_allow_value_is_refused_naming_the_file_and_key(aws, tmp_path, ami):  # noqa: F811
    course = _course(tmp_path, aws_instance_profile=PROFILE, aws_allow_instance_profile="yes")
    proc = _launch(tmp_path, ami, "--inventory", str(course))
    assert proc.returncode == 1
    assert f"{course}: vars.aws_allow_instance_profile: expected true or false, got 'yes'" in proc.stderr
