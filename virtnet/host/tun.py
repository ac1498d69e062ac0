"""Tap devices through the tun driver's ioctls.

pyroute2 can create a tap but keeps no fd, and QEMU needs the fds: so taps are opened here by hand,
one `/dev/net/tun` fd per queue, with TUNSETIFF. Attributes of an existing tap come from sysfs, which
shows the network namespace that /sys was mounted in (virtnet.host.netns.enter remounts it).
Standard library only.
"""

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from virtnet.conf.ifname import IFNAMSIZ
from virtnet.errors import HostError

# Flags of struct ifreq.ifr_flags (linux/if_tun.h).
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

# ioctl numbers: _IOW('T', nr, int) / _IOR('T', nr, unsigned int).
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2

# struct ifreq is 40 bytes on 64-bit Linux: a 16-byte name, then a union whose first member we use
# as the short ifr_flags.
_IFREQ = struct.Struct("16sH22x")

TUN_PATH = "/dev/net/tun"


@dataclass(frozen=True)
class TapAttributes:
    """What the tun driver reports about an existing tap in sysfs."""

    name: str
    flags: int
    owner: int | None  # None: no owner restriction (-1)
    group: int | None

    @property
    def multi_queue(self):
        return bool(self.flags & IFF_MULTI_QUEUE)

    @property
    def vnet_hdr(self):
        return bool(self.flags & IFF_VNET_HDR)

    @property
    def persistent(self):
        return bool(self.flags & IFF_PERSIST)

    @property
    def is_tap(self):
        return bool(self.flags & IFF_TAP)


def open_tap(name, *, vnet_hdr, multi_queue, queues=1, tun_path=TUN_PATH, exclusive=False):
    """Create a (non-persistent) tap or attach to an existing one; return (ifname, fds).

    One fd per queue, each O_RDWR|O_CLOEXEC: whoever passes them to QEMU does so explicitly. A new
    tap lives while any fd is open. `name` may be a kernel template such as "tap%d"; the returned
    name is the kernel's. With `exclusive`, an existing device of that name is an error rather than
    attached to (checked by the kernel, so there is no race).
    """
    _check_name(name)
    if queues < 1:
        raise HostError(f"tap '{name}': queues must be at least 1, not {queues}")
    if queues > 1 and not multi_queue:
        raise HostError(f"tap '{name}': {queues} queues need multi_queue")
    flags = IFF_TAP | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= IFF_MULTI_QUEUE

    fds = []
    ifname = name
    try:
        for queue in range(queues):
            fd = _open_tun(tun_path, ifname)
            fds.append(fd)
            # Only the first fd may insist on creating; the others attach to what it created.
            queue_flags = flags | (IFF_TUN_EXCL if exclusive and queue == 0 else 0)
            try:
                ifname = _set_iff(fd, ifname, queue_flags)
            except OSError as exc:
                raise _setiff_error(ifname, exc, multi_queue=multi_queue, exclusive=exclusive) from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return ifname, fds


def tap_name_of(fd):
    """The name of the tap an fd is attached to (TUNGETIFF)."""
    try:
        result = fcntl.ioctl(fd, TUNGETIFF, _IFREQ.pack(b"", 0))
    except OSError as exc:
        raise HostError(f"cannot read the tap name of fd {fd} (TUNGETIFF): {os.strerror(exc.errno)}; "
                        "is it an attached /dev/net/tun fd?") from None
    raw_name, _ = _IFREQ.unpack(result)
    return raw_name.split(b"\0", 1)[0].decode()


def tap_attributes(name, *, sysfs="/sys/class/net"):
    """The tun flags, owner and group of tap or tun NAME; None when absent or not a tun device."""
    if not name or "/" in name or name in (".", ".."):
        return None
    base = os.path.join(sysfs, name)
    try:
        with open(os.path.join(base, "tun_flags")) as f:
            flags = int(f.read().strip(), 16)
        owner = _read_id(os.path.join(base, "owner"))
        group = _read_id(os.path.join(base, "group"))
    except FileNotFoundError:
        return None
    return TapAttributes(name=name, flags=flags, owner=owner, group=group)


def _check_name(name):
    if len(name.encode()) >= IFNAMSIZ:
        raise HostError(f"tap name '{name}' is longer than {IFNAMSIZ - 1} bytes; choose a shorter <target dev>")
    if "/" in name or any(c.isspace() for c in name):
        raise HostError(f"tap name '{name}' contains '/' or whitespace; choose another <target dev>")


def _open_tun(tun_path, ifname):
    try:
        return os.open(tun_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        text = os.strerror(exc.errno)
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            advice = "is the tun module loaded? (modprobe tun)"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            advice = f"give this user read-write access to {tun_path}"
        else:
            advice = f"check {tun_path}"
        raise HostError(f"cannot open {tun_path} for tap '{ifname}': {text}; {advice}") from None


def _set_iff(fd, name, flags):
    result = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
    raw_name, _ = _IFREQ.unpack(result)
    return raw_name.split(b"\0", 1)[0].decode()


def _setiff_error(name, exc, *, multi_queue, exclusive):
    """Turn a failed TUNSETIFF into a message that says what to do."""
    text = os.strerror(exc.errno)
    attrs = tap_attributes(name)
    prefix = f"cannot open tap '{name}' (TUNSETIFF): {text}"
    if exc.errno == errno.EBUSY and exclusive:
        return HostError(f"{prefix}; a device named '{name}' already exists; "
                         "choose another name or remove it")
    if exc.errno == errno.EINVAL and attrs is not None:
        if not attrs.is_tap:
            return HostError(f"{prefix}; '{name}' is a tun device, not a tap; "
                             f"recreate it with `ip tuntap add dev {name} mode tap`")
        if attrs.multi_queue and not multi_queue:
            return HostError(f"{prefix}; '{name}' was created with multi_queue but is opened with "
                             f"one queue; recreate it with `ip tuntap add dev {name} mode tap` "
                             "or configure more than one queue")
        if multi_queue and not attrs.multi_queue:
            return HostError(f"{prefix}; '{name}' was created without multi_queue; recreate it with "
                             f"`ip tuntap add dev {name} mode tap multi_queue`")
    if exc.errno == errno.EINVAL and attrs is None and _device_exists(name):
        return HostError(f"{prefix}; '{name}' exists but is not a tap device; choose another name")
    if exc.errno == errno.EPERM:
        if attrs is None:
            return HostError(f"{prefix}; creating a tap needs CAP_NET_ADMIN; run as root or "
                             f"pre-create it with `ip tuntap add dev {name} mode tap user USER`")
        return HostError(f"{prefix}; {_ownership(name, attrs)}")
    if exc.errno == errno.EBUSY:
        return HostError(f"{prefix}; '{name}' is already in use (a single-queue tap takes one opener, "
                         "e.g. a running QEMU); stop whatever holds it or use another tap")
    return HostError(prefix)


def _ownership(name, attrs):
    parts = []
    if attrs.owner is not None:
        parts.append(f"uid {attrs.owner}")
    if attrs.group is not None:
        parts.append(f"gid {attrs.group}")
    if not parts:
        return (f"'{name}' has no owner, so only CAP_NET_ADMIN may open it; recreate it with "
                f"`ip tuntap add dev {name} mode tap user USER` or run with CAP_NET_ADMIN")
    return f"'{name}' is owned by {' and '.join(parts)}; run as that user or with CAP_NET_ADMIN"


def _device_exists(name, sysfs="/sys/class/net"):
    return os.path.exists(os.path.join(sysfs, name))


def _read_id(path):
    with open(path) as f:
        value = int(f.read().strip())
    return None if value < 0 else value
