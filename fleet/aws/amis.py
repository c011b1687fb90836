"""Which AMI a course boots: the Deep Learning AMI found through SSM, or by name."""
from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from fleet.aws.common import BOTO_CONFIG, DLAMI_NAME_PATTERNS, DLAMI_SSM_PARAMETER, CloudError

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
        ssm = session.client("ssm", config=BOTO_CONFIG)
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
