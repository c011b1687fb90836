"""The local commands, each described once (fleet/commands/spec.py says what a description is).
Their work is in fleet.cli (printing, exit codes) over fleet.app; demo and bench in their own faces."""
from __future__ import annotations

from fleet.commands.spec import Command, Option
from fleet.transport.base import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S, PARALLEL

HOSTS = Option("hosts", "host pattern: names, groups, globs (gpu-*), comma lists, !exclusions, @failed", "all")
INVENTORY = Option("inventory", "inventory file, or aws:COURSE (default: $FLEET_INVENTORY, inventory/local.yml, "
                                "inventory/aws-lab.yml)")
INSECURE = Option("insecure_host_keys", "accept any host key (throwaway hosts)", False, "bool")
ANY_KEY = Option("insecure_host_keys", "accept any host key", False, "bool")

COMMANDS = (
    Command("provision", "Converge hosts to their roles; re-run any time to repair drift.", "fleet.cli:provision", (
        HOSTS, INVENTORY,
        Option("roles", "only these roles, comma separated"),
        Option("check", "report what would change, change nothing", False, "bool"),
        Option("diff", "show unified diffs of files", False, "bool"),
        Option("set", "KEY=VALUE overriding every inventory level (repeatable)", kind="list", dest="set_"),
        Option("json", "write the full result here", dest="json_path"),
        Option("parallel", f"hosts at once (default {PARALLEL})", PARALLEL, "int"),
        Option("max_fail", "stop starting hosts after this many failures (N or N%)"),
        Option("verify", "run every role's verification, not only the cheap ones", False, "bool"),
        Option("insecure_host_keys", "accept any host key and record none (throwaway hosts only)", False, "bool"),
        Option("sudo_password", "read a sudo password from the terminal (prompted, never echoed)", False, "bool",
               dest="ask_sudo_password"),
        Option("verbose", "show every step, not only changes", False, "bool"),
        Option("connect_timeout", f"seconds to wait for a host's SSH (default {CONNECT_TIMEOUT_S})",
               CONNECT_TIMEOUT_S, "int"),
        Option("command_timeout", f"seconds a host's script may run (default {COMMAND_TIMEOUT_S})",
               COMMAND_TIMEOUT_S, "int"))),
    Command("check", "Drift report: what provision would change, with diffs. Exit 4 when drift is found.",
            "fleet.cli:provision", (
                HOSTS, INVENTORY, Option("roles", "only these roles"),
                Option("diff", "show unified diffs", True, "bool"),
                Option("json", "write the drift report here", dest="json_path"),
                Option("insecure_host_keys", "accept any host key (throwaway hosts)", False, "bool")),
            fixed={"check": True}),
    Command("facts", "Show each host's facts (OS, CPUs, memory, disk, Python, GPUs): one probe per host.",
            "fleet.cli:facts", (HOSTS, INVENTORY, ANY_KEY)),
    Command("vars", "Every variable of a host with the level it came from (secrets masked).", "fleet.cli:show_vars", (
        Option("host", "the host to show", positional=True), INVENTORY,
        Option("set", "KEY=VALUE overrides (repeatable)", kind="list", dest="set_"))),
    Command("tunnel", "Print (or open) the SSH tunnel to a host's Jupyter, and its URL with the token.",
            "fleet.cli:tunnel", (
                Option("host", "the host to reach", positional=True), INVENTORY,
                Option("local_port", "local end of the tunnel"),
                Option("open", "run the tunnel now instead of printing the command", False, "bool", dest="run"))),
    Command("handout", "The instructor's class list (student, host, tunnel, URL with token), or --bundle DIR: one "
                       "folder per student.", "fleet.cli:handout", (
        HOSTS, INVENTORY, Option("format", "csv or md", "md", dest="fmt"),
        Option("output", "file to write (default: stdout)"),
        Option("bundle", "write one folder per student here instead: their key, tunnel commands, URL, how-to"))),
    Command("students", "Who has which machine (the roster), how they log in, and what their key opens.",
            "fleet.cli:students", (INVENTORY,)),
    Command("lock", "Resolve the course's Python packages once, with hashes, into <inventory>.lock.yml (commit it).",
            "fleet.cli:lock", (
                INVENTORY, Option("upgrade", "move every package to the newest version the roles allow", False, "bool"),
                Option("python", "the hosts' Python version to resolve for (default 3.11, Debian 12)"))),
    Command("gpus", "Fleet GPU table: model, count, memory, driver, CUDA, compute capability, can it run the "
                    "course's MXNet.", "fleet.cli:gpus", (HOSTS, INVENTORY, ANY_KEY)),
    Command("report", "One self-contained HTML page of the class: status, last provision, kernels, GPUs, autostop, "
                      "cost, drift.", "fleet.cli:report", (
        HOSTS, INVENTORY, Option("output", "the page to write (default class.html)", "class.html"),
        Option("json", "take statuses and drift from this provision/check --json file instead of a fresh check",
               dest="json_path"),
        Option("with_urls", "add each host's tunnel command and URL with its token (page written 0600)", False, "bool"),
        INSECURE)),
    Command("disconnect", "Close the SSH connections kept open between runs (they also close after "
                          "$FLEET_SSH_PERSIST s idle).", "fleet.cli:disconnect"),
    Command("demo", "Boot local Debian test hosts (root, no AWS) and provision the embedded demo course on them.",
            "fleet.testhosts.commands:demo", (
                Option("hosts", "how many local test hosts to boot (default 2)", 2, "int", dest="count"),
                Option("keep", "leave the hosts running afterwards", True, "bool"))),
    Command("demo-down", "Shut down the demo's local test hosts (refused while student work is uncollected).",
            "fleet.testhosts.commands:demo_down", (
                Option("collect", "collect the students' work first, then shut down", False, "bool",
                       dest="collect_first"),
                Option("discard_student_work", "shut down even though student work was not collected (it is lost)",
                       False, "bool", dest="discard"))),
    Command("lint", "The static checks alone: ruff, mypy and shellcheck (settings in pyproject.toml).",
            "fleet.lint:lint_command"),
    Command("test", "Run the static checks (ruff, mypy, shellcheck), then the whole test suite (integration tests "
                    "boot real hosts and need root).", "fleet.lint:test_command", (
        Option("k", "only tests matching this expression"),
        Option("unit", "skip the tests that boot hosts", False, "bool"),
        Option("lint", "run the static checks first (default; --no-lint skips them)", True, "bool")), context=True),
    Command("bench", "Benchmark cold provision (bare and from a baked image), no-op re-runs and drift repair on local "
                     "test hosts.", "bench.command:bench", (
        Option("hosts", "host counts to measure, comma separated (default 1,10,30)", "1,10,30"),
        Option("json", "write results here", "bench/results.json", dest="json_path"),
        Option("baked_only", "only the cold run from a baked image (skips the bare runs, the long part)", False, "bool"),
        Option("peer", "instead, Fleet side by side with this tool on the same workload: pyinfra (the `bench` extra)",
               ""),
        Option("peer_bin", "the peer's command, when it lives in another venv (e.g. /opt/pyinfra/bin/pyinfra)", ""),
        Option("offline", "with --peer: also Fleet cold on N more hosts that reach only the controller", False,
               "bool"))),
    Command("collect", "Collect each student's work (Jupyter folder and collect_paths) into "
                       "collected/<course>/<student>/.", "fleet.cli:collect", (
        HOSTS, INVENTORY,
        Option("to", "where to put the work: DIR/<student>/<time>/ (default collected/<course>/)"), INSECURE)),
    Command("restore", "Put a student's collected work back onto a machine, as the course user.", "fleet.cli:restore", (
        Option("student", "whose work to put back", required=True),
        Option("host", "onto this host (default: the host of that student)"),
        Option("from_", "which collect (a folder name under <student>/; default the latest)"), INVENTORY,
        Option("to", "the collected folder the work was collected into (default collected/<course>/)"),
        Option("overwrite", "replace files on the host even when they are newer than the collected copy",
               False, "bool"),
        INSECURE)),
)
