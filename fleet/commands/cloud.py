"""The AWS commands, each described once (fleet/commands/spec.py says what a description is).
Their printing and exit codes are in fleet/cli_cloud.py, their work in fleet.aws (fleet/aws/cloud.py) and
fleet.course (bake, student work)."""
from __future__ import annotations

from fleet.aws import DEFAULT_INSTANCE_TYPE, DEFAULT_KEY_DIR, DEFAULT_USER
from fleet.commands.spec import Command, Option

COURSE = Option("course", "course name", required=True)
REGION = Option("region", "AWS region (default: from your profile)")
KEY_DIR = Option("key_dir", f"where the course private key lives (default {DEFAULT_KEY_DIR})", str(DEFAULT_KEY_DIR))
USER = Option("user", "SSH login user", DEFAULT_USER)
RECIPE = Option("inventory", "the course's recipe inventory (default inventory/<course>.yml)")
CIDR = Option("cidr", "address range allowed to SSH in (default: your public IP/32)")


def cloud(name: str, summary: str, function: str, *options: Option) -> Command:
    # --course has no default but is not positional, so `invoke <command> --help` works; missing, it exits 2.
    return Command(name, summary, f"fleet.cli_cloud:{function}", options, missing_exit=2)


COMMANDS = (
    cloud("launch", "Launch the missing instances of a course on EC2 (safe to re-run: never duplicates).", "launch",
          Option("course", "course name; used in tags, the key pair and the security group name", required=True),
          Option("count", "how many instances the course should have in total", required=True,
                 why="the total number of instances for the course"),
          Option("instance_type", f"EC2 instance type (default {DEFAULT_INSTANCE_TYPE}: one NVIDIA T4)",
                 DEFAULT_INSTANCE_TYPE),
          Option("region", "AWS region (default: from your AWS profile / AWS_DEFAULT_REGION)"),
          Option("ami", "AMI id (default: the latest AWS Deep Learning Base AMI, Ubuntu 22.04)"),
          CIDR,
          Option("wait_ssh", "wait until port 22 answers on every instance (default: yes)", True, "bool"),
          KEY_DIR,
          Option("image", "ID: boot from this course image; base: the base AMI (default: the newest image "
                          "matching the course's recipe, else the base AMI)"),
          RECIPE,
          Option("instance_profile", "attach this IAM instance profile (refused unless the course inventory sets "
                                     "aws_allow_instance_profile: true: students can read its credentials)")),
    cloud("status", "Show the course's instances with state, uptime and estimated cost.", "status", COURSE, REGION),
    cloud("stop", "Stop the course's running instances (disks and data are kept; compute billing stops).", "stop",
          COURSE, REGION),
    cloud("start", "Start the course's stopped instances (public IPs change: re-snapshot afterwards).", "start",
          COURSE, REGION),
    cloud("terminate", "Destroy the course's instances and their disks (asks first unless --yes); --images: its "
                       "images too.\nRefused while a machine holds student work that changed since the last "
                       "`invoke collect`.", "terminate",
          COURSE, REGION,
          Option("yes", "do not ask for confirmation", False, "bool"),
          Option("images_", "also deregister the course's images and delete their snapshots", False, "bool",
                 dest="with_images"),
          Option("collect", "collect the students' work first (into collected/<course>/), then terminate", False,
                 "bool"),
          Option("discard_student_work", "terminate even though student work was not collected (it is lost)", False,
                 "bool"),
          Option("inventory", "how the instances are reached for the work check (default aws:COURSE; hosts are "
                              "matched by their instance_id variable, as `invoke snapshot` writes them)"),
          Option("insecure_host_keys", "accept any host key (throwaway hosts)", False, "bool"),
          Option("to", "with --collect: where the work goes (default collected/<course>/)")),
    cloud("snapshot", "Write the course's running instances as a static YAML inventory file.", "snapshot",
          COURSE, Option("out", "output file (default inventory/<course>-aws.yml)"), REGION, USER, KEY_DIR),
    cloud("bake", "Make the course's image on a fresh builder: launch it from the base image, provision and verify "
                  "it,\nprepare and image it, terminate it (never a class machine).", "bake",
          COURSE,
          Option("builder", "take this running instance (name or id) as the builder instead of launching one; "
                            "refused if it was ever in a handout or has a student assigned; terminated afterwards"),
          RECIPE, REGION, USER, KEY_DIR,
          Option("instance_type", f"the builder's EC2 instance type (default {DEFAULT_INSTANCE_TYPE}; the class's "
                                  "type)", DEFAULT_INSTANCE_TYPE),
          Option("ami", "the base image the builder starts from (default: the latest Deep Learning Base AMI)"),
          CIDR,
          Option("insecure_host_keys", "accept any host key and record none", False, "bool")),
    cloud("images", "The course's images: id, date, recipe fingerprint, matches the current recipe, size, monthly "
                    "cost.", "list_images",
          COURSE, RECIPE, REGION,
          Option("prune", "deregister the images that do not match the current recipe and delete their snapshots",
                 False, "bool")),
    cloud("cluster-network", "Open each cluster's pinned ports between its member instances only (a security group "
                             "of its own).", "cluster_network",
          COURSE,
          Option("inventory", "the course's inventory, whose clusters_group names each cluster's group (default "
                              "inventory/<course>.yml)"),
          Option("cluster", "only this cluster (its group's name); default: every cluster the inventory defines"),
          Option("members", "override: these instances by name, comma separated, instead of the group's hosts "
                            "(needs --cluster)"),
          Option("ports", "override: the port range FIRST-LAST instead of the inventory's clusters_ports"),
          REGION),
)
