"""Shared host fixtures: a fresh network namespace per test, entered or not."""

import os
import shutil
import subprocess
import uuid

import pytest

from virtnet.host import netns as host_netns


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
