"""Carrying out a plan: tun ioctls for the tap fds, one netlink socket for the rest, and rollback.

Every setup action that leaves something on the host records its inverse (plan.Action.inverse);
if any later action fails, the recorded inverses run, so the host is left exactly as it was (taps
virtnet created are gone, QEMU is stopped, managed='no' taps are untouched apart from what was
undone). The same inverses, kept in the runtime record, are what destroy runs.
"""

import contextlib
import os
import signal
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
    """What setup produced: fds per device, the QEMU process, and what teardown must undo."""

    fds: dict = field(default_factory=dict)  # device alias -> HostFds
    launched: object = None
    inverses: list = field(default_factory=list)  # recorded undo actions, in setup order
    warnings: list = field(default_factory=list)
    helper_taps: dict = field(default_factory=dict)  # device alias -> tap the bridge helper made

    def close_fds(self):
        for fds in self.fds.values():
            for fd in fds.taps + fds.vhosts:
                _close(fd)
        self.fds = {}

    @property
    def teardown(self):
        """The recorded inverses in the order destroy (and rollback) runs them."""
        return p.teardown_order(self.inverses)


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


# Setup kinds that change one attribute of a device and record no inverse (a managed tap's MAC,
# MTU, master and up state go with the tap). Consecutive ones of a tap created just before go to
# the kernel as one request: see Executor.run.
LINK_CHANGES = (p.SetMac, p.SetMtu, p.Enslave, p.SetUp)


@dataclass
class TapChanges:
    """The link changes held back for the tap created last, to be sent in one request."""

    ifname: str
    ifindex: int
    actions: list = field(default_factory=list)

    def takes(self, action):
        return isinstance(action, LINK_CHANGES) and action.ifname == self.ifname


def run_script(path, ifname, what="script", timeout=None):
    """Run an interface script with the ifname as its only argument; non-zero exit fails. The script
    runs in a process group of its own, so one that hangs is killed with everything it started."""
    timeout = SCRIPT_TIMEOUT if timeout is None else timeout
    try:
        process = subprocess.Popen([path, ifname], env=SCRIPT_ENV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as e:
        raise HostError(f"cannot run {what} '{path}' for {ifname}: {e.strerror}") from None
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise HostError(f"{what} '{path}' for {ifname} did not finish within {timeout:g} s; it was killed "
                        "with the processes it started") from None
    if process.returncode != 0:
        detail = (stderr.strip().splitlines() or ["no output"])[-1]
        raise HostError(f"{what} '{path}' {ifname} exited with status {process.returncode}: {detail}")


class Executor:
    """Runs a plan's setup actions, recording the inverse of each one that leaves something on the
    host; on a failure the recorded inverses are run (rollback), and a started domain's runtime
    record keeps them for destroy, which runs them through `teardown` too.

    `start_qemu(outcome)` is called for the StartQemu action and returns the launched process (with
    .pid and .qmp). `qemu` (a qemu.hotplug.DeviceMonitor) carries out the QMP actions of a hot-plug.
    `journal(inverses)`, when given, durably records the inverses so far (in setup order) before
    every step whose effect would outlive this process, so that a start or hot-plug killed at any
    point can be undone by the next command. NETLINK may be None for a teardown whose network
    namespace is gone."""

    def __init__(self, netlink, *, start_qemu=None, qemu=None, journal=None, tun_path=tun.TUN_PATH):
        self.nl = netlink
        self.start_qemu = start_qemu
        self.qemu = qemu
        self.journal = journal
        self.tun_path = tun_path
        self.launched = None
        self._held = None  # TapChanges not sent yet

    def setup(self, plan):
        outcome = Outcome()
        self._held = None
        try:
            for action in plan.setup:
                self.run(action, outcome)
            self._send_held(outcome)
        except BaseException as failure:
            leftovers = self.teardown(outcome.teardown)
            outcome.close_fds()
            if leftovers and isinstance(failure, HostError):
                failure.message += "; rolling back also failed: " + "; ".join(leftovers)
            raise
        return outcome

    def run(self, action, outcome):
        """Carry out one setup action; its inverse (if any) is recorded in OUTCOME.

        Link changes of the tap created just before are held back, and sent together before any
        other action runs (or at the end of setup): one request by ifindex instead of one each.
        They record no inverse, so the journal and rollback are the same either way. Only setup
        calls it (it sends what is still held); a test injects failures here."""
        if self._held is not None and self._held.takes(action):
            self._held.actions.append(action)
            return
        self._send_held(outcome)
        handler = self._handler(action)
        pending = action.inverse()
        if self.journal is not None and pending is not None and pending.kind in OUTLIVES_THE_PROCESS:
            self.journal(outcome.inverses + [pending])
        inverse = handler(action, outcome)
        if inverse is not None:
            outcome.inverses.append(inverse)
            if self.journal is not None and inverse.kind == "stop-qemu":
                self.journal(list(outcome.inverses))  # now with QEMU's pid

    def _send_held(self, outcome):
        """Send the held link changes as one request; if the kernel refuses it, they are redone one
        by one, so that the change at fault fails with its own error (e.g. the MTU range)."""
        held, self._held = self._held, None
        if held is None or not held.actions:
            return
        try:
            self.nl.change_link(held.ifname, held.ifindex, **self._link_request(held.actions))
        except HostError:
            for action in held.actions:
                self._handler(action)(action, outcome)

    def _link_request(self, actions):
        """Netlink.change_link's keywords for the link changes ACTIONS (LINK_CHANGES of one device)."""
        request, bridges = {}, {}

        def bridge(name):  # read once for both its MTU and its ifindex
            if name not in bridges:
                bridges[name] = self.nl.link(name)
            if bridges[name] is None:
                raise HostError(f"no bridge '{name}'")  # the one-by-one pass gives the real error
            return bridges[name]

        for a in actions:
            if isinstance(a, p.SetMac):
                request["mac"] = a.mac
            elif isinstance(a, p.SetMtu):
                request["mtu"] = a.mtu if a.mtu else bridge(a.bridge).mtu
            elif isinstance(a, p.Enslave):
                request["master"] = bridge(a.bridge).index
            elif isinstance(a, p.SetUp):
                request["up"] = True
        return request

    def _handler(self, action):
        return getattr(self, "_" + action.kind.replace("-", "_"))

    def teardown(self, actions):
        """Run teardown actions (in the order given: see plan.teardown_order). Every one is tried;
        the errors are returned, not raised, so that leaving less behind wins over stopping early."""
        errors = []

        def attempt(func, *args):
            try:
                func(*args)
            except Exception as e:
                errors.append(str(e))

        taps = [a for a in actions if isinstance(a, p.DeleteTap)]
        if taps and self.nl is not None:
            # Only while each name is still the device virtnet made: after a crash the kernel removed
            # it with QEMU's fds, and another program may have taken the name since.
            ours = [a.ifname for a in taps if _same_device(a.ifname, a.ifindex)]
            if ours:
                attempt(self.nl.delete_many, ours)
        for action in actions:
            if isinstance(action, p.DeleteTap):
                continue
            if self.nl is None and action.kind in NEEDS_NETNS:
                continue  # the namespace is gone, and its devices with it
            attempt(self._handler(action), action)
        return errors

    # --- setup: one handler per action kind; each returns its recorded inverse or None ----------
    def _create_tap(self, a, outcome):
        ifname, fds = tun.open_tap(a.ifname, vnet_hdr=a.vnet_hdr, multi_queue=a.queues > 1, queues=a.queues,
                                   tun_path=self.tun_path, exclusive=True)
        outcome.fds.setdefault(a.device, HostFds()).taps = fds
        inverse = a.inverse()
        inverse.ifindex = socket.if_nametoindex(ifname)  # an ioctl, no netlink round trip
        self._held = TapChanges(ifname, inverse.ifindex)
        return inverse

    def _attach_tap(self, a, outcome):
        from virtnet.host import macvtap

        if macvtap.is_macvtap(a.ifname):  # as libvirt: an administrator's macvtap, opened through its tap device
            fds = macvtap.open_queues(a.ifname, a.queues, vnet_hdr=a.vnet_hdr)
            outcome.fds.setdefault(a.device, HostFds()).taps = fds
            return
        attrs = tun.tap_attributes(a.ifname)
        if attrs is None:
            kind = "does not exist" if not self.nl.exists(a.ifname) else "is not a tap device"
            raise HostError(
                f"target dev '{a.ifname}' (managed='no') {kind}; an administrator must create it first, "
                f"e.g. `ip tuntap add dev {a.ifname} mode tap user $USER"
                + (" multi_queue" if a.queues > 1 else "") + (" vnet_hdr" if a.vnet_hdr else "")
                + "` (see `virtnet plan --format sh`)"
            )
        if attrs.multi_queue != (a.queues > 1):
            need = "with multi_queue" if a.queues > 1 else "without multi_queue"
            raise HostError(
                f"target dev '{a.ifname}' (managed='no') was created {'with' if attrs.multi_queue else 'without'} "
                f"multi_queue but the interface uses {a.queues} queue(s); recreate it {need}: "
                f"`ip tuntap del dev {a.ifname} mode tap && ip tuntap add dev {a.ifname} mode tap user $USER"
                + (" multi_queue" if a.queues > 1 else "") + (" vnet_hdr" if a.vnet_hdr else "") + "`"
            )
        # TUNSETIFF rewrites the device's vnet_hdr flag, so open it with the flag it already has:
        # a managed='no' tap is never changed. Without vnet_hdr QEMU simply does no offloads.
        if a.vnet_hdr and not attrs.vnet_hdr:
            outcome.warnings.append(
                f"target dev '{a.ifname}' (managed='no') was created without vnet_hdr, so the guest gets no "
                f"checksum/segmentation offloads; for full virtio performance recreate it: `ip tuntap del dev "
                f"{a.ifname} mode tap && ip tuntap add dev {a.ifname} mode tap user $USER"
                + (" multi_queue" if a.queues > 1 else "") + " vnet_hdr`")
        _, fds = tun.open_tap(a.ifname, vnet_hdr=attrs.vnet_hdr, multi_queue=a.queues > 1, queues=a.queues,
                              tun_path=self.tun_path)
        outcome.fds.setdefault(a.device, HostFds()).taps = fds

    def _create_macvtap(self, a, outcome):
        from virtnet.host import macvtap

        inverse = a.inverse()
        inverse.ifindex = self.nl.add_macvtap(a.ifname, a.lower, a.mac, a.mode)
        try:
            fds = macvtap.open_queues(a.ifname, a.queues, vnet_hdr=a.vnet_hdr)
        except BaseException:
            self.nl.delete(a.ifname)  # not recorded yet, so rollback would not
            raise
        outcome.fds.setdefault(a.device, HostFds()).taps = fds
        return inverse

    def _set_lower_mac(self, a, outcome):
        link = self.nl.link(a.ifname)
        if link is None:
            raise HostError(f"<source dev='{a.ifname}'> of {a.device} does not exist in this network namespace")
        inverse = a.inverse()
        inverse.mac = link.mac
        if self.journal is not None:
            self.journal(outcome.inverses + [inverse])  # with the MAC to restore, before it changes
        self.nl.set_mac(a.ifname, a.mac)
        return inverse

    def _start_macvtap(self, a, outcome):
        lower = self.nl.link(a.lower)
        if lower is not None and not lower.up:
            self.nl.set_up(a.lower)
        self.nl.set_up(a.ifname)

    def _check_bridge(self, a, outcome):
        link = self.nl.link(a.bridge)
        if link is None:
            raise HostError(f"bridge '{a.bridge}' does not exist; create it first, e.g. "
                            f"`ip link add {a.bridge} type bridge && ip link set {a.bridge} up`")
        if link.kind != "bridge":
            raise HostError(f"'{a.bridge}' is not a bridge (it is a {link.kind or 'plain'} device)")

    def _run_bridge_helper(self, a, outcome):
        from virtnet.host import bridgeacl, bridgehelper

        bridgeacl.check_bridge_allowed(a.bridge, bridgeacl.helper_acl_path(a.helper))
        fd, ifname = bridgehelper.run_helper(a.helper, a.bridge, vnet_hdr=a.vnet_hdr)
        # The tap is non-persistent: it goes when the last fd closes (ours on rollback, QEMU's later).
        outcome.fds.setdefault(a.device, HostFds()).taps = [fd]
        outcome.helper_taps[a.device] = ifname

    def _start_passt(self, a, outcome):
        from virtnet.host import passt

        passt.find_passt(a.argv[0])  # before creating anything: a clear error naming the package
        created = passt.prepare_dir(a.dir)
        inverse = a.inverse()
        try:
            inverse.pid = passt.start(a.argv, socket_path=a.socket, pid_path=a.pidfile)
        except BaseException:
            if created:
                self._stop_passt(inverse)  # removes what passt left and the directory we made
            raise
        return inverse

    def _set_mac(self, a, outcome):
        self.nl.set_mac(a.ifname, a.mac)

    def _set_mtu(self, a, outcome):
        mtu = a.mtu if a.mtu else self.nl.link(a.bridge).mtu
        self.nl.set_mtu(a.ifname, mtu)

    def _enslave(self, a, outcome):
        self.nl.set_master(a.ifname, a.bridge)

    def _set_up(self, a, outcome):
        self.nl.set_up(a.ifname)

    def _isolate_port(self, a, outcome):
        self.nl.set_port_isolated(a.ifname)

    def _run_script(self, a, outcome):
        if a.path:
            run_script(a.path, a.ifname)
        return a.inverse()

    def _add_address(self, a, outcome):
        self.nl.add_address(a.ifname, a.address, a.prefix, a.peer)
        return a.inverse()

    def _add_route(self, a, outcome):
        self.nl.add_route(a.ifname, a.address, a.prefix, a.gateway, a.metric)
        return a.inverse()

    def _apply_filter(self, a, outcome):
        from virtnet.host import nwfilter

        nwfilter.apply(a)
        return a.inverse()

    def _set_coalesce(self, a, outcome):
        from virtnet.host import coalesce

        try:
            warning = coalesce.set_rx_frames(a.ifname, a.frames)
        except OSError as e:
            raise HostError(f"cannot set rx-frames coalescing of '{a.ifname}': {e.strerror}") from None
        if warning:
            outcome.warnings.append(f"{a.device}: {warning}")

    def _shape_inbound(self, a, outcome):
        from virtnet.host import shaping

        return a.inverse() if shaping.shape_inbound(a) else None

    def _shape_outbound(self, a, outcome):
        from virtnet.host import shaping

        return a.inverse() if shaping.shape_outbound(a) else None

    def _open_vhost(self, a, outcome):
        fds = []
        try:
            for _ in range(a.queues):
                fds.append(os.open(VHOST_NET, os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            for fd in fds:
                _close(fd)
            if a.required:
                raise HostError(f"<driver name='vhost'> was requested for {a.device}, but {VHOST_NET} "
                                f"is unavailable ({e.strerror}); load the vhost_net module or remove name='vhost'") from None
            outcome.warnings.append(f"{a.device}: {VHOST_NET} unavailable ({e.strerror}); using userspace virtio-net")
            return
        outcome.fds.setdefault(a.device, HostFds()).vhosts = fds

    def _check_path(self, a, outcome):
        check_disk_path(a.device, a.path, readonly=a.readonly, disk_type=a.disk_type)

    def _start_qemu(self, a, outcome):
        self.launched = outcome.launched = self.start_qemu(outcome)
        inverse = a.inverse()
        inverse.pid = outcome.launched.pid
        return inverse

    def _set_link_down(self, a, outcome):
        qmp = outcome.launched.qmp if outcome.launched is not None else self.qemu.qmp
        qmp.execute("set_link", {"name": a.netdev, "up": False})

    def _add_chardev(self, a, outcome):
        self.qemu.add_chardev(a, outcome)
        return a.inverse()

    def _add_netdev(self, a, outcome):
        self.qemu.add_netdev(a, outcome)
        return a.inverse()

    def _add_device(self, a, outcome):
        self.qemu.add_device(a, outcome)
        return a.inverse()

    def _resume(self, a, outcome):
        outcome.launched.qmp.execute("cont")

    # --- teardown ---------------------------------------------------------------------------------
    def _stop_qemu(self, a):
        from virtnet.qemu.launch import stop

        if self.launched is not None:
            self.launched.qmp.close()  # QEMU serves one QMP client: ours must go before stop's `quit`
        stop(a.pid, a.qmp)

    def _stop_passt(self, a):
        from virtnet.host import passt

        passt.stop({"pid": a.pid, "socket": a.socket, "pidfile": a.pidfile, "dir": a.dir})

    def _delete_device(self, a):
        self.qemu.remove_device(a)

    def _delete_netdev(self, a):
        self.qemu.remove_netdev(a)

    def _remove_chardev(self, a):
        self.qemu.remove_chardev(a)

    def _run_downscript(self, a):
        run_script(a.path, a.ifname, "downscript")

    def _delete_macvtap(self, a):
        if _same_device(a.ifname, a.ifindex):
            self.nl.delete(a.ifname)

    def _restore_mac(self, a):
        if a.mac and self.nl.exists(a.ifname):
            self.nl.set_mac(a.ifname, a.mac)

    def _delete_address(self, a):
        if self.nl.exists(a.ifname):
            self.nl.delete_address(a.ifname, a.address, a.prefix)

    def _remove_filter(self, a):
        from virtnet.host import nwfilter

        nwfilter.remove(a.family, a.table)

    def _unshape_inbound(self, a):
        from virtnet.host import shaping

        shaping.unshape_inbound(a.ifname)

    def _unshape_outbound(self, a):
        from virtnet.host import shaping

        shaping.unshape_outbound(a.ifname, a.ifb)

    def _delete_route(self, a):
        if self.nl.exists(a.ifname):
            self.nl.delete_route(a.ifname, a.address, a.prefix, a.gateway)


# What a setup step leaves behind that survives a killed `virtnet start` (created taps do not: they
# are not persistent and vanish with the last fd, ours or QEMU's, which QEMU's teardown covers).
OUTLIVES_THE_PROCESS = ("stop-qemu", "stop-passt", "delete-address", "delete-route", "run-downscript",
                        "delete-macvtap",  # a macvtap is persistent; restore-mac journals itself
                        "unshape-inbound", "unshape-outbound",  # qdiscs of managed='no' taps; ifb devices
                        "remove-filter")
# Teardown kinds that act inside the domain's network namespace (skipped when it is gone).
NEEDS_NETNS = ("delete-tap", "delete-address", "delete-route", "run-downscript", "delete-macvtap", "restore-mac",
               "unshape-inbound", "unshape-outbound", "remove-filter")


def check_disk_path(device, path, *, readonly, disk_type):
    """A disk's source as QEMU will need it: present, of its kind (QEMU's host_device driver takes
    block devices only, its file driver no directories) and accessible to this process."""
    import stat

    try:
        info = os.stat(path)
    except OSError as e:
        raise HostError(f"disk {device}: cannot use {path}: {e.strerror}") from None
    if disk_type == "block" and not stat.S_ISBLK(info.st_mode):
        raise HostError(f"disk {device}: {path} is not a block device; use <disk type='file'> with "
                        f"<source file='{path}'> for an image file")
    if disk_type != "block" and stat.S_ISDIR(info.st_mode):
        raise HostError(f"disk {device}: {path} is a directory, not a disk image")
    wanted = os.R_OK if readonly else os.R_OK | os.W_OK
    if not os.access(path, wanted):
        need = "read" if readonly else "read and write"
        raise HostError(f"disk {device}: {path} exists, but this user may not {need} it"
                        + ("" if readonly else " (add <readonly/> if the guest only reads it)"))


def _same_device(name, ifindex):
    try:
        current = socket.if_nametoindex(name)
    except OSError:
        return False  # already gone
    return ifindex in (None, current)
