"""Carrying out a plan: tun ioctls for the tap fds, one netlink socket for the rest, and rollback.

Every setup action that changes the host pushes its undo onto a stack; if any later action fails,
the stack is unwound, so the host is left exactly as it was (taps virtnet created are gone, QEMU is
stopped, managed='no' taps are untouched apart from what was undone).
"""

import os
import socket
import subprocess
from dataclasses import dataclass, field

from virtnet.errors import HostError
from virtnet.host import plan as p
from virtnet.host import tun
from virtnet.qemu.netprops import HostFds

SCRIPT_TIMEOUT = 60
SCRIPT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
VHOST_NET = "/dev/vhost-net"


@dataclass
class Outcome:
    """What setup produced: fds per interface, the QEMU process, and what teardown must undo."""

    fds: dict = field(default_factory=dict)  # interface index -> HostFds
    launched: object = None
    created_taps: list = field(default_factory=list)
    # name -> ifindex at creation: teardown deletes a name only while it is still that device
    tap_indexes: dict = field(default_factory=dict)
    added_addresses: list = field(default_factory=list)  # (ifname, address, prefix) on unmanaged taps
    added_routes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    helper_taps: dict = field(default_factory=dict)  # interface index -> tap the bridge helper made
    passt: list = field(default_factory=list)  # runtime-record entries of the passt processes started

    def close_fds(self):
        for fds in self.fds.values():
            for fd in fds.taps + fds.vhosts:
                _close(fd)
        self.fds = {}


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def run_script(path, ifname, what="script"):
    """Run an interface script with the ifname as its only argument; non-zero exit fails."""
    try:
        result = subprocess.run([path, ifname], env=SCRIPT_ENV, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    except OSError as e:
        raise HostError(f"cannot run {what} '{path}' for {ifname}: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise HostError(f"{what} '{path}' for {ifname} did not finish within {SCRIPT_TIMEOUT} s") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HostError(f"{what} '{path}' {ifname} exited with status {result.returncode}: {detail}")


class Executor:
    """Runs setup actions with rollback. `start_qemu(outcome)` is called for the StartQemu action
    and returns the launched process (with .qmp); `stop_qemu(launched)` undoes it."""

    def __init__(self, netlink, *, start_qemu, stop_qemu, tun_path=tun.TUN_PATH, fail_at=None):
        self.nl = netlink
        self.start_qemu = start_qemu
        self.stop_qemu = stop_qemu
        self.tun_path = tun_path
        # Test hook: fail just before action N, to exercise the rollback of every earlier action
        # (faults such as a netlink error mid-plan cannot be provoked for real on demand).
        self.fail_at = fail_at
        self.unmanaged = set()

    def setup(self, plan):
        outcome, undo = Outcome(), []
        self.unmanaged = {a.ifname for a in plan.setup if isinstance(a, p.AttachTap)}
        try:
            for number, action in enumerate(plan.setup):
                if self.fail_at == number:
                    raise HostError(f"injected failure before action {number} ({action.describe()})")
                handler = getattr(self, "_" + action.kind.replace("-", "_"))
                handler(action, outcome, undo)
        except BaseException as failure:
            leftovers = self._unwind(undo)
            outcome.close_fds()
            if leftovers and isinstance(failure, HostError):
                failure.message += "; rolling back also failed: " + "; ".join(leftovers)
            raise
        return outcome

    @staticmethod
    def _unwind(undo):
        """Run every undo step, newest first; the ones that failed are returned, not raised, so
        that the rest still run and the original error stays the one the user sees first."""
        failed = []
        for step in reversed(undo):
            try:
                step()
            except Exception as e:
                failed.append(str(e))
        return failed

    # --- one handler per action kind -------------------------------------------------------
    def _create_tap(self, a, outcome, undo):
        ifname, fds = tun.open_tap(a.ifname, vnet_hdr=a.vnet_hdr, multi_queue=a.queues > 1, queues=a.queues,
                                   tun_path=self.tun_path, exclusive=True)
        outcome.fds.setdefault(a.index, HostFds()).taps = fds
        outcome.created_taps.append(ifname)
        outcome.tap_indexes[ifname] = socket.if_nametoindex(ifname)  # an ioctl, no netlink round trip

        def remove():
            for fd in fds:
                _close(fd)
            outcome.fds.pop(a.index, None)
            if self.nl.exists(ifname):  # a non-persistent tap normally vanishes with its last fd
                self.nl.delete(ifname)

        undo.append(remove)

    def _attach_tap(self, a, outcome, undo):
        attrs = tun.tap_attributes(a.ifname)
        if attrs is None:
            kind = "does not exist" if not self.nl.exists(a.ifname) else "is not a tap device"
            raise HostError(
                f"target dev '{a.ifname}' (managed='no') {kind}; an administrator must create it first, "
                f"e.g. `ip tuntap add dev {a.ifname} mode tap user $USER"
                + (" multi_queue" if a.queues > 1 else "") + "` (see `virtnet plan --format sh`)"
            )
        if attrs.multi_queue != (a.queues > 1):
            need = "with multi_queue" if a.queues > 1 else "without multi_queue"
            raise HostError(
                f"target dev '{a.ifname}' (managed='no') was created {'with' if attrs.multi_queue else 'without'} "
                f"multi_queue but the interface uses {a.queues} queue(s); recreate it {need}: "
                f"`ip tuntap del dev {a.ifname} mode tap && ip tuntap add dev {a.ifname} mode tap user $USER"
                + (" multi_queue" if a.queues > 1 else "") + "`"
            )
        # TUNSETIFF rewrites the device's vnet_hdr flag, so open it with the flag it already has:
        # a managed='no' tap is never changed. Without vnet_hdr QEMU simply does no offloads.
        if a.vnet_hdr and not attrs.vnet_hdr:
            outcome.warnings.append(
                f"target dev '{a.ifname}' (managed='no') was created without vnet_hdr, so the guest gets no "
                f"checksum/segmentation offloads; recreate it with `ip tuntap add dev {a.ifname} mode tap "
                "vnet_hdr ...` for full virtio performance")
        _, fds = tun.open_tap(a.ifname, vnet_hdr=attrs.vnet_hdr, multi_queue=a.queues > 1, queues=a.queues,
                              tun_path=self.tun_path)
        outcome.fds.setdefault(a.index, HostFds()).taps = fds

        def close():
            for fd in fds:
                _close(fd)
            outcome.fds.pop(a.index, None)

        undo.append(close)

    def _check_bridge(self, a, outcome, undo):
        link = self.nl.link(a.bridge)
        if link is None:
            raise HostError(f"bridge '{a.bridge}' does not exist; create it first, e.g. "
                            f"`ip link add {a.bridge} type bridge && ip link set {a.bridge} up`")
        if link.kind != "bridge":
            raise HostError(f"'{a.bridge}' is not a bridge (it is a {link.kind or 'plain'} device)")

    def _run_bridge_helper(self, a, outcome, undo):
        from virtnet.host import bridgeacl, bridgehelper

        bridgeacl.check_bridge_allowed(a.bridge, bridgeacl.helper_acl_path(a.helper))
        fd, ifname = bridgehelper.run_helper(a.helper, a.bridge, vnet_hdr=a.vnet_hdr)
        outcome.fds.setdefault(a.index, HostFds()).taps = [fd]
        outcome.helper_taps[a.index] = ifname

        def close():  # the tap is non-persistent: closing our only fd removes it
            _close(fd)
            outcome.fds.pop(a.index, None)
            outcome.helper_taps.pop(a.index, None)

        undo.append(close)

    def _start_passt(self, a, outcome, undo):
        from virtnet.host import passt

        passt.find_passt(a.argv[0])  # before creating anything: a clear error naming the package
        created = passt.prepare_dir(a.dir)
        entry = {"socket": a.socket, "pidfile": a.pidfile, "dir": a.dir}
        try:
            entry["pid"] = passt.start(a.argv, socket_path=a.socket, pid_path=a.pidfile)
        except BaseException:
            if created:
                passt.stop(entry)  # removes what passt left and the directory we made
            raise
        outcome.passt.append(entry)
        undo.append(lambda: passt.stop(entry))

    def _set_mac(self, a, outcome, undo):
        self.nl.set_mac(a.ifname, a.mac)

    def _set_mtu(self, a, outcome, undo):
        mtu = a.mtu if a.mtu else self.nl.link(a.bridge).mtu
        self.nl.set_mtu(a.ifname, mtu)

    def _enslave(self, a, outcome, undo):
        self.nl.set_master(a.ifname, a.bridge)

    def _set_up(self, a, outcome, undo):
        self.nl.set_up(a.ifname)

    def _run_script(self, a, outcome, undo):
        run_script(a.path, a.ifname)
        if a.downscript:
            undo.append(lambda: run_script(a.downscript, a.ifname, "downscript"))

    def _add_address(self, a, outcome, undo):
        self.nl.add_address(a.ifname, a.address, a.prefix, a.peer)
        if a.ifname in self.unmanaged:
            outcome.added_addresses.append((a.ifname, a.address, a.prefix))
            undo.append(lambda: self.nl.delete_address(a.ifname, a.address, a.prefix))

    def _add_route(self, a, outcome, undo):
        self.nl.add_route(a.ifname, a.address, a.prefix, a.gateway, a.metric)
        if a.ifname in self.unmanaged:
            outcome.added_routes.append((a.ifname, a.address, a.prefix, a.gateway))
            undo.append(lambda: self.nl.delete_route(a.ifname, a.address, a.prefix, a.gateway))

    def _open_vhost(self, a, outcome, undo):
        fds = []
        try:
            for _ in range(a.queues):
                fds.append(os.open(VHOST_NET, os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            for fd in fds:
                _close(fd)
            if a.required:
                raise HostError(f"<driver name='vhost'> was requested for hostnet{a.index}, but {VHOST_NET} "
                                f"is unavailable ({e.strerror}); load the vhost_net module or remove name='vhost'") from None
            outcome.warnings.append(f"hostnet{a.index}: {VHOST_NET} unavailable ({e.strerror}); using userspace virtio-net")
            return
        outcome.fds.setdefault(a.index, HostFds()).vhosts = fds

        def close():
            for fd in fds:
                _close(fd)

        undo.append(close)

    def _start_qemu(self, a, outcome, undo):
        outcome.launched = self.start_qemu(outcome)
        launched = outcome.launched
        undo.append(lambda: self.stop_qemu(launched))

    def _set_link_down(self, a, outcome, undo):
        outcome.launched.qmp.execute("set_link", {"name": a.netdev, "up": False})

    def _resume(self, a, outcome, undo):
        outcome.launched.qmp.execute("cont")


def _same_device(name, indexes):
    try:
        current = socket.if_nametoindex(name)
    except OSError:
        return False  # already gone
    return indexes.get(name, current) == current  # records without indexes: by name, as before


def teardown(netlink, record, stop_qemu):
    """Undo a running domain from its runtime record; collects errors. The order is libvirt's
    except that the taps virtnet created are deleted first (see below).

    NETLINK is None when the domain's network namespace is gone (its devices went with it):
    then only what lives outside it (QEMU, passt, files) is cleaned up. STOP_QEMU may be None
    when the caller already stopped QEMU."""
    errors = []

    def attempt(func, *args):
        try:
            func(*args)
        except Exception as e:  # continue: leaving less behind beats stopping at the first problem
            errors.append(str(e))

    # The taps virtnet created go first, in one netlink request: the kernel then waits for one RCU
    # grace period for all of them, where QEMU exiting first would close their fds one by one at
    # ~20 ms each. QEMU's writes to a deleted tap just fail; it is being stopped anyway.
    if netlink is not None and record.get("created_taps"):
        # Only while each name is still the device virtnet made: after a crash the kernel removed
        # it with QEMU's fds, and another program may have taken the name since.
        ours = [name for name in record["created_taps"] if _same_device(name, record.get("tap_indexes", {}))]
        if ours:
            attempt(netlink.delete_many, ours)
    if stop_qemu is not None:
        attempt(stop_qemu, record)
    if record.get("passt"):
        from virtnet.host import passt

        for entry in record["passt"]:  # with --one-off passt exits with QEMU; make sure, and clean up
            attempt(passt.stop, entry)
    if netlink is None:
        return errors
    for ifname, path in record.get("downscripts", []):
        attempt(run_script, path, ifname, "downscript")
    for ifname, address, prefix in record.get("added_addresses", []):
        if netlink.exists(ifname):
            attempt(netlink.delete_address, ifname, address, prefix)
    for ifname, address, prefix, gateway in record.get("added_routes", []):
        if netlink.exists(ifname):
            attempt(netlink.delete_route, ifname, address, prefix, gateway)
    return errors
