"""Opening a macvtap's queues for QEMU: one fd per queue from its character device.

The macvtap itself is made over netlink (netlink.add_macvtap). Its queues are opened as libvirt
does (virNetDevMacVLanTapOpen/TapSetup): once per queue, IFF_VNET_HDR on for vnet-header models
when the device offers it and off otherwise, IFF_MULTI_QUEUE exactly when there are several.

libvirt opens /dev/tapIFINDEX. That name is not unique on a host with network namespaces:
ifindexes count per namespace while devtmpfs is global, so a second namespace's macvtap with the
same ifindex gets no node, and /dev/tapN opens the first one's device. So the node is used only
when its device number is the one sysfs gives for this macvtap (in the namespace's /sys); if not,
a private node is made (CAP_MKNOD) and removed again once it is open.
Standard library only.
"""

import contextlib
import errno
import fcntl
import os
import socket
import stat
import tempfile

from virtnet.errors import HostError
from virtnet.host import tun

TUNGETFEATURES = 0x800454CF  # _IOR('T', 207, unsigned int)
SYSFS = "/sys/class/net"
DEV = "/dev"


def is_macvtap(name, *, sysfs=SYSFS):
    """True when NAME is a macvtap of this network namespace (as libvirt asks: it has a tap device)."""
    return bool(name) and "/" not in name and os.path.isdir(os.path.join(sysfs, name, "macvtap"))


def device_number(name, *, sysfs=SYSFS):
    """(ifindex, dev_t) of macvtap NAME's character device; HostError when NAME is no macvtap."""
    try:
        ifindex = socket.if_nametoindex(name)
        with open(os.path.join(sysfs, name, "macvtap", f"tap{ifindex}", "dev")) as f:
            major, minor = (int(part) for part in f.read().strip().split(":"))
    except (OSError, ValueError):
        raise HostError(f"'{name}' is not a macvtap device of this network namespace") from None
    return ifindex, os.makedev(major, minor)


def open_queues(name, queues, *, vnet_hdr, sysfs=SYSFS, dev=DEV):
    """QUEUES fds (O_CLOEXEC) on macvtap NAME, set up for QEMU. The device itself is not changed:
    the flags are per fd."""
    ifindex, number = device_number(name, sysfs=sysfs)
    fds = []
    try:
        with _node(name, ifindex, number, dev) as path:
            for _ in range(queues):
                try:
                    fds.append(os.open(path, os.O_RDWR | os.O_CLOEXEC))
                except OSError as e:
                    raise HostError(f"cannot open {path} for macvtap '{name}': {e.strerror}"
                                    + ("; its owner must be this user (chown it)" if e.errno == errno.EACCES else "")) from None
        for fd in fds:
            _setup(fd, name, vnet_hdr=vnet_hdr, multi_queue=queues > 1)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


@contextlib.contextmanager
def _node(name, ifindex, number, dev):
    """The path of a node for device NUMBER: /dev/tapIFINDEX when it is that device, else a private one."""
    path = os.path.join(dev, f"tap{ifindex}")
    try:
        info = os.stat(path)
        ours = stat.S_ISCHR(info.st_mode) and info.st_rdev == number
    except OSError:
        ours = False
    if ours:
        yield path
        return
    private = tempfile.mkdtemp(prefix=".virtnet-macvtap-", dir=dev)
    try:
        node = os.path.join(private, "tap")
        try:
            os.mknod(node, 0o600 | stat.S_IFCHR, number)
        except OSError as e:
            raise HostError(f"{path} is not the device of macvtap '{name}' (a macvtap of another network namespace "
                            f"has the same ifindex) and no node of its own can be made ({e.strerror}); create "
                            f"'{name}' so that its ifindex is unique on the host") from None
        yield node
    finally:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(private, "tap"))
        with contextlib.suppress(OSError):
            os.rmdir(private)


def _setup(fd, name, *, vnet_hdr, multi_queue):
    try:
        _, flags = tun._IFREQ.unpack(fcntl.ioctl(fd, tun.TUNGETIFF, tun._IFREQ.pack(b"", 0)))
        wanted = flags & ~(tun.IFF_VNET_HDR | tun.IFF_MULTI_QUEUE)
        if vnet_hdr:
            features = int.from_bytes(fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)), "little")
            wanted |= tun.IFF_VNET_HDR if features & tun.IFF_VNET_HDR else 0
        if multi_queue:
            wanted |= tun.IFF_MULTI_QUEUE
        if wanted != flags:
            fcntl.ioctl(fd, tun.TUNSETIFF, tun._IFREQ.pack(b"", wanted))
    except OSError as e:
        raise HostError(f"cannot set the vnet_hdr and multiqueue flags of macvtap '{name}': {e.strerror}") from None

