"""QEMU's bridge helper (qemu-bridge-helper): finding it, and running it the way QEMU does.

Without CAP_NET_ADMIN virtnet cannot create a tap and enslave it to a bridge, but the helper can:
it is installed setuid root (or with the file capability cap_net_admin) for exactly this. virtnet
runs it as `HELPER [--use-vnet] --br=BRIDGE --fd=N` with one end of a socketpair as fd N, receives
the new tap's fd over it (SCM_RIGHTS), reads the tap's name (TUNGETIFF), and hands the fd to QEMU
like any tap. The helper's tap is non-persistent: it goes away with QEMU, nothing to delete.
Before running it, virtnet reads the helper's ACL (bridgeacl.py) so that a refusal says which
line to add. Standard library only (xml2argv --standalone uses find_helper).
"""

import os
import socket
import subprocess

from virtnet.errors import HostError

HELPER_NAME = "qemu-bridge-helper"
SEARCH_DIRS = ("/usr/lib/qemu", "/usr/libexec/qemu", "/usr/libexec", "/usr/local/libexec")
HELPER_TIMEOUT = 30.0
CAP_NET_ADMIN = 12


def find_helper(override=None):
    """The helper's path: OVERRIDE (--bridge-helper), else the first hit in SEARCH_DIRS."""
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise HostError(f"bridge helper '{override}' is not an executable file")
        return os.path.abspath(override)
    for directory in SEARCH_DIRS:
        path = os.path.join(directory, HELPER_NAME)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise HostError(
        f"{HELPER_NAME} not found in {', '.join(SEARCH_DIRS)}; install QEMU's helper (Debian: "
        "qemu-system-common) or pass --bridge-helper PATH"
    )


def has_net_admin():
    """True when this process holds CAP_NET_ADMIN (in its effective set), as root normally does."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def helper_for(domain, *, unprivileged=False, override=None):
    """The helper to run for DOMAIN's bridge interfaces, or None when virtnet creates taps itself.

    The helper is used when asked (--unprivileged) or when virtnet lacks CAP_NET_ADMIN, and only
    when the domain has a bridge interface (so a missing helper never matters otherwise).
    """
    if not any(iface.type in ("bridge", "network") for iface in domain.interfaces):
        return None
    if not unprivileged and has_net_admin():
        return None
    return find_helper(override)


def helper_argv(helper, bridge, fd, *, vnet_hdr):
    """The helper's command line, as QEMU builds it (--use-vnet only for vnet-header models, as libvirt)."""
    return [helper, *(["--use-vnet"] if vnet_hdr else []), f"--br={bridge}", f"--fd={fd}"]


def run_helper(helper, bridge, *, vnet_hdr, timeout=HELPER_TIMEOUT):
    """Run the helper for BRIDGE; return (tap fd, tap name). The fd is O_CLOEXEC; close it when done.

    Raises HostError with the helper's own stderr when it fails.
    """
    from virtnet.host import tun

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        argv = helper_argv(helper, bridge, theirs.fileno(), vnet_hdr=vnet_hdr)
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, pass_fds=(theirs.fileno(),), close_fds=True)
        except OSError as e:
            raise HostError(f"cannot run bridge helper {helper}: {e.strerror}") from None
        theirs.close()  # the helper holds the only other end now: EOF when it exits without sending
        fds = []
        try:
            ours.settimeout(timeout)
            try:
                _, fds, _, _ = socket.recv_fds(ours, 1, 4, socket.MSG_CMSG_CLOEXEC)
            except (socket.timeout, OSError):
                fds = []
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            text = output.decode(errors="replace").strip()
            if not fds or process.returncode != 0:
                raise HostError(_failure(helper, bridge, process.returncode, text))
            fd, extra = fds[0], fds[1:]
            for other in extra:
                os.close(other)
            fds = [fd]
            name = tun.tap_name_of(fd)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
    finally:
        ours.close()
        theirs.close()
    return fd, name


def _failure(helper, bridge, status, text):
    how = f"exited with status {status}" if status and status > 0 else (
        f"was killed by signal {-status}" if status and status < 0 else "passed no tap descriptor")
    detail = "; ".join(line.strip() for line in text.splitlines() if line.strip()) or "no message"
    message = f"bridge helper {helper} {how} for bridge '{bridge}': {detail}"
    if "/dev/net/tun: Permission denied" in text or "Operation not permitted" in text or "Permission denied" in text:
        message += "; " + _privilege_hint(helper, tun="/dev/net/tun: Permission denied" in text)
    elif "access denied by acl file" in text:
        message += "; the bridge must be allowed in the helper's ACL (e.g. `allow BRIDGE` in /etc/qemu/bridge.conf)"
    return message


def _privilege_hint(helper, tun):
    """What to do when the helper lacked a privilege (TUN: it could not open /dev/net/tun; else it
    lacked CAP_NET_ADMIN), from how it is installed: a hint to make it setuid root only when it is
    not, and otherwise what keeps its privileges from taking effect."""
    granted = _granted(helper)
    if granted:
        blockers = _blockers(helper)
        if blockers:
            return f"the helper is {granted}, but {' and '.join(blockers)}, so it ran without privileges"
        if tun and granted == "given cap_net_admin (a file capability)":
            return ("the helper has cap_net_admin but not the right to open a root-only /dev/net/tun: make "
                    f"/dev/net/tun mode 0666 as distributions do (`chmod 0666 /dev/net/tun`), or the helper "
                    f"setuid root (`chmod u+s {helper}`)")
        return (f"the helper is already {granted}, so something else denied it: a security module (AppArmor, "
                "SELinux) confining it, or a user namespace without the privilege")
    if tun:
        return ("the helper must be able to open /dev/net/tun: distributions make it mode 0666 "
                f"(`chmod 0666 /dev/net/tun`), or install the helper setuid root (`chmod u+s {helper}`)")
    return (f"the helper needs CAP_NET_ADMIN and has neither setuid root nor the capability: `chmod u+s "
            f"{helper}` or `setcap cap_net_admin+ep {helper}`")


def _granted(helper):
    """How HELPER gets its privilege: 'setuid root', 'given cap_net_admin (a file capability)', or None."""
    try:
        st = os.stat(helper)
    except OSError:
        return None
    if st.st_uid == 0 and st.st_mode & 0o4000:
        return "setuid root"
    try:
        caps = os.getxattr(helper, "security.capability")
    except OSError:
        return None
    # struct vfs_cap_data: le32 magic_etc, then le32 permitted (capabilities 0-31), le32 inheritable, ...
    if len(caps) >= 8 and int.from_bytes(caps[4:8], "little") >> CAP_NET_ADMIN & 1:
        return "given cap_net_admin (a file capability)"
    return None


def _blockers(helper):
    """Why setuid and file capabilities would not take effect for HELPER run from this process."""
    blockers = []
    try:
        if os.statvfs(helper).f_flag & os.ST_NOSUID:
            blockers.append(f"{os.path.dirname(helper)} is on a file system mounted nosuid")
    except OSError:
        pass
    try:
        with open("/proc/self/status") as status:
            if any(line.split() == ["NoNewPrivs:", "1"] for line in status):
                blockers.append("virtnet runs with no_new_privs (a systemd unit's NoNewPrivileges=, a container, "
                                "setpriv --no-new-privs), which ignores setuid and file capabilities")
    except OSError:
        pass
    return blockers
