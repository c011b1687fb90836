"""EC2 for a course: key pairs, security groups, images, instances, prices (fleet/aws/cloud.py is its face).

The defaults the cloud calls and the commands' descriptions (fleet/commands/cloud.py) share live here, in
the package itself, so that describing the commands imports no boto3."""
from pathlib import Path

DEFAULT_KEY_DIR = Path(".fleet/keys")   # where each course's private key is written
DEFAULT_INSTANCE_TYPE = "g4dn.xlarge"   # one NVIDIA T4: the class's machine, and the builder's
DEFAULT_USER = "ubuntu"                 # the login user of the Deep Learning Base AMI
