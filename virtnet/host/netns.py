"""Moving the calling thread into a named network namespace, as `ip netns exec` does.

Namespaces named by `ip netns add NAME` are files under /run/netns. Entering one takes setns(2) on
the network namespace, and also a private mount namespace with a fresh /sys: sysfs shows the
network devices of the namespace it was mounted in, so without the remount /sys/class/net would keep
listing the old namespace's devices (virtnet.host.tun reads tap attributes there).

setns(2) changes only the calling thread; the CLI enters early, while it is single-threaded, so
everything it starts later (QEMU, helpers) inherits the namespace. Standard library only: Python 3.11
has no os.setns, so the libc calls go through ctypes.
"""

import ctypes
import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass

from virtnet.errors import HostError

NETNS_RUN_DIR = "/run/netns"

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_REC = 0x4000
MS_SLAVE = 0x80000
MNT_DETACH = 0x2
ST_RDONLY = 0x1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


@dataclass(frozen=True)
class SavedNamespaces:
    """Handles on the namespaces a thread was in, so that it can go back (see save/restore)."""

    net_fd: int
    mnt_fd: int


def enter(name):
    """Move the calling thread into network namespace NAME, with a /sys that shows its devices."""
    if not name or "/" in name or name in (".", ".."):
        raise HostError(f"invalid network namespace name '{name}'")
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError(f"no network namespace '{name}'; create it with `ip netns add {name}`") from None
    except OSError as exc:
        raise HostError(f"cannot open network namespace '{name}' ({path}): {os.strerror(exc.errno)}") from None
    try:
        _call(_libc.setns, fd, CLONE_NEWNET, what=f"enter network namespace '{name}'")
    finally:
        os.close(fd)
    _mount_private_sysfs(name)


def save():
    """Remember the calling thread's network and mount namespaces (close with restore)."""
    net_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        mnt_fd = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(net_fd)
        raise
    return SavedNamespaces(net_fd=net_fd, mnt_fd=mnt_fd)


def restore(saved):
    """Return the calling thread to the namespaces in SAVED, keep its working directory, close SAVED."""
    try:
        _call(_libc.setns, saved.net_fd, CLONE_NEWNET, what="return to the saved network namespace")
        if not _same_namespace(saved.mnt_fd, "/proc/thread-self/ns/mnt"):
            # Joining a mount namespace moves the thread to that namespace's root directory.
            cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _call(_libc.setns, saved.mnt_fd, CLONE_NEWNS, what="return to the saved mount namespace")
                os.fchdir(cwd)
            finally:
                os.close(cwd)
    finally:
        os.close(saved.net_fd)
        os.close(saved.mnt_fd)


@contextmanager
def inside(name):
    """Run a block inside network namespace NAME, then come back."""
    saved = save()
    try:
        enter(name)
        yield name
    finally:
        restore(saved)


@contextmanager
def inside_if_elsewhere(name):
    """Run a block in namespace NAME (a domain's or a network's), entered only when we are not in it
    already; NAME None: where we are."""
    if not name or current_name() == name:
        yield
        return
    with inside(name):
        yield


def _mount_private_sysfs(name):
    """What `ip netns exec` does: a mount namespace of our own whose /sys shows this namespace."""
    what = f"mount a private /sys for network namespace '{name}'"
    _call(_libc.unshare, CLONE_NEWNS, what=what)
    # Keep our mounts from propagating back to the host's mount namespace.
    _call(_libc.mount, b"none", b"/", None, MS_REC | MS_SLAVE, None, what=what)
    flags = 0
    if _libc.umount2(b"/sys", MNT_DETACH) != 0 and os.statvfs("/sys").f_flag & ST_RDONLY:
        # /sys could not be unmounted, so it is overlaid: a read-only one only by a read-only one.
        flags = MS_RDONLY
    _call(_libc.mount, name.encode(), b"/sys", b"sysfs", flags, None, what=what)


def current_name(netns_dir=NETNS_RUN_DIR):
    """The name (under /run/netns) of the network namespace this thread is in, or None for one
    without a name, such as the host's (what `ip netns identify` answers)."""
    try:
        here = os.stat("/proc/thread-self/ns/net").st_ino
        for name in os.listdir(netns_dir):
            if os.stat(os.path.join(netns_dir, name)).st_ino == here:
                return name
    except OSError:
        pass
    return None


def _same_namespace(fd, path):
    mine = os.fstat(fd)
    current = os.stat(path)
    return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)


def _call(function, *args, what):
    if function(*args) != 0:
        code = ctypes.get_errno()
        hint = "; this needs root (CAP_SYS_ADMIN)" if code in (errno.EPERM, errno.EACCES) else ""
        raise HostError(f"cannot {what}: {os.strerror(code)}{hint}")
