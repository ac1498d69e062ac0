"""Probing what this host offers QEMU networking (for `--host-caps auto`)."""

import os


def vhost_net_usable(path="/dev/vhost-net"):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def probe(tc=False):
    """What this host offers; with TC, also what its kernel has for <bandwidth> (host.shaping),
    which only host plans need (it costs the conversion verbs a few milliseconds)."""
    caps = set()
    if vhost_net_usable():
        caps.add("vhost-net")
    if tc:
        from virtnet.host import shaping

        caps |= shaping.probe()
    return frozenset(caps)
