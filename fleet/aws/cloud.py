"""AWS lifecycle of a course, in one name for the tasks (imported on first use: boto3 costs
~0.15 s to import and most commands never touch AWS). Each resource has its own module:
common.py (tags, data, errors, session), keys.py, groups.py, amis.py, instances.py, prices.py.

Everything the fleet owns in EC2 is found again by tags, never by local state, so every
command can be re-run safely and two people running it see the same course: instances carry
``jupyter-fleet:managed=true``, ``jupyter-fleet:course=<course>``, ``jupyter-fleet:slot=<n>``
and ``Name=<course>-<n>``; stop/start/terminate only ever touch instances that carry *both*
the managed tag and the course tag; the key pair and the security group are both named
``jupyter-fleet-<course>``. Credentials and region come from the normal boto3 chain;
``AWS_ENDPOINT_URL`` is honoured, which is how the tests point us at a moto server. Every
boto3/botocore failure leaves as a ``CloudError`` whose message says what to do and never
contains credentials.
"""
from fleet.aws.amis import resolve_ami
from fleet.aws.common import (COURSE_TAG, DEFAULT_KEY_DIR, MANAGED_TAG, PREFIX, SLOT_TAG, CloudError, Instance,
                              LaunchResult, check_course, ec2_session, explain, explained_errors, free_slots,
                              group_name, is_gpu_type, key_name, key_path, wait_for_ssh)
from fleet.aws.groups import ensure_security_group
from fleet.aws.instances import (course_instances, inventory_hosts, launch, launch_builder, start, stop, terminate,
                                 terminate_builder, write_snapshot)
from fleet.aws.keys import ensure_key_pair
from fleet.aws.prices import PRICES_FILE, PriceTable, StatusRow, load_prices, status, status_rows

__all__ = ["resolve_ami", "COURSE_TAG", "DEFAULT_KEY_DIR", "MANAGED_TAG", "PREFIX", "SLOT_TAG", "CloudError",
           "Instance", "LaunchResult", "explained_errors", "check_course", "ec2_session", "explain", "free_slots",
           "group_name", "is_gpu_type", "key_name", "key_path", "wait_for_ssh", "ensure_security_group",
           "course_instances", "inventory_hosts", "launch", "launch_builder", "terminate_builder", "start", "stop", "terminate", "write_snapshot",
           "ensure_key_pair", "PRICES_FILE", "PriceTable", "StatusRow", "load_prices", "status", "status_rows"]
