"""Probing what this host offers QEMU networking (for `--host-caps auto`)."""

import os


def vhost_net_usable(path="/dev/vhost-net"):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def probe():
    caps = set()
    if vhost_net_usable():
        caps.add("vhost-net")
    return frozenset(caps)
