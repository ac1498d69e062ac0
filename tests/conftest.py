"""Shared host fixtures: a fresh network namespace per test, entered or not; and the loader of
the scripts in tools/ that tests drive."""

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from virtnet.host import netns as host_netns

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load_tool(filename):
    """tools/FILENAME, a script rather than a package module, loaded by path (once per process)."""
    name = "virtnet_tools_" + Path(filename).stem.replace("-", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TOOLS / filename)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before it runs: its dataclasses and pickled functions look it up
        spec.loader.exec_module(module)
    return sys.modules[name]


def require_host_privileges():
    """Skip unless this process can create network namespaces and taps."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and taps")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/net/tun (the tun module)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip`")


@pytest.fixture
def outside_netns():
    """The name of a fresh network namespace with lo up; the test process stays where it is."""
    require_host_privileges()
    name = f"vnt-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        # Also removes every device still in it (once no fd holds the namespace).
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert name not in listed, f"namespace {name} is still there"


@pytest.fixture
def netns(outside_netns):
    """A fresh network namespace that the test process is inside for the test; yields its name."""
    saved = host_netns.save()
    try:
        host_netns.enter(outside_netns)
        yield outside_netns
    finally:
        host_netns.restore(saved)


@pytest.fixture
def netlink(netns):
    """A Netlink socket opened inside the test's network namespace."""
    from virtnet.host.netlink import Netlink

    with Netlink() as nl:
        yield nl

# Fixtures shared by the host test modules (a fresh namespace, per-test state dirs, a throwaway
# user), made available to every test module from here rather than imported one by one.
from hostcases import dirs, inside, ns, unprivileged_user  # noqa: E402

__all__ = ["dirs", "inside", "ns", "unprivileged_user"]


# --- the passt binaries -----------------------------------------------------------------------
# Debian 12's passt (0.0~git20230309, /usr/bin/passt) and a current one: Debian 13's, which
# tools/build-passt.sh (run by `make test-deps`) builds into VIRTNET_TEST_CACHE. virtnet runs the
# `passt` it finds in PATH, so a test selects one by putting its directory first in PATH.

from dataclasses import dataclass  # noqa: E402

PASST_CACHE = Path(os.environ.get("VIRTNET_TEST_CACHE", "/var/cache/virtnet-test"))
PASSTS = ("debian12", "current")


@dataclass(frozen=True)
class PasstBinary:
    kind: str  # one of PASSTS
    path: str
    version: str
    vhost_user: bool  # has --vhost-user

    @property
    def bindir(self):
        return os.path.dirname(self.path)


def passt_binary(kind):
    """The PasstBinary of KIND. When it is not there the test skips, except for the current passt
    as root (as CI runs): then it fails with the reason the build gave, so CI never skips it."""
    if kind == "debian12":
        path = "/usr/bin/passt"
        if not os.access(path, os.X_OK):
            reason = "needs passt at /usr/bin/passt (Debian package passt, which `make test-deps` installs as root)"
            if os.geteuid() == 0:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        query = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "passt"], capture_output=True, text=True)
        version = query.stdout.strip() or "unknown"
    else:
        directory = PASST_CACHE / "passt-current"
        path = str(directory / "passt")
        if not os.access(path, os.X_OK):
            failed = PASST_CACHE / "passt-build.failed"
            why = failed.read_text().strip() if failed.exists() else "tools/build-passt.sh has not run"
            reason = (f"needs the current passt at {path}, which `make test-deps` builds as root "
                      f"(tools/build-passt.sh); it is not there: {why}")
            if os.geteuid() == 0:
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        version = (directory / "VERSION").read_text().strip()
        path = os.path.realpath(path)  # passt-VERSION/passt, as /proc/PID/exe shows it
    # --version is lost in a pipe (the current passt exits without flushing stdout); --help is not.
    helptext = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
    return PasstBinary(kind, path, version, "--vhost-user" in helptext.stdout + helptext.stderr)


@pytest.fixture(params=PASSTS)
def passt_bin(request, monkeypatch):
    """Each passt in turn (test ids [debian12] and [current]), first in PATH for the test."""
    binary = passt_binary(request.param)
    monkeypatch.setenv("PATH", binary.bindir + os.pathsep + os.environ.get("PATH", os.defpath))
    return binary


# The tiny test guest (tests/guest.py): its image, built once per run, and the guests of a test.
from guest import lab, tiny_guest  # noqa: E402

__all__ += ["lab", "tiny_guest"]
