"""Real QEMU judges the command lines: every accepted xml2argv golden is started, paused.

Each case runs in a fresh network namespace, with what its argv needs from the host provided by
the test itself, never by the host's own devices:
  tap fds        opened here with virtnet.host.tun.open_tap (a managed='no' tap is created first,
                 persistent, as an administrator would; standalone taps QEMU creates itself)
  vhost-user     a minimal vhost-user backend (VhostUserBackend) on a socket of the test's; for
                 mode='server' chardevs, which make QEMU wait for a peer, it connects as the client
  passt          a listening unix socket at the path passt would use
  socket types   the addresses on lo, a multicast route, and a listener for `connect=`
  bridge helper  a bridge in the namespace, and an ACL allowing it on a private /etc overlay
                 (in the mount namespace the test thread has to itself)
  disks          an image of the disk's format (raw: a sparse file; qcow2: qemu-img create) in
                 the case's work directory in place of the golden's path; for <disk
                 type='block'> a loop device over such an image (QEMU's host_device driver
                 takes block devices only)
The argv is built with virtnet.qemu.argv.build_argv, as `virtnet start` does: the golden's options
with real fds and the test's runtime directory (QMP, passt socket). QEMU is then asked over QMP
whether every NIC exists with the id, model, MAC and netdev the argv gave it, and every netdev
with the expected backend type; whether every disk is there with libvirt's id, its format node,
format and read-only flag (query-block); and whether every PCI device sits on the bus and slot
its XML address gives (query-pci: on q35, behind its pcie-root-port). An argv QEMU refuses fails
with QEMU's message.
"""

import array
import ctypes
import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import guestfiles
from guestfiles import Listener, join_threads, shut_sockets, start_thread
import hostops
from conftest import require_host_privileges
from virtnet.golden import case_options
from virtnet.conf.load import load_file
from virtnet.errors import HostError
from virtnet.host.bridgehelper import find_helper
from virtnet.qemu import netprops
from virtnet.qemu.argv import ArgvOptions, build_argv
from virtnet.qemu.argv import qmp_options
from virtnet.qemu.launch import launch, stop
from virtnet.runpaths import DomainPaths

REPO = Path(__file__).resolve().parents[1]
ARGV_DIR = REPO / "testdata" / "xml2argv"
QEMU = "/usr/bin/qemu-system-x86_64"
VHOST_NET = "/dev/vhost-net"

# Goldens whose argv QEMU must refuse, with the reason and a fragment of QEMU's message.
EXPECTED_REFUSALS = {
    "net-many-models": ("the golden passes an unknown <model type='idontexist'> through as the "
                        "-device driver, as libvirt does", "'idontexist' is not a valid device model name"),
}
# info network's name for each -netdev type.
NETDEV_KIND = {"tap": "tap", "bridge": "tap", "user": "user", "socket": "socket", "stream": "stream",
               "vhost-user": "vhost-user"}


def golden_cases():
    return sorted(p for p in ARGV_DIR.glob("*.xml") if p.with_suffix(".args").exists())


def require_qemu_host():
    require_host_privileges()
    if not os.access(QEMU, os.X_OK):
        pytest.skip(f"needs {QEMU} (Debian: qemu-system-x86)")


def kvm_usable():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def vhost_net_usable():
    try:
        os.close(os.open(VHOST_NET, os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


# -- a vhost-user backend just capable enough for QEMU to set its netdev up ---------------------------

class VhostUserBackend:
    """Answers the vhost-user messages QEMU sends while creating a vhost-user netdev.

    Offers VIRTIO_F_VERSION_1 and the protocol-features bit, with the MQ protocol feature and 8
    queue pairs; every other message is read (fds closed) and answered only when QEMU asks for a
    reply. Listens on PATH (QEMU's chardev is a client) or, with connect=True, connects to the
    socket QEMU listens on (chardev server=on).
    """

    GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS = 1, 15, 17, 36
    FEATURES = (1 << 32) | (1 << 30)  # VIRTIO_F_VERSION_1, VHOST_USER_F_PROTOCOL_FEATURES
    PROTOCOL_FEATURES = 1 << 0  # VHOST_USER_PROTOCOL_F_MQ
    REPLIES = {GET_FEATURES: FEATURES, GET_PROTOCOL_FEATURES: PROTOCOL_FEATURES, GET_QUEUE_NUM: 8,
               GET_MAX_MEM_SLOTS: 8}
    NEED_REPLY = 0x8

    def __init__(self, path, *, connect=False):
        self.path = str(path)
        self.requests = []
        self._stop = threading.Event()
        self._sockets, self._threads = [], []
        if connect:
            target = self._connect_loop
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            listener.bind(self.path)
            listener.listen(4)
            self._sockets.append(listener)
            target = self._accept_loop
        start_thread(self._threads, target)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sockets[0].accept()
            except OSError:
                return
            self._serve_in_thread(conn)

    def _connect_loop(self):
        while not self._stop.is_set():
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                conn.connect(self.path)
            except OSError:
                conn.close()
                time.sleep(0.02)
                continue
            self._serve_in_thread(conn)
            return

    def _serve_in_thread(self, conn):
        self._sockets.append(conn)
        start_thread(self._threads, self._serve, conn)

    def _serve(self, conn):
        try:
            while True:
                header, ancillary, _, _ = conn.recvmsg(12, socket.CMSG_SPACE(16 * 4))
                if len(header) < 12:
                    return
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        for fd in array.array("i", data[: len(data) - len(data) % 4]):
                            os.close(fd)
                request, flags, size = struct.unpack("<III", header)
                while size:
                    size -= len(conn.recv(size))
                self.requests.append(request)
                value = self.REPLIES.get(request, 0 if flags & self.NEED_REPLY else None)
                if value is not None:
                    conn.sendall(struct.pack("<IIIQ", request, 0x1 | 0x4, 8, value))
        except OSError:
            return

    def close(self):
        self._stop.set()
        shut_sockets(self._sockets)
        join_threads(self._threads)


# -- a private /etc for qemu-bridge-helper's ACL --------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def overlay_etc_with_bridge_acl(workdir, bridges):
    """Lay /etc/qemu/bridge.conf ('allow BRIDGE') over /etc in this thread's mount namespace.

    The netns fixture gave the test thread a mount namespace of its own whose mounts do not
    propagate to the host, so the host's /etc is untouched and QEMU (our child) inherits the view.
    """
    upper, work = Path(workdir) / "etc-upper", Path(workdir) / "etc-work"
    (upper / "qemu").mkdir(parents=True)
    work.mkdir()
    (upper / "qemu" / "bridge.conf").write_text("".join(f"allow {b}\n" for b in bridges))
    options = f"lowerdir=/etc,upperdir={upper},workdir={work}".encode()
    if _libc.mount(b"overlay", b"/etc", b"overlay", 0, options) != 0:
        raise OSError(ctypes.get_errno(), "mount overlay on /etc: " + os.strerror(ctypes.get_errno()))


# -- disk images --------------------------------------------------------------------------------------

QEMU_IMG = "/usr/bin/qemu-img"
IMAGE_SIZE = 1 << 20


def make_image(path, fmt):
    """A 1 MiB image at PATH: sparse raw, or qcow2 made by qemu-img (Debian: qemu-utils)."""
    if fmt == "raw":
        with open(path, "wb") as image:
            image.truncate(IMAGE_SIZE)
        return path
    if not os.access(QEMU_IMG, os.X_OK):
        pytest.skip(f"needs {QEMU_IMG} for a {fmt} image (Debian: qemu-utils)")
    subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, str(path), str(IMAGE_SIZE)], check=True,
                   capture_output=True, text=True)
    return path


def attach_loop(image):
    """A loop device over IMAGE (detach_loop removes it)."""
    return subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                          text=True).stdout.strip()


def detach_loop(device):
    subprocess.run(["losetup", "--detach", device], capture_output=True)


# -- one case ----------------------------------------------------------------------------------------

class CaseHost:
    """Everything one case's argv needs from the host, set up in the current network namespace."""

    def __init__(self, netns, workdir, domain, standalone):
        self.netns, self.workdir, self.domain = netns, Path(workdir), domain
        self.paths = DomainPaths(self.workdir / "run", domain.name)
        self.paths.dir.mkdir(parents=True)
        self.fds, self.pass_fds, self.closers = {}, [], []
        self.vhost = vhost_net_usable()
        self.has_vhost_user = False
        self.client_listeners = []  # QEMU's connect= must reach these
        try:
            self._disks()
            self._socket_needs()
            for index, iface in enumerate(domain.interfaces):
                if iface.type == "vhostuser":
                    self._vhost_user(iface)
                elif iface.type == "user" and iface.uses_passt:
                    path = self.paths.passt_socket(iface.ids.device)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    self.closers.append(Listener(socket.AF_UNIX, str(path)).close)
                elif iface.type in ("ethernet", "bridge", "direct", "network"):
                    if standalone:
                        self._standalone_tap(iface)
                    else:
                        self._tap(index, iface)
        except BaseException:
            self.close()
            raise

    def _disks(self):
        """An image (and for type='block' a loop device) for every disk the argv opens."""
        from virtnet.qemu.storage import rendered_disks

        for disk in rendered_disks(self.domain):
            if disk.path is None:
                continue  # an empty CD-ROM
            image = make_image(self.workdir / f"{disk.ids.alias}.{disk.format or 'raw'}", disk.format or "raw")
            if disk.type == "block":
                loop = attach_loop(image)
                self.closers.append(lambda loop=loop: detach_loop(loop))
                disk.source_dev = loop
            else:
                disk.source_file = str(image)

    def _socket_needs(self):
        socket_ifaces = [i for i in self.domain.interfaces if i.type in ("server", "client", "mcast", "udp")]
        addresses = set()
        for iface in socket_ifaces:
            for addr in (iface.source.address, iface.source.local_address):
                if addr and not ipaddress.ip_address(addr).is_multicast:
                    addresses.add(addr)  # to listen on, bind to or connect to
        for addr in sorted(addresses):
            ip("-n", self.netns, "addr", "add", f"{addr}/32", "dev", "lo")
        if any(i.type == "mcast" for i in socket_ifaces):
            # A multicast group is joined on an interface with a route to 224.0.0.0/4.
            ip("-n", self.netns, "link", "add", "vnt-mc0", "type", "veth", "peer", "name", "vnt-mc1")
            for dev in ("vnt-mc0", "vnt-mc1"):
                ip("-n", self.netns, "link", "set", dev, "up")
            ip("-n", self.netns, "addr", "add", "10.99.0.1/24", "dev", "vnt-mc0")
            ip("-n", self.netns, "route", "add", "224.0.0.0/4", "dev", "vnt-mc0")
        listens = {(i.source.address or "", i.source.port) for i in socket_ifaces if i.type == "server"}
        for iface in socket_ifaces:
            src = iface.source
            if iface.type == "client" and not ({("", src.port), (src.address, src.port)} & listens):
                listener = Listener(socket.AF_INET, (src.address, src.port))
                self.client_listeners.append(listener)
                self.closers.append(listener.close)

    def _vhost_user(self, iface):
        self.has_vhost_user = True
        alias = iface.ids.device
        if iface.uses_passt:
            path, qemu_listens = self.paths.passt_socket(alias), False
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            # The XML's socket path is the host's business: use one of the test's.
            path, qemu_listens = self.workdir / f"vu-{alias}.sock", iface.source.mode == "server"
            iface.source.path = str(path)
        backend = VhostUserBackend(path, connect=qemu_listens)
        self.closers.append(backend.close)

    def _tap(self, index, iface):
        from virtnet.host.tun import open_tap

        queues = iface.queue_count
        if iface.type == "direct":
            taps = self._macvtap(index, iface)
        else:
            _, taps = open_tap(f"vq{index}-%d", vnet_hdr=iface.wants_vnet_hdr, multi_queue=queues > 1, queues=queues)
        self.closers += [lambda fd=fd: os.close(fd) for fd in taps]
        vhosts = []
        if self.vhost and netprops.wants_vhost(self.domain, iface, {"vhost-net"}):
            for _ in range(queues):
                vhosts.append(os.open(VHOST_NET, os.O_RDWR | os.O_CLOEXEC))
                self.closers.append(lambda fd=vhosts[-1]: os.close(fd))
        self.fds[iface.ids.alias] = netprops.HostFds(taps=taps, vhosts=vhosts)
        self.pass_fds += taps + vhosts

    def _macvtap(self, index, iface):
        """A macvtap on a veth named as <source dev>, its queues opened as `virtnet start` does."""
        from virtnet.host import macvtap

        lower = iface.source.dev
        if not os.path.exists(f"/sys/class/net/{lower}"):
            ip("-n", self.netns, "link", "add", lower, "type", "veth", "peer", "name", f"{lower}-far")
        ip("-n", self.netns, "link", "add", "link", lower, "name", f"mvq{index}", "type", "macvtap")
        return macvtap.open_queues(f"mvq{index}", iface.queue_count, vnet_hdr=iface.wants_vnet_hdr)

    def _standalone_tap(self, iface):
        if iface.type == "bridge":
            bridge = iface.source.bridge
            ip("-n", self.netns, "link", "add", bridge, "type", "bridge")
            ip("-n", self.netns, "link", "set", bridge, "up")
            overlay_etc_with_bridge_acl(self.workdir, [bridge])
            self.closers.append(lambda: _libc.umount2(b"/etc", 2))
        elif iface.unmanaged:
            # managed='no': the tap exists before QEMU opens it by name (the namespace removes it).
            hostops.create_persistent_tap(iface.target_dev, multi_queue=iface.queue_count > 1,
                                          vnet_hdr=iface.wants_vnet_hdr)

    def close(self):
        for close in reversed(self.closers):
            close()
        self.closers = []


def qemu_argv(case, domain, host):
    opts = case_options(case)
    standalone = "--standalone" in opts
    helper = None
    if standalone and any(iface.type == "bridge" for iface in domain.interfaces):
        helper = find_helper()  # this host's, as `virtnet xml2argv --standalone` names it
    options = ArgvOptions(syntax="keyval" if "--syntax" in opts else "json",
                          standalone=standalone, fds=dict(host.fds), bridge_helper=helper,
                          host_caps=frozenset({"vhost-net"}) if host.vhost else frozenset())
    argv = build_argv(domain, host.paths, options)
    argv[0] = QEMU  # goldens may name another emulator (qemu-system-i686): x86_64 runs them all
    if options.standalone:  # a standalone line has no monitor and runs at once: add both for the check
        argv[1:1] = ["-S", *qmp_options(str(host.paths.qmp))]
    if not kvm_usable() and "kvm" in argv:
        argv[argv.index("kvm")] = "tcg"  # the host lacks /dev/kvm; the argv is the same otherwise
    return argv


def expected_nics(domain, host):
    """{device id: (driver, mac, netdev id, netdev kind)} as the argv gives them."""
    nics = {}
    for iface in domain.interfaces:
        device = netprops.device_props(domain, iface)
        netdev = netprops.netdev_props(domain, iface, fds=host.fds.get(iface.ids.alias, netprops.HostFds()),
                                       paths=host.paths, standalone=False)
        kind = "tap" if iface.type in ("ethernet", "bridge", "network") else NETDEV_KIND[netdev["type"]]
        nics[device["id"]] = (device["driver"], device["mac"], device["netdev"], kind)
    return nics


INFO_NIC = re.compile(r"^(\S+): index=0,type=nic,model=([^,]+),macaddr=(\S+)\r?$")
INFO_NETDEV = re.compile(r"^ \\ (\S+): index=0,type=([^,]+),")


def info_network(qmp):
    """{nic id: (model, mac, netdev id, netdev type)} from HMP `info network` (queue 0 lines)."""
    found, nic = {}, None
    for line in hostops.hmp(qmp, "info network").splitlines():
        if m := INFO_NIC.match(line):
            nic = m.groups()
        elif (m := INFO_NETDEV.match(line)) and nic is not None:
            found[nic[0]] = (nic[1], nic[2], m.group(1), m.group(2))
            nic = None
    return found


def expected_disks(domain):
    """{disk id: (format node, format, read-only), or None for an empty CD-ROM} as the argv gives them."""
    from virtnet.qemu.storage import rendered_disks

    return {disk.ids.alias: (disk.ids.format_node, disk.format or "raw", disk.readonly) if disk.path else None
            for disk in rendered_disks(domain)}


def block_devices(qmp):
    """{device id: what query-block says is inserted (None: no medium)}. A device's qdev is its id,
    or for virtio-blk the path of its backend (/machine/peripheral/ID/virtio-backend)."""
    found = {}
    for entry in qmp.execute("query-block"):
        qdev = entry.get("qdev", "").removesuffix("/virtio-backend")
        found[qdev.rsplit("/", 1)[-1]] = entry.get("inserted")
    return found


def check_disks(qmp, domain):
    """Every rendered disk is a block device of QEMU's with libvirt's id, format node, format and
    read-only flag; an empty CD-ROM has no medium."""
    expected, found = expected_disks(domain), block_devices(qmp)
    assert set(expected) <= set(found), f"disks QEMU has: {sorted(found)}"
    for ident, want in expected.items():
        inserted = found[ident]
        if want is None:
            assert inserted is None, f"{ident}: an empty CD-ROM, but QEMU has {inserted}"
        else:
            got = (inserted["node-name"], inserted["drv"], inserted["ro"])
            assert got == want, f"{ident}: query-block says {got}"


def pci_place(qmp, ident):
    """(bus name, slot, function) of PCI device IDENT as QOM has it: the name of its parent bus
    ('pci.0', 'pcie.0', or 'pci.N' provided by the controller of that id) and its devfn. (query-pci
    lists devices behind bridges by bus number, which the firmware assigns: a paused guest has none.)"""
    path = f"/machine/peripheral/{ident}"
    bus = qmp.execute("qom-get", {"path": path, "property": "parent_bus"}).rsplit("/", 1)[-1]
    devfn = qmp.execute("qom-get", {"path": path, "property": "addr"})
    return bus, devfn >> 3, devfn & 7


def check_pci_layout(qmp, domain):
    """NICs, disks and the controllers virtnet renders sit where their XML address says: on the
    root bus, or on bus 'pci.N' of the controller with index N (on q35, each behind its root port)."""
    from virtnet.conf.pci import bus_name
    from virtnet.qemu import storage

    devices = [(iface.ids.alias, iface.address) for iface in domain.interfaces]
    devices += [(disk.ids.alias, disk.pci) for disk in storage.rendered_disks(domain)]
    devices += [(c.alias, c.pci) for c in domain.controllers if storage.controller_props(domain, c) is not None]
    for ident, address in devices:
        if address is None or address.type != "pci":
            continue
        want = (bus_name(domain, address.bus or 0), address.slot, address.function or 0)
        assert pci_place(qmp, ident) == want, f"{ident}: QOM has it at {pci_place(qmp, ident)}, its XML says {want}"


@pytest.mark.parametrize("case", golden_cases(), ids=lambda p: p.stem)
def test_qemu_accepts_the_argv_and_has_the_nics(case, netns):
    require_qemu_host()
    domain = load_file(str(case)).domain
    workdir = tempfile.mkdtemp(prefix="vnt-qa-")  # short: unix socket paths must fit 108 bytes
    host = launched = guest = None
    try:
        guestfiles.skip_unless_runnable(domain)
        guest = guestfiles.GuestFiles(domain, workdir)  # the kernels, firmware and sockets it names
        host = CaseHost(netns, workdir, domain, standalone="--standalone" in case_options(case.stem))
        argv = qemu_argv(case.stem, domain, host)
        try:
            launched = launch(argv, pass_fds=host.pass_fds, qmp_path=str(host.paths.qmp),
                              log_path=str(host.paths.log), timeout=20)
        except HostError as e:
            if case.stem in EXPECTED_REFUSALS:
                assert EXPECTED_REFUSALS[case.stem][1] in str(e), str(e)
                return
            pytest.fail(f"QEMU refused the argv of {case.name}: {e}")
        assert case.stem not in EXPECTED_REFUSALS, f"QEMU accepted {case.name}, expected a refusal"
        qmp = launched.qmp
        expected = expected_nics(domain, host)
        peripherals = {p["name"] for p in qmp.execute("qom-list", {"path": "/machine/peripheral"})}
        assert set(expected) <= peripherals, f"devices QEMU has: {sorted(peripherals)}"
        for ident, (driver, mac, netdev, _) in expected.items():
            path = f"/machine/peripheral/{ident}"
            got = tuple(qmp.execute("qom-get", {"path": path, "property": p}) for p in ("type", "mac", "netdev"))
            assert got == (driver, mac, netdev), f"{ident}: QOM says {got}"
        network = info_network(qmp)
        assert network == {ident: (driver, mac, netdev, kind) for ident, (driver, mac, netdev, kind) in expected.items()}
        for listener in host.client_listeners:
            # connect= is non-blocking in QEMU: a wrong address would start fine, so check it arrived.
            deadline = time.monotonic() + 5
            while not listener.accepted and time.monotonic() < deadline:
                time.sleep(0.01)
            assert listener.accepted, f"QEMU never connected to {listener.sock.getsockname()}"
        if host.has_vhost_user:
            # vhost-user backends map guest RAM: QEMU must have it in a shareable memory backend.
            memdevs = qmp.execute("query-memdev")
            assert memdevs and all(m["share"] for m in memdevs), f"guest RAM not shared: {memdevs}"
        check_disks(qmp, domain)
        check_pci_layout(qmp, domain)
    finally:
        try:
            if launched is not None:
                launched.qmp.close()
                stop(launched.pid, str(host.paths.qmp), timeout=3)
        finally:
            if host is not None:
                host.close()
            if guest is not None:
                guest.close()
            shutil.rmtree(workdir, ignore_errors=True)


def test_expected_refusals_name_goldens():
    names = {p.stem for p in golden_cases()}
    assert set(EXPECTED_REFUSALS) <= names


def test_vhost_net_fds_are_accepted(netns):
    """The vhost=on,vhostfd=N form, with real /dev/vhost-net fds (a kvm virtio tap golden)."""
    require_qemu_host()
    if not vhost_net_usable():
        pytest.skip(f"{VHOST_NET} cannot be opened on this host (no vhost_net in the kernel)")
    case = ARGV_DIR / "net-eth-multiqueue.xml"
    domain = load_file(str(case)).domain
    workdir = tempfile.mkdtemp(prefix="vnt-qa-")
    host = None
    try:
        host = CaseHost(netns, workdir, domain, standalone=False)
        assert all(fds.vhosts for fds in host.fds.values())
        argv = qemu_argv(case.stem, domain, host)
        assert any('"vhostfds"' in word for word in argv)
        launched = launch(argv, pass_fds=host.pass_fds, qmp_path=str(host.paths.qmp), log_path=str(host.paths.log))
        try:
            text = hostops.hmp(launched.qmp, "info network")
            assert "vhost=on" in text, text
        finally:
            launched.qmp.close()
            stop(launched.pid, str(host.paths.qmp), timeout=3)
    finally:
        if host is not None:
            host.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_vhost_user_stand_in_is_needed():
    """Without a backend on its socket, QEMU refuses a vhost-user client chardev: the stand-in
    is what makes these cases startable, not a leniency of QEMU's."""
    require_qemu_host()
    workdir = tempfile.mkdtemp(prefix="vnt-qa-")
    try:
        argv = [QEMU, "-S", "-machine", "pc", "-accel", "tcg", "-display", "none", "-nodefaults",
                "-chardev", f"socket,id=charnet0,path={workdir}/none.sock",
                "-netdev", "vhost-user,chardev=charnet0,id=hostnet0",
                "-device", "virtio-net-pci,netdev=hostnet0,id=net0"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        assert proc.returncode != 0 and "Failed to connect" in proc.stderr, proc.stderr
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
