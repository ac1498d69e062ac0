"""The domain model: one small class per XML concept, each property declared once."""

from virtnet.conf import guest, iftypes
from virtnet.conf.address import Address
from virtnet.conf.bandwidth import Rates
from virtnet.conf.disk import Controller, Disk
from virtnet.conf.guest import VIRTIO_MODELS
from virtnet.conf.xmlmodel import Child, Children, Prop, XMLObject, first_children, yes

# Models that want IFF_VNET_HDR on their tap (libvirt's "vnet-header compatible" list).
VNET_HDR_MODELS = VIRTIO_MODELS + ("e1000e", "vmxnet3")
# libvirt's known model names (virDomainNetModel), matched case-insensitively; others pass verbatim.
KNOWN_MODELS = frozenset(VIRTIO_MODELS + (
    "netfront", "rtl8139", "e1000", "e1000e", "igb", "usb-net", "spapr-vlan", "lan9118", "smc91c111",
    "vlance", "vmxnet", "vmxnet2", "vmxnet3", "ne2k_pci", "pcnet", "i82551", "i82557b", "i82559er",
))


def is_device_pci_address(address):
    """Whether an <address> element below <devices> places a device on the guest's PCI bus: of type
    'pci', and not a <source>'s (that names a host device, e.g. of a <hostdev>)."""
    return address.get("type") == "pci" and address.getparent().tag != "source"


def model_name(raw):
    """A <model type> as QEMU knows it: libvirt compares known model names case-insensitively."""
    if raw:
        lower = raw.lower()
        if lower in KNOWN_MODELS:
            return lower
    return raw


class IPAddress(XMLObject):
    address = Prop("@address")
    prefix = Prop("@prefix", int)
    family = Prop("@family")
    peer = Prop("@peer")


class Route(XMLObject):
    family = Prop("@family")
    address = Prop("@address")
    prefix = Prop("@prefix", int)
    gateway = Prop("@gateway")
    metric = Prop("@metric", int)


class PortRange(XMLObject):
    start = Prop("@start", int)
    end = Prop("@end", int)
    to = Prop("@to", int)
    exclude = Prop("@exclude", yes)


class PortForward(XMLObject):
    proto = Prop("@proto")
    address = Prop("@address")
    dev = Prop("@dev")
    ranges = Children("range", PortRange)


class Offloads(XMLObject):
    """<driver><host .../> or <driver><guest .../>: virtio-net offload switches (on/off)."""

    csum = Prop("@csum")
    gso = Prop("@gso")
    tso4 = Prop("@tso4")
    tso6 = Prop("@tso6")
    ecn = Prop("@ecn")
    ufo = Prop("@ufo")
    mrg_rxbuf = Prop("@mrg_rxbuf")


class FilterParameter(XMLObject):
    name = Prop("@name")
    value = Prop("@value")


class Source(XMLObject):
    """<source>; which attributes matter depends on the interface type."""

    bridge = Prop("@bridge")
    network = Prop("@network")
    portgroup = Prop("@portgroup")
    dev = Prop("@dev")
    mode = Prop("@mode")  # direct: vepa/bridge/...; vhostuser: server/client
    socket_type = Prop("@type")  # vhostuser: unix
    path = Prop("@path")
    address = Prop("@address")
    port = Prop("@port", int)
    local_address = Prop("local/@address")
    local_port = Prop("local/@port", int)
    reconnect_enabled = Prop("reconnect/@enabled", yes)
    reconnect_timeout = Prop("reconnect/@timeout", int)
    host_ips = Children("ip", IPAddress)
    host_routes = Children("route", Route)

    @property
    def has_reconnect(self):
        return self.has("reconnect")


class Interface(XMLObject):
    tag = "interface"
    # libvirt's order of <interface> children (virDomainNetDefFormat, then virDomainDeviceInfoFormat).
    CHILD_ORDER = (
        "mac", "source", "vlan", "virtualport", "bandwidth", "port", "ip", "route", "portForward",
        "script", "downscript", "backenddomain", "target", "guest", "model", "driver", "backend",
        "filterref", "tune", "teaming", "link", "mtu", "coalesce", "boot", "alias", "rom", "acpi",
        "address",
    )
    ids = None  # NicIds, stamped by conf.identity.prepare
    declared_type = Prop("@type")
    type = Prop("@type", default=iftypes.DEFAULT_TYPE)
    mac = Prop("mac/@address")
    source = Child("source", Source)
    target_dev = Prop("target/@dev")
    managed = Prop("target/@managed")
    model_raw = Prop("model/@type")
    script = Prop("script/@path")
    downscript = Prop("downscript/@path")
    driver_name = Prop("driver/@name")
    queues = Prop("driver/@queues", int)
    txmode = Prop("driver/@txmode")
    ioeventfd = Prop("driver/@ioeventfd")
    event_idx = Prop("driver/@event_idx")
    rx_queue_size = Prop("driver/@rx_queue_size", int)
    tx_queue_size = Prop("driver/@tx_queue_size", int)
    rss = Prop("driver/@rss")
    rss_hash_report = Prop("driver/@rss_hash_report")
    host_offloads = Child("driver/host", Offloads)
    guest_offloads = Child("driver/guest", Offloads)
    teaming_type = Prop("teaming/@type")
    teaming_persistent = Prop("teaming/@persistent")
    backend_type = Prop("backend/@type")
    backend_logfile = Prop("backend/@logFile")
    backend_tap = Prop("backend/@tap")
    backend_vhost = Prop("backend/@vhost")
    mtu = Prop("mtu/@size", int)
    link_state = Prop("link/@state")
    boot_order = Prop("boot/@order", int)
    rom_bar = Prop("rom/@bar")
    rom_file = Prop("rom/@file")
    rom_enabled = Prop("rom/@enabled")
    alias = Prop("alias/@name")
    sndbuf = Prop("tune/sndbuf", int)
    inbound = Child("bandwidth/inbound", Rates)  # to the guest
    outbound = Child("bandwidth/outbound", Rates)  # from the guest
    filter_name = Prop("filterref/@filter")
    filter_parameters = Children("filterref/parameter", FilterParameter)
    coalesce_rx_frames = Prop("coalesce/rx/frames/@max", int)
    address = Child("address", Address)
    guest_ips = Children("ip", IPAddress)
    guest_routes = Children("route", Route)
    port_forwards = Children("portForward", PortForward)

    def first_children(self):
        """{tag: the interface's first child element of that tag}: for the steps that edit the
        tree, where every read through a Prop walks it again (see xmlmodel.first_children)."""
        return first_children(self.node)

    @property
    def kind(self):
        """What this interface type supports (conf.iftypes)."""
        return iftypes.kind(self.type)

    @property
    def model(self):
        """Model name as QEMU knows it (see model_name)."""
        return model_name(self.model_raw)

    @property
    def is_virtio(self):
        return self.model in VIRTIO_MODELS

    @property
    def unmanaged(self):
        return self.managed == "no"

    @property
    def uses_passt(self):
        return self.backend_type == "passt"

    @property
    def is_tap(self):
        return self.kind.tap

    @property
    def queue_count(self):
        return self.queues or 1

    @property
    def wants_vnet_hdr(self):
        return self.model in VNET_HDR_MODELS


class Domain(XMLObject):
    tag = "domain"
    pci_placements = None  # {device element: its PCI placement}, set by conf.pci (see pci.placed)
    type = Prop("@type")
    name = Prop("name")
    uuid = Prop("uuid")
    memory = Prop("memory", int)
    memory_unit = Prop("memory/@unit")
    vcpu = Prop("vcpu", int)
    os_type = Prop("os/type")
    arch = Prop("os/type/@arch")
    machine = Prop("os/type/@machine")
    emulator = Prop("devices/emulator")
    memory_access = Prop("memoryBacking/access/@mode")
    interfaces = Children("devices/interface", Interface, cache=True)
    disks = Children("devices/disk", Disk, cache=True)
    controllers = Children("devices/controller", Controller)
    # The guest's own hardware and boot (conf.guest; rendered by qemu.machine and qemu.chardevs).
    os = Child("os", guest.Os)
    cpu = Child("cpu", guest.Cpu)
    clock = Child("clock", guest.Clock)
    features = Child("features", guest.Features)
    pm = Child("pm", guest.Pm)
    on_poweroff = Prop("on_poweroff")
    on_reboot = Prop("on_reboot")
    on_crash = Prop("on_crash")
    dump_core = Prop("memory/@dumpCore")
    current_memory = Prop("currentMemory", int)
    current_memory_unit = Prop("currentMemory/@unit")
    vcpu_current = Prop("vcpu/@current", int)
    serials = Children("devices/serial", guest.Chardev)
    consoles = Children("devices/console", guest.Chardev)
    channels = Children("devices/channel", guest.Chardev)
    virtio_serial_controllers = Children("devices/controller[@type='virtio-serial']", guest.VirtioSerialController)
    rngs = Children("devices/rng", guest.Rng)
    memballoon = Child("devices/memballoon", guest.Memballoon)
    qemu_commandline = Child(guest.qemu("commandline"), guest.QemuCommandline)

    def devices_node(self):
        """The <devices> element, or None. Looked up once per object: once there, it is never
        replaced (steps that add devices add them to it), and most steps start from it."""
        node = self.__dict__.get("_devices_node")
        if node is None:
            node = next(self.node.iterchildren("devices"), None)
            if node is not None:
                self.__dict__["_devices_node"] = node  # a plain attribute: freezing and thawing keep it
        return node

    @property
    def devices(self):
        node = self.devices_node()
        return [] if node is None else list(node)

    def has_device(self, *tags):
        """Whether <devices> holds an element named one of TAGS (a look-up in C: no model objects)."""
        devices = self.devices_node()
        return devices is not None and next(devices.iterchildren(*tags), None) is not None

    def interface(self, alias):
        """The interface whose alias (its id, stamped by conf.identity) is ALIAS."""
        for iface in self.interfaces:
            if iface.alias == alias:
                return iface
        raise KeyError(alias)

    @property
    def pci_addresses(self):
        """Every <address type='pci'> of a device (modelled or not), as (device tag, element)."""
        devices = self.devices_node()
        if devices is None:
            return []
        return [(a.getparent().tag, a) for a in devices.iter("address") if is_device_pci_address(a)]

    @property
    def is_q35(self):
        return "q35" in (self.machine or "")


# The model classes whose properties the golden tests must all exercise.
MODEL_CLASSES = (Domain, Interface, Source, Offloads, Address, IPAddress, Route, PortForward, PortRange)
