"""The QEMU command line for a domain: the skeleton plus one -netdev/-device pair per interface."""

from collections import Counter
from dataclasses import dataclass, field

from virtnet.errors import XMLInputError
from virtnet.qemu import netprops, render
from virtnet.qemu.netprops import HostFds

DEFAULT_EMULATOR = "/usr/bin/qemu-system-x86_64"
FIRST_FD = 3  # xml2argv numbers descriptors from 3, as if stdin/stdout/stderr were the only ones open
# Devices virtnet renders itself; everything else under <devices> is reported as not rendered.
RENDERED_DEVICES = ("emulator", "interface")
MEMORY_BACKEND_ID = "pc.ram"
UNIT_TO_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "KB": 1000 / 1024, "k": 1, "KiB": 1,
               "MB": 1000**2 / 1024, "M": 1024, "MiB": 1024, "GB": 1000**3 / 1024, "G": 1024**2,
               "GiB": 1024**2, "TB": 1000**4 / 1024, "T": 1024**3, "TiB": 1024**3}


@dataclass
class ArgvOptions:
    syntax: str = "json"  # or "keyval"
    standalone: bool = False  # QEMU opens taps by name; no fds
    network_only: bool = False
    host_caps: frozenset = frozenset()  # e.g. {"vhost-net"}
    fds: dict = field(default_factory=dict)  # interface alias -> HostFds (real ones at start)
    bridge_helper: str = None  # standalone: helper= for bridges (the caller finds the default)


def placeholder_fds(domain, host_caps):
    """Descriptor numbers for xml2argv output: 3, 4, ... in document order (taps, then vhost)."""
    fds, next_fd = {}, FIRST_FD
    for iface in domain.interfaces:
        if not (iface.kind.tap and iface.kind.driven):
            continue
        count = iface.queue_count
        taps = list(range(next_fd, next_fd + count))
        next_fd += count
        vhosts = []
        if netprops.wants_vhost(domain, iface, host_caps):
            vhosts = list(range(next_fd, next_fd + count))
            next_fd += count
        fds[iface.ids.alias] = HostFds(taps=taps, vhosts=vhosts)
    return fds


def memory_kib(domain):
    """Guest RAM in KiB, rounded up to whole MiB as QEMU wants (libvirt does the same)."""
    kib = (domain.memory or 0) * UNIT_TO_KIB[domain.memory_unit or "KiB"]
    return int(-(-kib // 1024) * 1024)


def shared_memory(domain):
    """<memoryBacking><access mode='shared'/>: guest RAM that vhost-user backends can map."""
    return domain.memory_access == "shared"


def check_shared_memory(domain):
    """vhost-user backends (passt --vhost-user, OVS-DPDK, ...) map the guest's RAM, so QEMU must
    allocate it shareable; without that the guest's NIC never passes traffic."""
    if shared_memory(domain):
        return
    for iface in domain.interfaces:
        if iface.type == "vhostuser":
            raise XMLInputError(
                "<interface type='vhostuser'> needs guest RAM that QEMU shares with the vhost-user backend: "
                "add <memoryBacking><access mode='shared'/></memoryBacking> to the domain (virtnet then "
                "backs the RAM with a shared memfd)", line=iface.line)


def memory_backend(domain, syntax):
    """The shared RAM backend (-object) for <access mode='shared'/>; libvirt's id for PC machines."""
    props = {"qom-type": "memory-backend-memfd", "id": MEMORY_BACKEND_ID, "share": True,
             "size": memory_kib(domain) * 1024}
    return ["-object", render.option_value(props, syntax, "qom-type")]


def qmp_chardev_value(qmp_path):
    """The QMP server's -chardev value (keyval: a comma inside the path is written twice)."""
    return f"socket,id=charmonitor,path={render.keyval_escape(qmp_path)},server=on,wait=off"


def qmp_options(qmp_path):
    """The -chardev/-mon pair that puts a QMP server on qmp_path (kept here, free of process and
    socket imports, so that xml2argv stays cheap)."""
    return ["-chardev", qmp_chardev_value(qmp_path), "-mon", "chardev=charmonitor,id=monitor,mode=control"]


def skeleton(domain, paths, syntax="json", standalone=False):
    """The machine part of the command line. Standalone lines run by themselves: no -S and no QMP
    socket in virtnet's runtime directory (nothing would resume the guest or create the directory)."""
    shared = shared_memory(domain)
    argv = [domain.emulator or DEFAULT_EMULATOR]
    argv += ["-name", "guest=" + render.keyval_escape(domain.name)]
    if not standalone:
        argv += ["-S"]  # start paused: virtnet sets links over QMP, then runs the vCPUs
    machine = domain.machine or "pc"
    argv += ["-machine", machine + (f",memory-backend={MEMORY_BACKEND_ID}" if shared else "")]
    argv += ["-accel", "kvm" if domain.type == "kvm" else "tcg"]
    argv += ["-m", f"size={memory_kib(domain)}k"]
    if shared:
        argv += memory_backend(domain, syntax)
    argv += ["-smp", str(domain.vcpu or 1)]
    argv += ["-uuid", domain.uuid]
    argv += ["-display", "none", "-no-user-config", "-nodefaults"]
    if not standalone:
        argv += qmp_options(str(paths.qmp))
    return argv


def network_options(domain, paths, options):
    argv = []
    fds = options.fds
    for iface in domain.interfaces:
        if iface.type == "vhostuser":
            chardev = netprops.chardev_props(iface, paths)
            argv += ["-chardev", render.to_keyval(chardev, "backend")]
        host_fds = fds.get(iface.ids.alias, HostFds())
        netdev = netprops.netdev_props(domain, iface, fds=host_fds, paths=paths, host_caps=options.host_caps,
                                       standalone=options.standalone, helper=options.bridge_helper)
        # Fewer tap fds than <driver queues> (qemu-bridge-helper passes one): the NIC gets as many.
        opened = len(host_fds.taps) if iface.kind.tap and not options.standalone else 0
        device = netprops.device_props(domain, iface, queues=opened or None)
        argv += ["-netdev", render.option_value(netdev, options.syntax, "type")]
        argv += ["-device", render.option_value(device, options.syntax, "driver")]
    return argv


def build_argv(domain, paths, options):
    """The argv list. For xml2argv, options.fds is filled with placeholders when empty."""
    check_shared_memory(domain)
    if not options.fds and not options.standalone:
        options.fds = placeholder_fds(domain, options.host_caps)
    network = network_options(domain, paths, options)
    if options.network_only:
        return network
    return skeleton(domain, paths, options.syntax, options.standalone) + network


def unrendered_devices(domain):
    """Devices under <devices> that the command line leaves out, e.g. 'disk (line 17), input ×2'."""
    counts, first_line = Counter(), {}
    for node in domain.devices:
        if isinstance(node.tag, str) and node.tag not in RENDERED_DEVICES:
            counts[node.tag] += 1
            first_line.setdefault(node.tag, node.sourceline)
    return [f"<{tag}> (line {first_line[tag]})" + (f" ×{n}" if n > 1 else "") for tag, n in counts.items()]
