"""A managed tap's setup by the executor against the real kernel: the link changes of a tap it has
just created (MAC, MTU, master, up) go to the kernel as one RTM_NEWLINK by ifindex, and a request
the kernel refuses is redone change by change, so that errors and rollback are those of the single
changes.

Every test runs in a fresh network namespace that the test process is inside (conftest.py); the
kernel's view is read with `ip -j` (hostcases.links), not with virtnet's own netlink code.
"""

import json
import os
import socket
import struct
from contextlib import contextmanager

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from hostcases import domain_xml, ip, links, write
from virtnet.conf.load import load_text
from virtnet.errors import HostError
from virtnet.host import plan as p
from virtnet.host import tun
from virtnet.host.executor import Executor

RTM_NEWLINK, RTM_GETLINK = 16, 18
RTMGRP_LINK = 0x1
GUEST_MAC, HOST_MAC = "52:54:00:00:00:01", "fe:54:00:00:00:01"  # the tap gets the guest's MAC with fe
# The bridge's uplink: its MAC is below the tap's, so the bridge keeps it once the tap has joined,
# and above nearly every random MAC the kernel gives a new tap (whose first octet is below fe).
UPLINK_MAC, UPLINK_MTU = "fe:00:00:00:00:01", 9000


@pytest.fixture
def requests(netlink, monkeypatch):
    """The types of the netlink messages NETLINK sends, in order. Counted here, in the test, by
    wrapping the send of pyroute2's socket object: virtnet keeps no count of its own."""
    sent = []
    core = netlink._ipr.asyncore
    real_send = core.send

    def send(data, flags=0):
        sent.append(struct.unpack_from("=IH", data)[1])
        return real_send(data, flags)

    monkeypatch.setattr(core, "send", send)
    return sent


@pytest.fixture
def bridge(netns):
    """br0 with one port, a veth of MTU 9000 and MAC UPLINK_MAC. The bridge follows its ports (the
    smallest MTU, the lowest MAC), so a tap joining with its first MTU or MAC would change it."""
    ip("link", "add", "br0", "type", "bridge")
    ip("link", "add", "up0", "type", "veth", "peer", "name", "up1")
    ip("link", "set", "up0", "mtu", str(UPLINK_MTU), "address", UPLINK_MAC, "master", "br0")
    ip("link", "set", "br0", "up")
    br0 = links(netns)["br0"]
    assert (br0.mtu, br0.mac) == (UPLINK_MTU, UPLINK_MAC)
    return "br0"


def tap_plan(interface):
    """The setup actions the planner gives a domain with INTERFACE, up to starting QEMU."""
    domain = load_text(domain_xml("taps", interface), "taps.xml").domain
    setup = p.build_plan(domain).setup
    return p.Plan(setup[:next(i for i, a in enumerate(setup) if isinstance(a, p.StartQemu))])


def ethernet(extra=""):
    return f"""\
    <interface type='ethernet'>
      <mac address='{GUEST_MAC}'/>
      <target dev='vt0'/>
      <mtu size='1400'/>{extra}
    </interface>
"""


def bridged(mtu=""):
    return f"""\
    <interface type='bridge'>
      <mac address='{GUEST_MAC}'/>
      <source bridge='br0'/>
      <target dev='vt0'/>{mtu}
    </interface>
"""


def action(plan, kind):
    return next(a for a in plan.setup if isinstance(a, kind))


@contextmanager
def states_of(name):
    """The set of (MTU, MAC) that link notifications report for device NAME while the block runs."""
    monitor = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                            socket.NETLINK_ROUTE)
    seen = set()
    try:
        monitor.bind((0, RTMGRP_LINK))
        yield seen
        seen.update((m.get("mtu"), m.get("address")) for m in _notifications(monitor) if m.get("ifname") == name)
    finally:
        monitor.close()


def _notifications(monitor):
    while True:
        try:
            data = monitor.recv(1 << 16)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("=I", data, offset)
            message = ifinfmsg(data[offset:offset + length])
            message.decode()
            yield message
            offset += length


# --- the combined request ---------------------------------------------------------------------------


def test_a_tap_gets_its_mac_mtu_and_up_state_in_one_request(netns, netlink, requests):
    plan = tap_plan(ethernet())
    assert [a.kind for a in plan.setup] == ["create-tap", "set-mac", "set-mtu", "set-up"]
    outcome = Executor(netlink).setup(plan)
    try:
        tap = links(netns)["vt0"]
        assert (tap.mac, tap.mtu, tap.up, tap.master) == (HOST_MAC, 1400, True, None)
        assert requests == [RTM_NEWLINK]  # was one per change: three
    finally:
        outcome.close_fds()


def test_a_bridge_tap_joins_with_its_mac_and_the_bridge_mtu_already_set(netns, netlink, bridge, requests):
    plan = tap_plan(bridged())
    assert [a.kind for a in plan.setup] == ["check-bridge", "create-tap", "set-mac", "set-mtu", "enslave", "set-up"]
    assert action(plan, p.SetMtu).mtu is None  # the bridge's MTU, read when the tap is set up
    with states_of(bridge) as seen:
        outcome = Executor(netlink).setup(plan)
    try:
        tap = links(netns)["vt0"]
        assert (tap.mac, tap.mtu, tap.up, tap.master) == (HOST_MAC, UPLINK_MTU, True, bridge)
        # The kernel applied MAC and MTU before the master: the bridge never showed another.
        assert seen <= {(UPLINK_MTU, UPLINK_MAC)}, seen
        # check-bridge reads the bridge; then one read of it (MTU, ifindex) and one change of the tap.
        # One by one it was seven: a read for the MTU and one for enslave, and a change each.
        assert requests == [RTM_GETLINK, RTM_GETLINK, RTM_NEWLINK]
    finally:
        outcome.close_fds()

    # The control: the monitor does see a tap enslaved before its MTU and MAC are set.
    _, (fd,) = tun.open_tap("vt1", vnet_hdr=False, multi_queue=False)
    try:
        with states_of(bridge) as seen:
            netlink.set_master("vt1", bridge)
            netlink.set_mtu("vt1", UPLINK_MTU)
            netlink.set_mac("vt1", "fe:54:00:00:00:02")
    finally:
        os.close(fd)
    assert seen - {(UPLINK_MTU, UPLINK_MAC)}, seen


def test_held_changes_reach_the_kernel_before_the_next_action(netns, netlink, tmp_path):
    seen = tmp_path / "seen.json"
    script = write(tmp_path / "ifup.sh", f"#!/bin/sh\nip -j link show dev \"$1\" > {seen}\n", mode=0o755)
    plan = tap_plan(ethernet(f"\n      <script path='{script}'/>"))
    assert [a.kind for a in plan.setup][-2:] == ["set-up", "run-script"]
    outcome = Executor(netlink).setup(plan)
    outcome.close_fds()
    (tap,) = json.loads(seen.read_text())
    assert (tap["address"], tap["mtu"], "UP" in tap["flags"]) == (HOST_MAC, 1400, True)


# --- a refused request: the single change's own error, and rollback ----------------------------------


MTU_RANGE = r"'vt0' accepts 68 to \d+"


@pytest.mark.parametrize("interface, kind, field, value, error", [
    (ethernet(), p.SetMtu, "mtu", 70000, rf"^cannot set MTU of 'vt0' to 70000: Invalid argument; {MTU_RANGE}$"),
    (bridged(), p.SetMtu, "mtu", 70000, rf"^cannot set MTU of 'vt0' to 70000: Invalid argument; {MTU_RANGE}$"),
    (ethernet(), p.SetMac, "mac", "01:00:5e:00:00:01",
     r"^cannot set MAC of 'vt0' to 01:00:5e:00:00:01: Cannot assign requested address$"),  # multicast
    (bridged(), p.SetMac, "mac", "01:00:5e:00:00:01",
     r"^cannot set MAC of 'vt0' to 01:00:5e:00:00:01: Cannot assign requested address$"),
    (ethernet(), p.SetMac, "mac", "fe:54:00", r"^cannot set MAC of 'vt0' to 'fe:54:00': not six colon-separated "
                                              r"hex octets$"),
])
def test_a_refused_change_fails_with_its_own_error_and_rolls_back(netns, netlink, bridge, interface, kind, field,
                                                                  value, error):
    plan = tap_plan(interface)
    setattr(action(plan, kind), field, value)  # made by hand: the planner gives no such value
    before, fds_before = links(netns), len(os.listdir("/proc/self/fd"))
    with pytest.raises(HostError, match=error):
        Executor(netlink).setup(plan)
    assert links(netns) == before  # the tap is gone, and the bridge is as it was
    assert len(os.listdir("/proc/self/fd")) == fds_before
