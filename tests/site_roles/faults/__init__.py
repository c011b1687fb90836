"""Test role for faults: step 1 changes a config and notifies a handler, step 2 is slow (the
window where tests cut power or the connection), step 3 writes a second file."""
from fleet.shell import q
from fleet.engine.steps import Apt, Command, Directory, File, Handler


def steps(v, ctx):
    items = []
    if v.faults_package:
        items.append(Apt((v.faults_package,), lock_timeout=v.apt_lock_timeout))
    version = v.faults_version
    items += [
        Directory("/srv/faults"),
        File("/srv/faults/config", f"version = {version}\n" + "x" * 200_000 + "\n", notify=("record restart",)),
        Command(f"touch /srv/faults/slow-started && sleep {int(v.faults_sleep)} && touch /srv/faults/slow-{version}",
                creates=f"/srv/faults/slow-{version}", label="slow step"),
        File("/srv/faults/after", f"after {version}\n"),
        Directory(f"/srv/faults/label {v.faults_label}"),
        File(f"/srv/faults/label {v.faults_label}/content", f"{v.faults_label}\n"),
        Handler("record restart", f"echo {q(version)} >> /srv/faults/restarts"),
    ]
    return items
