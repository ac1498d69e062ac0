"""The guest's model: what it boots (<os>), its CPU, clock, features and lifecycle, its character
devices (<serial>, <console>, <channel>), <rng>, <memballoon> and <qemu:commandline>.

Declarative like conf/domain.py: each property is declared once as a path; the Domain reaches
these objects through one-line properties (domain.os, domain.serials, ...). What virtnet makes of
them on QEMU's command line lives in qemu/machine.py and qemu/chardevs.py.
"""

from lxml import etree

from virtnet.conf.address import Address
from virtnet.conf.xmlmodel import Child, Children, Prop, XMLObject, copied

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
VIRTIO_SERIAL = "virtio-serial"


def _yes(value):
    return value == "yes"


def qemu(tag):
    """The Clark name of an element of libvirt's QEMU namespace (qemu:commandline, ...)."""
    return f"{{{QEMU_NS}}}{tag}"


# ---------------------------------------------------------------- <os>


class Loader(XMLObject):
    """<loader readonly='yes' type='pflash'>PATH</loader>: the firmware image."""

    readonly = Prop("@readonly")
    type = Prop("@type")
    secure = Prop("@secure")

    @property
    def text(self):
        return (self.node.text or "").strip() or None

    @property
    def is_pflash(self):
        return self.type == "pflash"


class Nvram(XMLObject):
    """<nvram template='VARS.fd'>PATH</nvram>: the per-domain UEFI variable store."""

    template = Prop("@template")

    @property
    def text(self):
        return (self.node.text or "").strip() or None


class Os(XMLObject):
    type = Prop("type")
    arch = Prop("type/@arch")
    machine = Prop("type/@machine")
    kernel = Prop("kernel")
    initrd = Prop("initrd")
    cmdline = Prop("cmdline")
    bootmenu_enable = Prop("bootmenu/@enable")
    bootmenu_timeout = Prop("bootmenu/@timeout", int)
    bios_reboot_timeout = Prop("bios/@rebootTimeout", int)
    loader = Child("loader", Loader)
    nvram = Child("nvram", Nvram)

    @property
    def boot_devs(self):
        """<boot dev='...'/> in document order: libvirt's boot order. A tuple: a frozen model reads
        it once (a list would be made again at every read)."""
        return tuple(b.get("dev") for b in self.node.iterchildren("boot"))  # as findall, without ElementPath


# ---------------------------------------------------------------- <cpu>


class CpuFeature(XMLObject):
    policy = Prop("@policy")
    name = Prop("@name")


class Cpu(XMLObject):
    mode = Prop("@mode")
    match = Prop("@match")
    check = Prop("@check")
    migratable = Prop("@migratable")
    model = Prop("model")
    model_fallback = Prop("model/@fallback")
    sockets = Prop("topology/@sockets", int)
    dies = Prop("topology/@dies", int)
    clusters = Prop("topology/@clusters", int)
    cores = Prop("topology/@cores", int)
    threads = Prop("topology/@threads", int)
    features = Children("feature", CpuFeature)

    @property
    def effective_mode(self):
        return self.mode or "custom"

    @property
    def has_topology(self):
        return self.has("topology")


# ---------------------------------------------------------------- <clock>, <features>, <pm>


class Timer(XMLObject):
    name = Prop("@name")
    present = Prop("@present")
    tickpolicy = Prop("@tickpolicy")
    track = Prop("@track")


class Clock(XMLObject):
    offset = Prop("@offset")
    timezone = Prop("@timezone")
    adjustment = Prop("@adjustment")
    basis = Prop("@basis")
    start = Prop("@start", int)
    timers = Children("timer", Timer)

    def timer(self, name):
        return next((t for t in self.timers if t.name == name), None)


class Features(XMLObject):
    """<features>: the ones that change QEMU's command line (the rest are reported as dropped)."""

    apic_eoi = Prop("apic/@eoi")
    vmport_state = Prop("vmport/@state")
    smm_state = Prop("smm/@state")

    @property
    def acpi(self):
        return self.has("acpi")

    @property
    def apic(self):
        return self.has("apic")

    @property
    def pae(self):
        return self.has("pae")


class Pm(XMLObject):
    suspend_to_mem = Prop("suspend-to-mem/@enabled")
    suspend_to_disk = Prop("suspend-to-disk/@enabled")


# ---------------------------------------------------------------- device addresses


# ---------------------------------------------------------------- character devices


class Chardev(XMLObject):
    """<serial>, <console> or <channel>: a host-side backend (the type) and a guest-side target."""

    type = Prop("@type")
    source_path = Prop("source/@path")
    source_mode = Prop("source/@mode")
    source_append = Prop("source/@append")
    source_host = Prop("source/@host")
    source_service = Prop("source/@service")
    reconnect_enabled = Prop("source/reconnect/@enabled")
    reconnect_timeout = Prop("source/reconnect/@timeout", int)
    protocol = Prop("protocol/@type")
    log_file = Prop("log/@file")
    log_append = Prop("log/@append")
    target_type = Prop("target/@type")
    target_port = Prop("target/@port", int)
    target_name = Prop("target/@name")
    target_model = Prop("target/model/@name")
    alias = Prop("alias/@name")
    address = Child("address", Address)

    @property
    def kind(self):
        """'serial', 'console' or 'channel'."""
        return self.node.tag

    @property
    def udp_sources(self):
        """(connect (host, service), bind (host, service) or None) of a udp chardev."""
        connect = bind = None
        for source in self.node.findall("source"):
            pair = (source.get("host"), source.get("service"))
            if source.get("mode") == "bind":
                bind = pair
            else:
                connect = pair
        return connect, bind


class VirtioSerialController(XMLObject):
    """<controller type='virtio-serial'>: the PCI device a virtio channel or console sits on."""

    index = Prop("@index", int)
    ports = Prop("@ports", int)
    vectors = Prop("@vectors", int)
    alias = Prop("alias/@name")
    address = Child("address", Address)


# ---------------------------------------------------------------- <rng>, <memballoon>


class Rng(XMLObject):
    model = Prop("@model")
    backend_model = Prop("backend/@model")
    rate_bytes = Prop("rate/@bytes", int)
    rate_period = Prop("rate/@period", int)
    alias = Prop("alias/@name")
    address = Child("address", Address)

    @property
    def backend(self):
        """The host device a model='random' backend reads (the element's text), or None."""
        node = self.node.find("backend")
        if node is None:
            return None
        return (node.text or "").strip() or None


class Memballoon(XMLObject):
    model = Prop("@model")
    autodeflate = Prop("@autodeflate")
    free_page_reporting = Prop("@freePageReporting")
    stats_period = Prop("stats/@period", int)
    alias = Prop("alias/@name")
    address = Child("address", Address)


# ---------------------------------------------------------------- <qemu:commandline>


class QemuArg(XMLObject):
    value = Prop("@value")


class QemuEnv(XMLObject):
    name = Prop("@name")
    value = Prop("@value")


class QemuCommandline(XMLObject):
    args = Children(qemu("arg"), QemuArg)
    env = Children(qemu("env"), QemuEnv)


# The model classes whose properties the guest goldens must all exercise (tests/test_guest.py).
MODEL_CLASSES = (Os, Loader, Nvram, Cpu, CpuFeature, Clock, Timer, Features, Pm, Chardev,
                 VirtioSerialController, Rng, Memballoon, QemuArg, QemuEnv)


def new_element(parent, tag, attrib, after=()):
    """A child element of PARENT, put after the last child whose tag is in AFTER (else first)."""
    node = etree.Element(tag, attrib)
    last = None
    for child in parent:
        if isinstance(child.tag, str) and child.tag in after:
            last = child
    if last is None:
        parent.insert(0, node)
    else:
        last.addnext(node)
    return node


# ---------------------------------------------------------------- defaults (the defaults step)

# The virtio device models (NICs, balloons, RNGs, disks' controllers): one home, used across conf/.
VIRTIO_MODELS = ("virtio", "virtio-transitional", "virtio-non-transitional")
DEFAULT_VIRTIO_SERIAL_PORTS = 31  # virtio-serial-pci's max_ports
# Where libvirt puts a new controller among the devices, and the devices a balloon goes before.
_CONTROLLER_AFTER = ("emulator", "disk", "controller")
_BALLOON_BEFORE = frozenset(("rng", "tpm", "panic", "shmem", "memory", "iommu", "vsock", "crypto", "pstore"))


@copied
def _virtio_balloon():
    return etree.Element("memballoon", {"model": "virtio"})


def devices_element(domain):
    """The domain's <devices>, added when it has none."""
    node = domain.devices_node()
    if node is None:
        node = etree.SubElement(domain.node, "devices")
    return node


def wants_virtio_serial(chardev):
    """A channel or console that is a port on a virtio-serial controller."""
    if chardev.kind == "channel":
        return chardev.target_type == "virtio"
    return chardev.kind == "console" and chardev.target_type == "virtio"


CHARDEV_TAGS = frozenset(("serial", "console", "channel"))


def drop_pty_paths(index):
    """The pty QEMU opened at a start is in the live XML only (<source path>, and tty= on a
    <console>): like libvirt, a definition leaves it out, as the next start gets another one."""
    for node in index.get("console", ()):
        node.attrib.pop("tty", None)
    for tag in CHARDEV_TAGS:
        for node in index.get(tag, ()):
            if node.get("type") != "pty":
                continue
            for source in node.findall("source"):
                source.attrib.pop("path", None)
                if not source.attrib and not len(source):
                    node.remove(source)


def device_index(devices):
    """The elements of <devices> (DEVICES) by tag: {tag: [element, ...]} in document order, from
    one pass (a slice: no lxml iterator or tag matcher to set up). The balloon step keeps it
    current; after the steps that add controllers or reorder disks, defaults.apply_defaults makes
    it again."""
    index = {}
    for node in devices[:]:
        index.setdefault(node.tag, []).append(node)
    return index


def add_default_memballoon(devices, index):
    """libvirt gives every x86 guest a virtio balloon unless the domain has a <memballoon>
    (model='none' opts out); virtnet does the same, so a domain means the same guest in both.
    DEVICES: the domain's <devices>; INDEX: its device_index, which gets the balloon."""
    if "memballoon" in index:
        return
    node = _virtio_balloon()
    if _BALLOON_BEFORE.isdisjoint(index):
        devices.append(node)
    else:
        next(child for child in devices if child.tag in _BALLOON_BEFORE).addprevious(node)
    index["memballoon"] = [node]


def add_virtio_serial_controllers(domain):
    """The <controller type='virtio-serial'> each virtio channel or console needs (index 0 unless
    its <address> names another), added as libvirt adds it."""
    chardevs = domain.channels + domain.consoles
    if not chardevs:
        return  # nothing needs one (and the controllers need no look-up)
    needed = set()
    for chardev in chardevs:
        if wants_virtio_serial(chardev):
            addr = chardev.address
            on_other = addr is not None and addr.type == VIRTIO_SERIAL and addr.controller
            needed.add(addr.controller if on_other else 0)
    have = {c.index or 0 for c in domain.virtio_serial_controllers}
    for index in sorted(needed - have):
        new_element(devices_element(domain), "controller", {"type": VIRTIO_SERIAL, "index": str(index)},
                    after=_CONTROLLER_AFTER)


def assign_virtio_serial_ports(domain):
    """A virtio-serial port for each virtio channel without one, written as libvirt writes it: the
    explicit ports are kept, then each channel in order gets the lowest free port from 1 (port 0 is
    the console's) on its controller, or on the first controller with room (<controller ports>
    bounds them; QEMU's default is 31)."""
    from virtnet.errors import XMLInputError

    channels = domain.channels  # read once: the model is not frozen here
    if not channels:
        return
    limits = {c.index or 0: c.ports or DEFAULT_VIRTIO_SERIAL_PORTS for c in domain.virtio_serial_controllers}
    used = {index: set() for index in limits}
    for chardev in channels:
        addr = chardev.address
        if addr is not None and addr.type == VIRTIO_SERIAL and addr.port is not None:
            used.setdefault(addr.controller or 0, set()).add(addr.port)
    for chardev in channels:
        addr = chardev.address
        if not wants_virtio_serial(chardev) or (addr is not None and addr.port is not None):
            continue
        given = addr is not None and addr.type == VIRTIO_SERIAL and addr.controller is not None
        candidates = [addr.controller] if given else sorted(limits)
        for index in candidates:
            free = [p for p in range(1, limits.get(index, DEFAULT_VIRTIO_SERIAL_PORTS)) if p not in used.get(index, ())]
            if free:
                break
        else:
            raise XMLInputError("<channel>: no free virtio-serial port left (raise <controller type='virtio-serial' "
                                "ports=...> or add a controller)", line=chardev.line)
        used.setdefault(index, set()).add(free[0])
        node = chardev.node.find("address")
        if node is None:
            node = etree.SubElement(chardev.node, "address")
        node.attrib.clear()
        node.attrib.update({"type": VIRTIO_SERIAL, "controller": str(index), "bus": "0", "port": str(free[0])})
