# Managed by Jupyter Fleet: the cluster across machines as ipyparallel's ClusterManager sees it.
#
# The JupyterLab "IPython Clusters" panel lists what its server extension loads from the profile's
# security/cluster-*.json files (ipyparallel ClusterManager.load_clusters -> Cluster.from_file).
# Fleet writes one such file on the head for the cluster its systemd services run; the classes it
# names are these. They describe the services and never start, stop or signal anything: the
# panel's start and stop answer 409 with a message, and the services keep running. Nor do they
# ever write or remove the file (ipyparallel would delete a file whose cluster looks stopped):
# Fleet alone owns it.
from __future__ import annotations

import subprocess

from ipyparallel.cluster import Cluster
from ipyparallel.cluster.launcher import BaseLauncher, ControllerLauncher, EngineLauncher
from tornado.web import HTTPError
from traitlets import Unicode

MESSAGE = ("cluster {0} runs as systemd services on its machines, managed by Jupyter Fleet: it cannot be "
           "started or stopped from here (its engines are in ipp.Client(); the instructor's `invoke "
           "provision` repairs it)")


class ManagedBySystemd(HTTPError):
    """A 409 whose message the panel shows; outside the server, an ordinary exception."""

    def __init__(self, cluster_id: str):
        super().__init__(409, MESSAGE.format(cluster_id))


class _Service(BaseLauncher):
    """A launcher that describes a systemd unit: `state` says running, nothing is ever launched."""

    unit = Unicode("").tag(to_dict=True)
    host = Unicode("").tag(to_dict=True)

    def find_args(self):
        return [f"systemd:{self.unit}@{self.host}"]

    async def start(self, *args, **kwargs):
        raise ManagedBySystemd(self.cluster_id)

    async def stop(self):
        raise ManagedBySystemd(self.cluster_id)

    def signal(self, sig):
        raise ManagedBySystemd(self.cluster_id)

    async def join(self, timeout=None):
        raise ManagedBySystemd(self.cluster_id)

    def get_output(self, remove=False):
        return ""


class ServiceControllerLauncher(_Service, ControllerLauncher):
    # Written into the cluster file as this importable path (ipyparallel would write module:Class).
    entrypoint_name = "jupyter_fleet_cluster.ServiceControllerLauncher"

    @classmethod
    def from_dict(cls, d, **kwargs):
        self = super().from_dict(d, **kwargs)
        # The controller runs on this host (the head): ask systemd, so a stopped one is shown as stopped
        # ('after': the cluster's model then has no "controller", which the panel reads as stopped).
        if subprocess.run(["systemctl", "is-active", "--quiet", self.unit], check=False).returncode != 0:
            self.state = "after"
        return self


class ServiceEngineSetLauncher(_Service, EngineLauncher):
    """One member's engines (`n` as configured, 0 for one per CPU); they run on that member."""

    entrypoint_name = "jupyter_fleet_cluster.ServiceEngineSetLauncher"


class ServiceCluster(Cluster):
    """The cluster of Fleet's services: listed by the panel, never started, stopped or rewritten."""

    def _is_running(self):
        # "Not running" as far as ClusterManager.load_clusters knows: it drops this object on every
        # listing and loads the file again, so the controller's state is systemd's of that moment.
        return False

    def update_cluster_file(self):
        pass

    def write_cluster_file(self):
        pass

    def remove_cluster_file(self):
        pass

    async def start_controller(self, **kwargs):
        raise ManagedBySystemd(self.cluster_id)

    async def start_engines(self, n=None, engine_set_id=None, **kwargs):
        raise ManagedBySystemd(self.cluster_id)

    async def start_cluster(self, n=None):
        raise ManagedBySystemd(self.cluster_id)

    async def stop_controller(self):
        raise ManagedBySystemd(self.cluster_id)

    async def stop_engines(self, engine_set_id=None):
        raise ManagedBySystemd(self.cluster_id)

    async def stop_cluster(self):
        raise ManagedBySystemd(self.cluster_id)
