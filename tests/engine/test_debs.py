"""One download per class for apt, on the controller: the .debs a host's apt names are fetched once
(from a loopback server here), checked against the hash apt's lists give, and a file the controller
cannot get is left to the host. The real `apt-get --print-uris` and the transfer are shown on real
hosts, one without internet, in tests/engine/test_pylock_hosts.py."""
from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from fleet.engine.debs import DebCache, DebUnavailable
from fleet.engine.sending import PackageCaches, shipment
from fleet.engine.steps import Apt
from fleet.engine.steps.base import Deb, Outcome
from fleet.engine.steps.packages import APT_AGE, apt_uris_fact, dpkg_fact

PAYLOAD = b"!<arch>\n" + bytes(range(256)) * 64


@pytest.fixture(scope="module")
def mirror():
    """A loopback mirror that counts the requests for each path."""
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            body = PAYLOAD if self.path.endswith(".deb") and "gone" not in self.path else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


def deb(base: str, name: str = "git_1%3a2.39.5-0+deb12u2_amd64.deb", digest: str | None = None) -> Deb:
    return Deb(f"{base}/pool/{name}", name, len(PAYLOAD), "sha256", digest or hashlib.sha256(PAYLOAD).hexdigest())


def test_a_deb_is_fetched_once_for_the_class(tmp_path, mirror):
    base, hits = mirror
    cache = DebCache(tmp_path)
    wanted = deb(base)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(cache.file(wanted))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 1 and paths[0].read_bytes() == PAYLOAD
    assert hits[f"/pool/{wanted.file}"] == 1


@pytest.mark.parametrize("case,change,message", [
    ("hash", {"digest": "0" * 64}, "does not match the host's lists"),
    ("gone from the mirror", {"name": "gone_1_amd64.deb"}, "404"),
    ("not a deb", {"name": "x_1_amd64.deb.sh"}, "odd file"),
    ("traversal", {"name": "../../etc/x.deb"}, "odd file"),
    ("hidden", {"name": ".x.deb"}, "odd file"),
])
def test_what_apt_names_is_checked(tmp_path, mirror, case, change, message, monkeypatch):
    monkeypatch.setattr("fleet.engine.debs.time.sleep", lambda s: None)
    base, _ = mirror
    with pytest.raises(DebUnavailable, match=message):
        DebCache(tmp_path).file(deb(base, **change))
    assert not list(tmp_path.glob("*.deb"))


def test_only_http_is_fetched(tmp_path):
    local = Deb("file:///etc/shadow", "x_1_amd64.deb", 1, "sha256", "0" * 64)
    with pytest.raises(DebUnavailable, match="only http"):
        DebCache(tmp_path).file(local)


def test_a_deb_the_controller_cannot_get_is_left_to_the_host(tmp_path, mirror):
    base, _ = mirror
    good, bad = deb(base), deb(base, name="curl_7.88.1_amd64.deb", digest="1" * 64)
    sending = shipment({3: Outcome(True, "install git", debs=(good,)), 5: Outcome(True, "install curl", debs=(bad,))},
                       PackageCaches.under(tmp_path))
    assert [name for _, name in sending.files] == [f"debs/{good.file}"]
    assert list(sending.notes) == [5] and "the host fetches what the controller could not get" in sending.notes[5]


PRINT_URIS = ("git\tun \t\n"
              "'http://mirror.example/debian/pool/main/g/git/git_2.39.5_amd64.deb' git_1%3a2.39.5_amd64.deb 7264720 "
              "SHA256:" + "a" * 64 + "\n")


def test_a_controller_sourced_apt_step_installs_from_its_cache_and_falls_back():
    step = Apt(("git",), source="controller")
    fact = apt_uris_fact(("git",))
    assert [f.key for f in step.facts()] == [fact.key, APT_AGE.key]
    installed, debs = fact.parse(PRINT_URIS)
    assert installed == {} and debs == [Deb("http://mirror.example/debian/pool/main/g/git/git_2.39.5_amd64.deb",
                                            "git_1%3a2.39.5_amd64.deb", 7264720, "sha256", "a" * 64)]
    outcome = step.plan({fact.key: (installed, debs), APT_AGE.key: 10 ** 9})
    assert outcome.debs == tuple(debs) and len(outcome.commands) == 1
    install, _, fallback = outcome.commands[0].partition(" || ")
    assert install.startswith("__apt 300 install") and "update" not in install and "update" in fallback
    done = step.plan({fact.key: ({"git": "1:2.39.5"}, []), APT_AGE.key: 10 ** 9})
    assert not done.changed and not done.debs


def test_an_index_sourced_apt_step_reads_dpkg_only():
    step = Apt(("git",))
    assert [f.key for f in step.facts()] == [dpkg_fact(("git",)).key, APT_AGE.key]
    outcome = step.plan({dpkg_fact(("git",)).key: {}, APT_AGE.key: 10 ** 9})
    assert outcome.debs == () and outcome.commands[0].startswith("__apt 300 update")
