"""The QEMU command line for a domain, composed in libvirt's option order:

    machine (qemu.machine: -machine, -cpu, -smp, -rtc, -boot, -kernel, firmware, ...)
    virtio-serial controllers (qemu.chardevs)
    storage (qemu.storage: disks and their controllers)
    network (qemu.netprops: one -netdev/-device pair per interface)
    serial ports, channels, consoles, then the balloon and RNGs (qemu.chardevs)
    <qemu:commandline> arguments, last

build_command() also returns the environment QEMU needs (<qemu:env>, a clock's TZ): xml2argv
prints it before the emulator, `virtnet start` hands it to the launcher. Everything here is pure.

unrendered() names every element of the document that does not reach the command line, so
that nothing is dropped silently: xml2argv, plan and start warn about them, and start refuses a
domain whose dropped elements hold the guest's data unless told --allow-dropped.
"""

from collections import Counter

from lxml import etree

from virtnet.conf import iftypes
from virtnet.conf.guest import QEMU_NS, VIRTIO_SERIAL
from virtnet.errors import UnsupportedError
from virtnet.qemu import chardevs, machine, netprops, render, storage
# The machine part's names that the plan, convert and tests take from here.
from virtnet.qemu.machine import DEFAULT_EMULATOR, DEFAULT_STATE_DIR, check_shared_memory, qmp_options
from virtnet.qemu.netprops import HostFds
from virtnet.record import Record

__all__ = ["ArgvOptions", "Command", "Dropped", "build_argv", "build_command", "check_dropped", "network_options",
           "placeholder_fds", "prepare_host", "qemu_commandline_args", "qemu_env", "unrendered", "warnings",
           "DEFAULT_EMULATOR", "DEFAULT_STATE_DIR", "check_shared_memory", "qmp_options"]

FIRST_FD = 3  # xml2argv numbers descriptors from 3, as if stdin/stdout/stderr were the only ones open
# The interface types whose tap fds QEMU is handed. Asked by type name: an interface's `kind` is
# three model look-ups at its first read, which nothing else on the way to the argv needs.
_DRIVEN_TAP_TYPES = frozenset(iftypes.names(tap=True, driven=True))


class ArgvOptions(Record):
    __slots__ = ("syntax", "standalone", "network_only", "host_caps", "fds", "bridge_helper", "state_dir")

    def __init__(self, syntax="json", standalone=False, network_only=False, host_caps=frozenset(), fds=None,
                 bridge_helper=None, state_dir=DEFAULT_STATE_DIR):
        self.syntax = syntax  # or "keyval"
        self.standalone = standalone  # QEMU opens taps by name; no fds
        self.network_only = network_only
        self.host_caps = host_caps  # e.g. {"vhost-net"}
        self.fds = {} if fds is None else fds  # interface alias -> HostFds (real ones at start)
        self.bridge_helper = bridge_helper  # standalone: helper= for bridges (the caller finds the default)
        self.state_dir = state_dir  # where a UEFI guest's NVRAM lives (STATE_DIR/nvram/NAME_VARS.fd)


class Command(Record):
    __slots__ = ("argv", "env")

    def __init__(self, argv, env=None):
        self.argv = argv
        self.env = {} if env is None else env  # set in QEMU's environment, on top of virtnet's own


def placeholder_fds(domain, host_caps):
    """Descriptor numbers for xml2argv output: 3, 4, ... in document order (taps, then vhost)."""
    fds, next_fd = {}, FIRST_FD
    for iface in domain.interfaces:
        if iface.type not in _DRIVEN_TAP_TYPES:
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


def _with_bootindex(device, index):
    """DEVICE's properties with bootindex after mac, where libvirt puts it."""
    out = {}
    for key, value in device.items():
        out[key] = value
        if key == "mac":
            out["bootindex"] = index
    return out


def network_options(domain, paths, options, boot_net=None):
    """-netdev/-device (and a vhost-user NIC's -chardev) of every interface. BOOT_NET: the first
    NIC's bootindex from <os><boot dev='network'> (libvirt's rule; machine.boot_indexes)."""
    argv = []
    fds, syntax, standalone = options.fds, options.syntax, options.standalone
    for position, iface in enumerate(domain.interfaces):
        if iface.type == "vhostuser":
            chardev = netprops.chardev_props(iface, paths)
            argv += ["-chardev", render.to_keyval(chardev, "backend")]
        host_fds = fds.get(iface.ids.alias)
        if host_fds is None:
            host_fds = HostFds()
        netdev = netprops.netdev_props(domain, iface, fds=host_fds, paths=paths, host_caps=options.host_caps,
                                       standalone=standalone, helper=options.bridge_helper)
        # Fewer tap fds than <driver queues> (qemu-bridge-helper passes one): the NIC gets as many.
        opened = len(host_fds.taps) if iface.type in iftypes.TAP_TYPES and not standalone else 0
        device = netprops.device_props(domain, iface, queues=opened or None)
        if boot_net and position == 0 and "bootindex" not in device:
            device = _with_bootindex(device, boot_net)
        argv += ["-netdev", render.option_value(netdev, syntax, "type"),
                 "-device", render.option_value(device, syntax, "driver")]
    return argv


def qemu_commandline_args(domain):
    """<qemu:commandline><qemu:arg value=...>: passed to QEMU as they are, after everything else."""
    commandline = domain.qemu_commandline
    return [arg.value or "" for arg in commandline.args] if commandline is not None else []


def qemu_env(domain):
    """<qemu:commandline><qemu:env name value>: QEMU's extra environment (a missing value is '')."""
    commandline = domain.qemu_commandline
    if commandline is None:
        return {}
    return {env.name: env.value or "" for env in commandline.env}


def build_command(domain, paths, options):
    """The argv and environment. For xml2argv, options.fds is filled with placeholders when empty."""
    if options.network_only:
        check_shared_memory(domain)  # else machine.options checks it, with the rest of the machine
    if not options.fds and not options.standalone:
        options.fds = placeholder_fds(domain, options.host_caps)
    if options.network_only:
        return Command(network_options(domain, paths, options))
    # <os><boot dev>, once for the first NIC and the first disks. The default order ('hd') only
    # ever reaches a disk: a domain without any (most) is spared the walk of its devices it needs.
    boot = machine.boot_indexes(domain, default=bool(domain.disks))
    network = network_options(domain, paths, options, boot.get("network"))
    syntax = options.syntax
    argv, env = machine.options(domain, paths, syntax=syntax, standalone=options.standalone,
                                state_dir=options.state_dir)
    chardevs.check(domain, paths)
    # libvirt's order: PCI, SCSI, SATA controllers (a bus before what sits on it), virtio-serial, disks.
    argv += storage.controller_options(domain, syntax)
    argv += chardevs.controller_options(domain, syntax)
    argv += storage.disk_options(domain, syntax, boot)
    argv += network
    argv += chardevs.chardev_options(domain, paths, syntax)
    argv += chardevs.balloon_options(domain, syntax)
    argv += chardevs.rng_options(domain, syntax)
    argv += qemu_commandline_args(domain)
    return Command(argv, {**env, **qemu_env(domain)})


def build_argv(domain, paths, options):
    """The argv list (build_command without the environment)."""
    return build_command(domain, paths, options).argv


def prepare_host(domain, paths, state_dir):
    """What `virtnet start` sets up on the host before QEMU runs: the UEFI variable store (copied
    from its template at the first start) and the folder of generated channel sockets."""
    machine.prepare_nvram(domain, state_dir)
    chardevs.prepare_host(domain, paths)


# ---------------------------------------------------------------- what does not reach the command line


class Dropped(Record):
    """An element of the domain that the command line leaves out."""

    __slots__ = ("what", "line", "data", "display", "why")

    def __init__(self, what, line, data=False, display=False, why=""):
        self.what = what  # how messages name it: "<disk type='file'>", "<features><hyperv>"
        self.line = line
        self.data = data  # it holds the guest's data: start refuses without --allow-dropped
        self.display = display  # graphics, video, input, sound: the guest runs headless
        self.why = why  # what happens instead, when more than "not rendered"


# <domain> children that the command line renders, or that describe rather than configure the
# guest (name, title, metadata, ...). Their own children are looked at below.
_TOP_RENDERED = frozenset({"name", "uuid", "title", "description", "metadata", "memory", "vcpu", "os",
                           "features", "cpu", "clock", "on_poweroff", "on_reboot", "on_crash", "pm",
                           "devices", "memoryBacking", "currentMemory"})
_OS_RENDERED = frozenset({"type", "boot", "bootmenu", "kernel", "initrd", "cmdline", "loader", "nvram"})
_FEATURES_RENDERED = frozenset({"acpi", "apic", "pae", "vmport", "smm"})
_CPU_RENDERED = frozenset({"model", "feature", "topology"})
_TIMERS_RENDERED = {"rtc": ("tickpolicy", "track"), "pit": ("tickpolicy",), "hpet": ("present",)}
_CHARACTER_DEVICES = frozenset({"serial", "console", "channel", "rng", "memballoon"})
# <interface> children the NIC's options and host actions use (qemu.netprops, host.plan).
_INTERFACE_RENDERED = frozenset({"mac", "source", "target", "model", "driver", "backend", "script", "downscript",
                                 "ip", "route", "portForward", "teaming", "link", "mtu", "boot", "alias", "rom",
                                 "address", "tune"})
# Applied on the host to the tap rather than on QEMU's command line (host.plan; the plan warns
# where it cannot apply them).
_HOST_SIDE = frozenset({"bandwidth", "coalesce", "filterref"})
_HOST_SIDE_TYPES = ("ethernet", "bridge", "network")  # the interface types whose tap the host shapes
_DISPLAY = frozenset({"graphics", "video", "input", "sound", "audio"})
_DATA = frozenset({"disk", "filesystem", "hostdev"})
_QEMU_COMMANDLINE = f"{{{QEMU_NS}}}commandline"


def _label(node, with_kind=True):
    name = etree.QName(node).localname
    if node.prefix:
        name = f"{node.prefix}:{name}"
    if with_kind:
        for attr in ("type", "model"):
            if node.get(attr) is not None:
                return f"<{name} {attr}='{node.get(attr)}'>"
    return f"<{name}>"


def _children(node):
    """NODE's child elements (not its comments and processing instructions)."""
    return node.iterchildren(etree.Element)


def _has_children(node):
    return next(_children(node), None) is not None


def _scan_os(domain, node, found):
    for child in _children(node):
        if child.tag == "bios":
            if child.get("useserial") is not None:
                found.append(Dropped("<os><bios useserial>", child.sourceline,
                                     why="SeaBIOS's serial output (sgabios) is not rendered"))
        elif child.tag not in _OS_RENDERED:
            found.append(Dropped(f"<os>{_label(child)}", child.sourceline))
    if node.get("firmware") is not None and node.find("loader") is None:
        found.append(Dropped(f"<os firmware='{node.get('firmware')}'>", node.sourceline,
                             why="virtnet does not pick firmware itself: give <loader> (and <nvram>)"))


def _scan_features(domain, node, found):
    for child in _children(node):
        if child.tag not in _FEATURES_RENDERED:
            found.append(Dropped(f"<features>{_label(child)}", child.sourceline))
        elif child.tag == "apic" and child.get("eoi") is not None and domain.type != "kvm":
            found.append(Dropped("<features><apic eoi>", child.sourceline, why="a KVM feature; this is a TCG domain"))
        elif child.tag == "smm" and _has_children(child):
            found.append(Dropped("<features><smm><tseg>", child.sourceline))


def _scan_cpu(domain, node, found):
    for child in _children(node):
        if child.tag not in _CPU_RENDERED:
            found.append(Dropped(f"<cpu>{_label(child)}", child.sourceline))


def _scan_clock(domain, node, found):
    if node.get("offset") == "variable":
        found.append(Dropped("<clock offset='variable'>", node.sourceline,
                             why="the adjustment depends on the time of start; the guest's clock starts at UTC"))
    for child in _children(node):
        rendered = _TIMERS_RENDERED.get(child.get("name")) if child.tag == "timer" else None
        if rendered is None:
            found.append(Dropped(f"<clock>{_label(child)}" if child.tag != "timer"
                                 else f"<clock><timer name='{child.get('name')}'>", child.sourceline))
        elif _has_children(child):
            found.append(Dropped(f"<clock><timer name='{child.get('name')}'><catchup>", child.sourceline))


def _scan_memory_backing(domain, node, found):
    for child in _children(node):
        if not (child.tag == "access" and child.get("mode") == "shared"):
            found.append(Dropped(f"<memoryBacking>{_label(child)}", child.sourceline))


def _scan_devices(domain, node, found):
    left_out = storage.unrendered(domain)  # {element: why} of the disks and controllers
    for child in node[:]:  # a slice, as below: comments and processing instructions reach no branch
        tag = child.tag
        if tag == "interface":
            # A slice: lxml builds it in one call, at two thirds of an iterator's cost (comments
            # and processing instructions, whose tag is no string, are passed over). The type is
            # read only for an element the command line leaves out, which the host may apply.
            for part in child[:]:
                if part.tag not in _INTERFACE_RENDERED and type(part.tag) is str and not (
                        part.tag in _HOST_SIDE and child.get("type") in _HOST_SIDE_TYPES):
                    found.append(Dropped(f"{_label(child)}{_label(part, with_kind=False)}", part.sourceline))
            continue
        if tag == "emulator" or tag in _CHARACTER_DEVICES:
            continue
        if tag == "controller" and child.get("type") == VIRTIO_SERIAL:
            continue
        if tag in ("disk", "controller"):
            if child in left_out:
                why = left_out[child]
                why = f"{why} is not rendered" if why and why != _label(child) else ""
                found.append(Dropped(_label(child), child.sourceline, data=tag == "disk", why=why))
            continue
        if tag == "input" and child.get("bus", "ps2") == "ps2" and child.get("type") in ("mouse", "keyboard"):
            continue  # the i8042 of pc and q35 machines
        if tag == "audio" and child.get("type") == "none":
            continue
        if type(tag) is str:  # an element, not a comment or processing instruction
            found.append(Dropped(_label(child), child.sourceline, data=tag in _DATA, display=tag in _DISPLAY))


def _scan_current_memory(domain, node, found):
    if domain.current_memory is not None and machine.kib_of(domain.current_memory, domain.current_memory_unit) \
            < machine.memory_kib(domain):
        found.append(Dropped("<currentMemory>", node.sourceline,
                             why="the guest starts with all of <memory>; the balloon is not inflated"))


_TOP_SCANS = {"os": _scan_os, "features": _scan_features, "cpu": _scan_cpu, "clock": _scan_clock,
              "memoryBacking": _scan_memory_backing, "devices": _scan_devices, "currentMemory": _scan_current_memory}
# The <domain> children left alone: rendered without a look at their own children, or passed as
# they are (<qemu:commandline>: warnings() speaks of it).
_TOP_KEPT = _TOP_RENDERED.difference(_TOP_SCANS, machine.LIFECYCLE_TAGS) | {_QEMU_COMMANDLINE}


def unrendered(domain):
    """Every element of DOMAIN that does not reach QEMU's command line, in document order."""
    found = []
    root = domain.node
    lifecycle = False
    # A slice: lxml builds it in one call, cheaper than an iterator that matches elements only.
    for child in root[:]:
        tag = child.tag
        if tag in _TOP_KEPT:  # most of them: one test
            continue
        scan = _TOP_SCANS.get(tag)
        if scan is not None:
            scan(domain, child, found)
        elif tag in machine.LIFECYCLE_TAGS:
            lifecycle = True
        elif type(tag) is str:  # an element, not a comment or processing instruction
            found.append(Dropped(_label(child, with_kind=False), child.sourceline))
    if lifecycle:  # most domains give no lifecycle action: their values are read only for one
        for line, what, why in machine.lifecycle_dropped(domain):
            found.append(Dropped(what, line, why=why))
    found.sort(key=lambda d: d.line or 0)
    return found


def _listing(items):
    counts, first = Counter(), {}
    for item in items:
        key = (item.what, item.why)
        counts[key] += 1
        first.setdefault(key, item.line)
    parts = []
    for (what, why), count in counts.items():
        where = f"line {first[(what, why)]}" + (f"; {why}" if why else "")
        parts.append(f"{what} ({where})" + (f" ×{count}" if count > 1 else ""))
    return ", ".join(parts)


def warnings(domain, dropped=None):
    """[(line or None, message)]: what xml2argv, plan and start say about DOMAIN's command line."""
    dropped = unrendered(domain) if dropped is None else dropped
    out = []
    plain = [d for d in dropped if not d.display]
    if plain:
        out.append((None, f"not rendered, so the guest runs without them: {_listing(plain)}"))
    shown = [d for d in dropped if d.display]
    if shown:
        console = "its serial console" if chardevs.serial_ports(domain) else "a serial console (<serial type='pty'/>)"
        out.append((None, f"the guest runs headless: {_listing(shown)} not rendered; reach it through {console}"))
    commandline = domain.qemu_commandline
    if commandline is not None and (commandline.args or commandline.env):
        import shlex  # here: few domains have <qemu:commandline>, and the import costs every run

        words = shlex.join(qemu_commandline_args(domain))
        env = ", ".join(qemu_env(domain))
        parts = ([f"passes arguments of its own to QEMU ({words})"] if commandline.args else []) + (
            [f"sets {env} in QEMU's environment"] if env else [])
        out.append((commandline.line, "<qemu:commandline> " + " and ".join(parts)
                    + ": virtnet does not check them, and they may conflict with the options it renders"))
    return out


def check_dropped(domain, dropped=None):
    """Refuse a domain whose dropped elements hold the guest's data (disks, filesystems, host
    devices): `virtnet start --allow-dropped` runs it anyway."""
    dropped = unrendered(domain) if dropped is None else dropped
    data = [d for d in dropped if d.data]
    if data:
        raise UnsupportedError(
            f"{_listing(data)}: not rendered by virtnet, so the guest would run without this data; "
            "`virtnet start --allow-dropped` starts it anyway", line=data[0].line)
