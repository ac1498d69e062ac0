"""Host operations the tests need but virtnet itself never does: persistent taps made the way an
administrator makes them, bridges, undoing a port or an up state, and HMP commands over QMP.

Each netlink helper opens its own pyroute2 socket, so it acts on the network namespace the calling
thread is in at that moment (inside the `netns` fixture: the test's namespace).
"""

import fcntl
import os

from pyroute2 import IPRoute

from virtnet.host import tun

# tun ioctls virtnet itself never issues (_IOW('T', nr, int)): an administrator's `ip tuntap add`.
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE


# -- taps ---------------------------------------------------------------------------------------------

def create_persistent_tap(name, *, owner=None, group=None, multi_queue=False, vnet_hdr=False,
                          tun_path=tun.TUN_PATH):
    """Create a persistent tap, as an administrator's `ip tuntap add dev NAME mode tap` does.
    Returns its name."""
    ifname, fds = tun.open_tap(name, vnet_hdr=vnet_hdr, multi_queue=multi_queue, tun_path=tun_path,
                               exclusive=True)
    fd = fds[0]
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
        try:
            if owner is not None:
                fcntl.ioctl(fd, TUNSETOWNER, owner)
            if group is not None:
                fcntl.ioctl(fd, TUNSETGROUP, group)
        except OSError:
            fcntl.ioctl(fd, TUNSETPERSIST, 0)
            raise
    finally:
        os.close(fd)
    return ifname


def delete_persistent_tap(name, *, tun_path=tun.TUN_PATH):
    """Delete tap NAME by attaching to it and clearing persistence: it vanishes when we close.
    Returns False when there is no tap NAME."""
    attrs = tun.tap_attributes(name)
    if attrs is None:
        return False
    _, fds = tun.open_tap(name, vnet_hdr=attrs.vnet_hdr, multi_queue=attrs.multi_queue, tun_path=tun_path)
    try:
        fcntl.ioctl(fds[0], TUNSETPERSIST, 0)
    finally:
        os.close(fds[0])
    return True


# -- links --------------------------------------------------------------------------------------------

def create_bridge(name):
    """`ip link add NAME type bridge` in the current network namespace."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")


def clear_master(name):
    """`ip link set NAME nomaster`: detach NAME from its bridge."""
    with IPRoute() as ipr:
        ipr.link("set", ifname=name, master=0)


def set_down(name):
    """`ip link set NAME down`."""
    with IPRoute() as ipr:
        ipr.link("set", ifname=name, state="down")


# -- QEMU ---------------------------------------------------------------------------------------------

def hmp(client, command_line):
    """Run a human monitor command over the QMP connection CLIENT; return its text output."""
    return client.execute("human-monitor-command", {"command-line": command_line})
