"""<coalesce><rx><frames max='N'/>: a device's rx-frames coalescing through the ethtool ioctl, as
libvirt sets it on a tap (virNetDevSetCoalesce). A tap batches up to N received frames (the kernel
keeps at most 64); a device without coalescing support says so, and the caller warns."""

import array
import errno
import fcntl
import os
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_GCOALESCE, ETHTOOL_SCOALESCE = 0x0E, 0x0F
_FIELDS = 22  # the __u32 fields of struct ethtool_coalesce after cmd
RX_FRAMES = 1  # rx_max_coalesced_frames: the second of them


def _ioctl(ifname, cmd, values=None):
    """struct ethtool_coalesce for IFNAME: the kernel reads and writes it through the pointer that
    struct ifreq carries, so it lives in an array whose address stays put."""
    data = array.array("I", [cmd] + (values or [0] * _FIELDS))
    request = struct.pack("16sP", ifname.encode(), data.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
    return data.tolist()[1:]


def rx_frames(ifname):
    """The device's rx-frames coalescing, or None when it has none to report."""
    try:
        return _ioctl(ifname, ETHTOOL_GCOALESCE)[RX_FRAMES]
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise


def set_rx_frames(ifname, frames):
    """Set rx-frames coalescing on IFNAME. Returns None when done as asked, else a warning (the
    device does not support it, or keeps another value); other failures raise OSError."""
    try:
        values = _ioctl(ifname, ETHTOOL_GCOALESCE)
        values[RX_FRAMES] = frames
        _ioctl(ifname, ETHTOOL_SCOALESCE, values)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return (f"<coalesce><rx><frames max='{frames}'/> is not applied: '{ifname}' does not support interrupt "
                f"coalescing ({os.strerror(e.errno)})")
    kept = rx_frames(ifname)
    if kept != frames:
        return f"<coalesce><rx><frames max='{frames}'/>: '{ifname}' keeps {kept} (its maximum)"
    return None
