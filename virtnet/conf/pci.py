"""The guest's PCI layout: an address for every PCI device virtnet renders, placed as libvirt does.

One allocator for all of them, in libvirt's order of assignment (qemuDomainAssignDevicePCISlots):
PCI controllers first, then NICs, then the other controllers (SCSI, SATA, virtio-serial), virtio
disks, the balloon and RNGs (`unplaced_devices`). Addresses written in the XML are honoured and
reserved, whatever device holds them (modelled or not), and so are the chipset's slots.

i440fx (`pc`): every device gets the lowest free slot on pci.0 from slot 2 up (slot 1 is the
PIIX3's; slot 2 is kept for the primary video card when the domain has one, as libvirt keeps it).

q35: libvirt puts each PCI Express endpoint behind a `pcie-root-port` of its own, so that it can
be unplugged and keeps a stable address of its own. virtnet does the same: it adds the root ports
the devices need as <controller type='pci' model='pcie-root-port'> (each with its index, chassis,
port and an address on pcie.0, functions 0-7 of a slot side by side as libvirt aggregates them),
then one spare root port for hot-plug when no empty one is left, as libvirt does. Conventional PCI
devices (rtl8139, e1000, the LSI SCSI controllers, virtio-transitional) go on a
`pcie-to-pci-bridge` behind a root port of its own. Slot 0x1f holds the ICH9 functions (the
built-in SATA controller at 00:1f.2), slot 1 the primary video card when there is one.

A device on a bus whose controller the XML does not have gets that controller (a root port on
q35, a pci-bridge on pc), as libvirt adds it.

Each device's placement (bus, slot, function, multifunction) is handed to the command line as
numbers (`placed`), recorded as its address is normalised or written; one of a tree this did not
prepare (a running domain's live XML, a hot-plugged NIC) is read from its <address> by
`read_placement`.
"""

from lxml import etree

from virtnet.conf.address import pci_number
from virtnet.conf.disk import ROOT_MODELS, Controller, add_controller, ensure_root
from virtnet.conf.domain import is_device_pci_address
from virtnet.conf.guest import VIRTIO_MODELS, device_index
from virtnet.conf.xmlmodel import copied
from virtnet.errors import XMLInputError
from virtnet.record import Record

PLACE_ATTRIBUTES = ("domain", "bus", "slot", "function")  # of an <address type='pci'>
MULTIFUNCTION = {"on": True, "off": False}  # an <address>'s multifunction= (anything else: unsaid)
FIRST_FREE_SLOT = 2  # slot 0 is the host bridge, slot 1 the PIIX3/ICH chipset functions
LAST_SLOT = 31
FUNCTIONS = 8
Q35_RESERVED = {0x1F}  # ICH9 LPC/SATA/SMBus on q35
PRIMARY_VIDEO_SLOT = {False: 2, True: 1}  # libvirt's place for the primary video card: pc, q35
PCIE_NIC_MODELS = ("e1000e", "igb", "virtio", "virtio-non-transitional")
CONVENTIONAL_SCSI_MODELS = ("lsilogic", "lsisas1068", "lsisas1078", "vmpvscsi", "virtio-transitional")
PCI_VIDEO_MODELS = (None, "vga", "cirrus", "vmvga", "qxl", "virtio", "bochs")
# PCI controller models virtnet lays out and renders, with their <model name> (QEMU's driver).
CONTROLLER_MODEL_NAMES = {"pcie-root-port": "pcie-root-port", "pci-bridge": "pci-bridge",
                          "pcie-to-pci-bridge": "pcie-pci-bridge", "dmi-to-pci-bridge": "i82801b11-bridge",
                          "pcie-switch-upstream-port": "x3130-upstream",
                          "pcie-switch-downstream-port": "xio3130-downstream"}
# What each of those plugs into, as a connect kind a bus accepts (libvirt's connect flags).
CONTROLLER_CONNECT = {"pcie-root-port": "root-port", "pci-bridge": "pci-bridge", "pcie-to-pci-bridge": "pcie-bridge",
                      "dmi-to-pci-bridge": "dmi-bridge", "pcie-switch-upstream-port": "switch-upstream",
                      "pcie-switch-downstream-port": "switch-downstream"}
# Which connect kinds each bus model takes. An endpoint is 'pcie' (PCI Express) or 'pci'
# (conventional); on pc every device is conventional PCI. A root port or downstream port has one
# slot; a switch's upstream port and a dmi-to-pci-bridge slots 0-31; bridges slots 1-31.
ACCEPTS = {
    "pci-root": ("pci", "pci-bridge"),
    "pcie-root": ("root-port", "dmi-bridge"),
    "pcie-root-port": ("pcie", "pcie-bridge", "switch-upstream"),
    "pcie-switch-downstream-port": ("pcie", "pcie-bridge", "switch-upstream"),
    "pcie-switch-upstream-port": ("switch-downstream",),
    "dmi-to-pci-bridge": ("pci-bridge",),
    "pci-bridge": ("pci", "pci-bridge"),
    "pcie-to-pci-bridge": ("pci",),
}
SINGLE_SLOT = ("pcie-root-port", "pcie-switch-downstream-port")
FROM_SLOT_0 = ("pcie-switch-upstream-port", "dmi-to-pci-bridge")
# The slots of a bus, by its model (Bus.slots); the root bus and bridges: 1..31.
BUS_SLOTS = {**{model: range(0, 1) for model in SINGLE_SLOT},
             **{model: range(0, LAST_SLOT + 1) for model in FROM_SLOT_0}}
OTHER_BUS_SLOTS = range(1, LAST_SLOT + 1)
DMI_BRIDGE_SLOT = 0x1E  # libvirt's place for a dmi-to-pci-bridge on q35
# Built-in controllers (no -device) and their fixed addresses: (type, index, q35) -> (slot, function).
BUILTIN = {("ide", 0, False): (1, 1), ("sata", 0, True): (0x1F, 2)}


def bus_name(domain, index):
    """QEMU's id of PCI bus INDEX: the root bus (pcie.0 on q35, pci.0 on pc), or the controller
    'pci.N' that provides it."""
    if index:
        return f"pci.{index}"
    return "pcie.0" if domain.is_q35 else "pci.0"


def placed(domain, node):
    """Where assign_addresses placed device NODE of DOMAIN, as (bus, slot, function, multifunction:
    True, False or None when unsaid), or None: not a PCI device, one whose address it edited after
    (_multifunction), or one of a tree it did not prepare (a running domain's live XML, a hot-plugged
    NIC); `read_placement` reads those. Its record, DOMAIN.pci_placements (device element ->
    placement), saves the command line reading every address back from the tree. It holds because
    no step after assign_addresses edits a PCI <address>; one that did would have to drop the
    record (set DOMAIN.pci_placements to None)."""
    placements = domain.pci_placements
    return None if placements is None else placements.get(node)


def _where(node):
    return f"<{node.tag}" + (f" type='{node.get('type')}'" if node.get("type") else "") + ">"


def read_placement(address):
    """The placement (see `placed`) an <address type='pci'> element gives, with a clear error for bad numbers."""
    return (*_parse_address(address), MULTIFUNCTION.get(address.get("multifunction")))


def _parse_address(node):
    """(bus, slot, function) of an <address type='pci'> element, with a clear error for bad numbers."""
    return _parse_place(node)[1:]


def _parse_place(node):
    """(domain, bus, slot, function) of an <address type='pci'> element, with a clear error for bad numbers."""
    try:
        return tuple(pci_number(node.get(attr, "0")) for attr in PLACE_ATTRIBUTES)
    except ValueError:
        # Devices virtnet does not model are not schema-checked in detail: say where the bad value is.
        raise XMLInputError(
            f"{_where(node.getparent())}: <address type='pci' {_written(node)}> is not a PCI address; use "
            "hexadecimal (0x1f) or decimal numbers", line=node.sourceline) from None


def _written(node):
    """The place attributes of an <address> as written, for an error message."""
    return " ".join(f"{attr}='{node.get(attr)}'" for attr in PLACE_ATTRIBUTES if node.get(attr) is not None)


def _explicit(domain):
    """(element, (bus, slot, function)) of every PCI address written in <devices>."""
    return [(addr.getparent(), _parse_address(addr)) for _, addr in domain.pci_addresses]


def names_a_place(address):
    """Whether an <address type='pci'> element gives a domain, bus or slot. One that does not asks
    for an address, which the defaults give it afresh (function= and multifunction= go too), as
    libvirt does with an address that leaves domain, bus and slot at 0 (virtnet refuses slot 0 when
    it is written: the host bridge's)."""
    return any(address.get(attr) is not None for attr in ("domain", "bus", "slot"))


def _normalize_explicit(addresses, placements):
    """Check and normalise every PCI address written in <devices> (ADDRESSES: every <address> below
    it), recording each device's placement in PLACEMENTS; one that names no place goes (see
    names_a_place). Returns what `_explicit` would, after that."""
    explicit = []
    for addr in addresses:
        if not is_device_pci_address(addr):
            continue
        if not names_a_place(addr):
            addr.getparent().remove(addr)
            continue
        domain, *numbers = _parse_place(addr)  # a bad number is reported with its device
        _normalize_node(addr, domain, *numbers)
        device = addr.getparent()
        explicit.append((device, tuple(numbers)))
        placements[device] = (*numbers, MULTIFUNCTION.get(addr.get("multifunction")))
    return explicit


def _normalize_node(node, domain, bus, slot, function):
    """libvirt's form of an address (domain='0x0000' bus='0x00' slot='0x03' function='0x0'), from
    its parsed DOMAIN, BUS, SLOT and FUNCTION."""
    node.set("domain", f"0x{domain:04x}")
    node.set("bus", f"0x{bus:02x}")
    node.set("slot", f"0x{slot:02x}")
    node.set("function", f"0x{function:x}")
    multifunction = node.attrib.pop("multifunction", None)  # libvirt's attribute order: it goes last
    if multifunction is not None:
        node.set("multifunction", multifunction)


# ---------------------------------------------------------------- which devices, in which order


def _first(node, tag):
    """NODE's first child element TAG, or None: node.find(tag) without ElementPath (a third of the cost)."""
    return next(node.iterchildren(tag), None)


def _model(node, default=None):
    return node.get("model", default)


def _virtio_connect(model):
    return "pci" if model == "virtio-transitional" else "pcie"


def controller_connect(node, q35):
    """How a non-PCI controller sits on the PCI bus: 'pcie', 'pci', or None (built in, or not PCI)."""
    ctype, index = node.get("type"), _int(node.get("index"), 0)
    if (ctype, index, q35) in BUILTIN:
        return None
    if ctype == "scsi":
        model = _model(node)
        if model in ("virtio-scsi", "virtio-non-transitional"):
            return "pcie"
        return "pci" if model in CONVENTIONAL_SCSI_MODELS else None
    if ctype == "sata":
        return "pcie"
    if ctype == "virtio-serial":
        return _virtio_connect(_model(node, "virtio"))
    return None


def _nic_connect(node):
    model = _first(node, "model")
    model = model.get("type") if model is not None else None
    return "pcie" if model in PCIE_NIC_MODELS else "pci"


def _virtio_disk(node, q35):
    target = _first(node, "target")
    return target is not None and target.get("bus") == "virtio"


# The devices unplaced_devices places, by tag in libvirt's order of assignment, each with the test
# that tells which of them are PCI devices (None: all are). _survey's tags derive from it.
PLACED = {
    "interface": None,
    "controller": lambda node, q35: node.get("type") != "pci" and controller_connect(node, q35),
    "disk": _virtio_disk,
    "memballoon": lambda node, q35: node.get("model") in VIRTIO_MODELS,
    "rng": lambda node, q35: node.get("model") in VIRTIO_MODELS,
}
# Those, and the video cards: _primary_video keeps a slot for the first.
SURVEYED = frozenset(PLACED).union(("video",))


def _survey(index, addresses):
    """The devices of SURVEYED without an <address>, by tag ({tag: [element, ...]} in document
    order; lists to read only), and every <controller> (model objects). INDEX: the device_index of
    <devices>; ADDRESSES: every <address> below it (those still in the tree say which devices have one)."""
    addressed = {address.getparent() for address in addresses} if addresses else None
    unaddressed = {}
    for tag, nodes in index.items():
        if tag in SURVEYED:
            if addressed is not None:
                nodes = [node for node in nodes if node not in addressed]
            if nodes:
                unaddressed[tag] = nodes
    return unaddressed, [Controller(node) for node in index.get("controller", ())]


def unplaced_devices(by_tag, q35):
    """Every device virtnet gives a PCI address that has no <address> yet (BY_TAG: as _survey gives
    them), in libvirt's order of assignment. A device with an <address> is placed already, or is
    on another bus (ccw, virtio-mmio, drive)."""
    found = []
    for tag, is_pci in PLACED.items():
        nodes = by_tag.get(tag)
        if nodes:
            found.extend(nodes if is_pci is None else [node for node in nodes if is_pci(node, q35)])
    return found


def connect_kind(node, q35):
    """How a device of `unplaced_devices` plugs in: 'pcie' for a PCI Express endpoint (a root port
    of its own on q35) or 'pci' for conventional PCI (a pcie-to-pci-bridge on q35). On i440fx
    every device is conventional PCI."""
    if not q35:
        return "pci"
    tag = node.tag
    if tag == "interface":
        return _nic_connect(node)
    if tag == "controller":
        return controller_connect(node, q35)
    return _virtio_connect(node.get("model"))  # a virtio disk, balloon or RNG


def _int(text, default=None):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


# ---------------------------------------------------------------- the buses and their slots


class Bus(Record):
    __slots__ = ("index", "model", "used", "aggregate", "shared")

    def __init__(self, index, model, used=None, aggregate=None):
        self.index = index
        self.model = model
        self.used = {} if used is None else used  # slot -> set of functions in use
        # slots holding root ports side by side (functions 0-7)
        self.aggregate = set() if aggregate is None else aggregate
        self.shared = False  # whether a slot was taken that was in use already (reserved, or taken)

    @property
    def slots(self):
        """The slots devices may use on this bus (libvirt's minSlot..maxSlot): a root port has one;
        on the root bus slot 0 is the host bridge's, on a bridge the bridge's own (SHPC)."""
        return BUS_SLOTS.get(self.model, OTHER_BUS_SLOTS)

    def free_slot(self):
        used = self.used
        for slot in self.slots:
            if not used.get(slot):
                return slot
        return None

    def take(self, slot, function=0):
        functions = self.used.setdefault(slot, set())
        if functions:
            self.shared = True
        functions.add(function)


class Layout:
    """The PCI buses of a domain (index → Bus) and what is in use on them."""

    def __init__(self, domain, explicit=None, controllers=None, placements=None):
        """EXPLICIT: what `_explicit` returns, CONTROLLERS: domain.controllers, when the caller
        has them already. PLACEMENTS: where write_address records what it writes (see `placed`)."""
        self.domain = domain
        self.placements = placements
        self.q35 = domain.is_q35
        self.buses = {0: Bus(0, ROOT_MODELS[self.q35])}
        # The domain's controllers, read once: those added later through add_controller are
        # appended (after the ones read, whatever their place in the XML).
        self.controllers = domain.controllers if controllers is None else controllers
        for controller in self.controllers:
            if controller.type == "pci" and controller.index not in (None, 0):
                self.buses[controller.index] = Bus(controller.index, controller.model)
        root = self.buses[0]
        root.take(0)
        if not self.q35:
            root.used[1] = set(range(FUNCTIONS))  # PIIX3: ISA, IDE, USB, ACPI
        else:
            for slot in Q35_RESERVED:
                root.used[slot] = set(range(FUNCTIONS))
        for node, (bus, slot, function) in _explicit(domain) if explicit is None else explicit:
            self.bus(bus).take(slot, function)
            if bus == 0 and node.tag == "controller" and node.get("model") == "pcie-root-port":
                root.aggregate.add(slot)  # root ports side by side: more may join them

    def bus(self, index):
        if index not in self.buses:
            self.buses[index] = Bus(index, None)  # named by an address; its controller comes later
        return self.buses[index]

    def find(self, connect):
        """(bus, slot) for a new device, or None when no bus has room."""
        buses = self.buses
        for index in sorted(buses) if len(buses) > 1 else buses:  # most domains: pci.0 or pcie.0 alone
            bus = buses[index]
            if connect in ACCEPTS.get(bus.model, ()):  # a device of kind CONNECT may go there
                slot = bus.free_slot()
                if slot is not None:
                    return bus, slot
        return None

    def next_index(self):
        return max(self.buses) + 1

    def add_controller(self, model, index=None):
        """A new <controller type='pci' model=MODEL> for bus INDEX (by default a new bus, numbered
        after the others), and the root controller when the XML lacks it: in the domain, in
        self.controllers, and as the bus's model."""
        if index is None:
            index = self.next_index()
        root = ensure_root(self.domain)
        if root is not None:
            self.controllers.append(root)
        controller = add_controller(self.domain, "pci", index, model)
        self.controllers.append(controller)
        self.bus(index).model = model
        return controller

    def write_address(self, node, bus, slot, function=0):
        """Give device NODE the address (BUS, SLOT, FUNCTION), and record its placement."""
        node.append(_address(bus, slot, function))
        if self.placements is not None:
            self.placements[node] = (bus, slot, function, None)

    def shares_slots(self):
        """Whether two PCI addresses of the domain may be in one slot. The layout has taken every
        one (the explicit ones when it was made, then each it placed), except the addresses of the
        chipset's own controllers, which are in reserved slots: in use from the start, so that any
        other address there counts as sharing."""
        return any(bus.shared for bus in self.buses.values())


# ---------------------------------------------------------------- assignment


def _pci_0_full(node):
    """The error for a device NODE of a pc guest that finds no free slot (pc adds no bus itself)."""
    return XMLInputError(
        f"{_where(node)}: no free PCI slot left on pci.0 (slots {FIRST_FREE_SLOT}..{LAST_SLOT} are taken); give "
        "some devices explicit <address type='pci' bus=...> on a <controller type='pci' model='pci-bridge'>",
        line=node.sourceline)


def _fits_in_turn(domain, explicit, controllers, unaddressed):
    """Whether _place_in_turn places the devices where the layout would (its arguments: as
    assign_addresses has them). Most domains: a pc guest without PCI addresses or controllers
    written, so pci.0 is the only bus, with only the chipset's slots taken (and no video card's):
    no layout to build to find the next slot."""
    return not (explicit or controllers or "video" in unaddressed or domain.is_q35)


def _place_in_turn(nodes, placements):
    """Each of the devices NODES in the next slot of pci.0 from FIRST_FREE_SLOT up: where a layout
    of pci.0 alone, with only the chipset's slots taken, would place them. Recorded in PLACEMENTS."""
    slots = range(FIRST_FREE_SLOT, LAST_SLOT + 1)
    if len(nodes) > len(slots):
        raise _pci_0_full(nodes[len(slots)])
    for node, slot in zip(nodes, slots):
        node.append(_address(0, slot, 0))  # as Layout.write_address, without a call per device
        placements[node] = (0, slot, 0, None)


def _grow(layout, connect, node):
    """Add the controllers a device of kind CONNECT needs (libvirt's virDomainPCIAddressSetGrow)."""
    if not layout.q35:
        raise _pci_0_full(node)
    if connect == "pci":
        spot = layout.find("pcie-bridge")
        if spot is None:
            layout.add_controller("pcie-root-port")
            spot = layout.find("pcie-bridge")
        spot[0].take(spot[1])  # the bridge sits in it
        layout.add_controller("pcie-to-pci-bridge")
    else:
        layout.add_controller("pcie-root-port")


def _plan_buses(layout, pending):
    """First pass: add the controllers the pending devices need, and one spare root port on q35."""
    grew = False
    for node, connect in pending:
        spot = layout.find(connect)
        if spot is None:
            _grow(layout, connect, node)
            grew = True
            spot = layout.find(connect)
        bus, slot = spot
        bus.take(slot)
    # Root ports added for devices: one more, empty, for hot-plug, unless one is left free (libvirt
    # adds none to a layout the XML spells out).
    if layout.q35 and grew and layout.find("pcie") is None:
        layout.add_controller("pcie-root-port")


@copied
def _address(bus, slot, function):
    """What Layout.write_address writes: libvirt's form and attribute order (as _normalize_node's)."""
    return etree.Element("address", {"type": "pci", "domain": "0x0000", "bus": f"0x{bus:02x}",
                                     "slot": f"0x{slot:02x}", "function": f"0x{function:x}"})


def _place_root_port(layout, node):
    """The lowest free function of a slot of root ports on pcie.0, else function 0 of a free slot."""
    root = layout.buses[0]
    for slot in root.slots:
        functions = root.used.get(slot, set())
        if slot in root.aggregate and len(functions) < FUNCTIONS:
            function = min(set(range(FUNCTIONS)) - functions)
            break
        if not functions:
            root.aggregate.add(slot)
            function = 0
            break
    else:
        raise XMLInputError(
            "a PCI slot is needed to connect a PCI controller model='pcie-root-port', but none is available on "
            f"pcie.0 (slots 0x01..0x{LAST_SLOT - 1:02x}, 8 root ports each, are taken)", line=node.sourceline)
    root.take(slot, function)
    layout.write_address(node, 0, slot, function)


def _place_controllers(layout):
    """Second pass, first step: an address for every PCI controller without one (index order)."""
    for controller in sorted(layout.controllers, key=lambda c: c.index or 0):
        if controller.type != "pci" or controller.model not in CONTROLLER_MODEL_NAMES \
                or _first(controller.node, "address") is not None:
            continue  # the root bus; a model virtnet does not lay out (switch ports, expander buses); placed
        if controller.model == "pcie-root-port":
            _place_root_port(layout, controller.node)
            continue
        connect = CONTROLLER_CONNECT[controller.model]
        root = layout.buses[0]
        if connect == "dmi-bridge" and not root.used.get(DMI_BRIDGE_SLOT):
            root.take(DMI_BRIDGE_SLOT)
            layout.write_address(controller.node, 0, DMI_BRIDGE_SLOT)
            continue
        spot = layout.find(connect)
        if spot is None:
            raise XMLInputError(f"<controller type='pci' model='{controller.model}'>: no free PCI slot to "
                                "connect it to", line=controller.line)
        bus, slot = spot
        bus.take(slot)
        layout.write_address(controller.node, bus.index, slot)


def _controller_defaults(controllers):
    """libvirt's <model name> and <target> of each PCI controller, from its index and address."""
    for controller in controllers:
        name = CONTROLLER_MODEL_NAMES.get(controller.model)
        if controller.type != "pci" or name is None:
            continue
        node = controller.node
        if node.find("model") is None:
            etree.SubElement(node, "model", {"name": name})
        target = node.find("target")
        if target is None:
            target = etree.SubElement(node, "target")
        address = node.find("address")
        on_pci = address is not None and address.get("type") == "pci"
        if controller.model == "pci-bridge":
            if target.get("chassisNr") is None:
                target.set("chassisNr", str(controller.index))
        elif controller.model in SINGLE_SLOT:
            if target.get("chassis") is None:
                target.set("chassis", str(controller.index))
            if target.get("port") is None and on_pci:
                # A root port's port is its slot and function; a downstream port's its slot.
                slot, function = pci_number(address.get("slot", "0")), pci_number(address.get("function", "0"))
                port = (slot << 3) + function if controller.model == "pcie-root-port" else slot
                target.set("port", f"0x{port:x}")
        ordered = {key: target.attrib[key] for key in ("chassisNr", "chassis", "port", "busNr", "hotplug")
                   if key in target.attrib}
        ordered.update((key, value) for key, value in target.attrib.items() if key not in ordered)
        target.attrib.clear()
        target.attrib.update(ordered)
        if not len(target) and not target.attrib:
            node.remove(target)


def _builtin_addresses(layout):
    """The chipset's own controllers at their fixed addresses (PIIX3 IDE 00:01.1, ICH9 SATA 00:1f.2)."""
    for controller in layout.controllers:
        place = BUILTIN.get((controller.type, controller.index or 0, layout.q35))
        if place is not None and _first(controller.node, "address") is None:
            layout.write_address(controller.node, 0, *place)


def _primary_video(layout, index, unaddressed):
    """libvirt keeps slot 2 (pc) or 1 (q35) for the primary video card: reserved, and written.
    INDEX, UNADDRESSED: as _survey has them."""
    unplaced = unaddressed.get("video")
    if not unplaced or unplaced[0] is not index["video"][0]:
        return  # no <video>, or the first one has its address
    video = unplaced[0]
    model = _first(video, "model")
    if (model.get("type") if model is not None else None) not in PCI_VIDEO_MODELS:
        return
    slot = PRIMARY_VIDEO_SLOT[layout.q35]
    if not layout.buses[0].used.get(slot):
        layout.buses[0].take(slot)
        layout.write_address(video, 0, slot)


def _missing_buses(domain, layout):
    """A controller for every bus an explicit address names but the XML lacks."""

    for index in sorted(layout.buses):
        if index and layout.buses[index].model is None:
            model = "pcie-root-port" if layout.q35 else "pci-bridge"
            if layout.q35:  # a root port has one slot: an address past it needs a controller of the user's
                for tag, addr in domain.pci_addresses:
                    bus, slot = pci_number(addr.get("bus", "0")), pci_number(addr.get("slot", "0"))
                    if bus == index and slot != 0:
                        raise XMLInputError(
                            f"<{tag}>: <address bus='0x{bus:02x}' slot='0x{slot:02x}'>: there is no bus 0x{bus:02x}, "
                            "and the pcie-root-port virtnet would add for it has a single slot; use slot='0x00', "
                            "or add the <controller type='pci'> with that index that you mean", line=addr.sourceline)
            layout.add_controller(model, index)


def _multifunction(domain, placements):
    """multifunction='on' on function 0 of a slot whose other functions are in use (libvirt does).
    Every PCI address is in libvirt's form by now (normalised, or written so): compared as text.
    A device given multifunction= here loses its recorded placement (PLACEMENTS): it is read back."""
    functions = {}
    for _, addr in domain.pci_addresses:
        functions.setdefault((addr.get("domain"), addr.get("bus"), addr.get("slot")), []).append(addr)
    for addrs in functions.values():
        if len(addrs) > 1:
            for addr in addrs:
                if addr.get("function") == "0x0" and addr.get("multifunction") is None:
                    addr.set("multifunction", "on")
                    placements.pop(addr.getparent(), None)


def assign_addresses(domain, index=None):
    """Give every PCI device virtnet renders an address, adding the PCI controllers they need.
    INDEX: the guest.device_index of <devices>, when the caller has it; kept current."""
    devices = domain.devices_node()
    if devices is None:
        return  # no device to place
    if index is None:
        index = device_index(devices)
    domain.pci_placements = placements = {}  # see `placed`
    # One walk (in C) over the <address> elements below <devices> serves to normalise the PCI
    # ones and to tell the devices without one.
    addresses = list(devices.iter("address"))
    explicit = _normalize_explicit(addresses, placements)
    # Looked up before any address is written: the only devices given one before the others are
    # placed (the primary video card, the chipset's own controllers) are not among those.
    unaddressed, controllers = _survey(index, addresses)
    if _fits_in_turn(domain, explicit, controllers, unaddressed):
        _place_in_turn(unplaced_devices(unaddressed, False), placements)
        return
    layout = Layout(domain, explicit, controllers, placements)
    _primary_video(layout, index, unaddressed)
    _builtin_addresses(layout)
    _missing_buses(domain, layout)
    pending = [(node, connect_kind(node, layout.q35)) for node in unplaced_devices(unaddressed, layout.q35)]
    if layout.q35:
        # First pass on a copy of the layout: which root ports and bridges must be added (libvirt
        # does the same); then the layout again, with them. (On pc nothing is added: pci.0 only.)
        _plan_buses(Layout(domain), pending)
        layout = Layout(domain, placements=placements)
    _place_controllers(layout)
    for node, connect in pending:
        spot = layout.find(connect)
        if spot is None:
            _grow(layout, connect, node)  # not reached: the first pass added what is needed
            spot = layout.find(connect)
        bus, slot = spot
        bus.take(slot)
        layout.write_address(node, bus.index, slot)
    _controller_defaults(layout.controllers)
    if layout.shares_slots():
        _multifunction(domain, placements)
    index.update(device_index(devices))  # the controllers added (the layout's is seldom the way)


# ---------------------------------------------------------------- hot-plug


def hotplug_address(domain, node):
    """Give NODE (a device being hot-plugged into the running DOMAIN, already in its tree) a free
    PCI address on a bus that takes hot-plugged devices, as libvirt does: on q35 an empty
    pcie-root-port (or a slot of a pcie-to-pci-bridge for conventional PCI), on pc a free slot of
    pci.0 or of a pci-bridge. Nothing is added: a running machine cannot grow controllers. An
    address written in NODE is kept (the caller has checked it is free)."""
    if node.find("address") is not None:
        return
    connect = "pci" if not domain.is_q35 else _nic_connect(node)
    layout = Layout(domain)
    for bus in layout.buses.values():
        if bus.model == "pcie-root-port" and _root_port_hotplug_off(domain, bus.index):
            bus.used[0] = set(range(FUNCTIONS))  # <target hotplug='off'>: QEMU refuses it there
    spot = layout.find(connect)
    if spot is None:
        if domain.is_q35:
            want = ("empty <controller type='pci' model='pcie-root-port'/>" if connect == "pcie" else
                    "<controller type='pci' model='pcie-to-pci-bridge'/> with a free slot")
        else:
            want = "free slot on pci.0 or on a <controller type='pci' model='pci-bridge'/>"
        raise XMLInputError(f"no free PCI slot to hot-plug <{node.tag}> into: the running machine has no "
                            f"{want}, and controllers cannot be added while it runs; add one to the definition "
                            "(libvirt adds one spare root port) and restart the domain", line=node.sourceline)
    bus, slot = spot
    layout.write_address(node, bus.index, slot)  # not recorded: the live domain's placements are read


def address_in_use(domain, node):
    """Whether the <address type='pci'> written in NODE is taken by another device of DOMAIN."""
    mine = node.find("address")
    if mine is None or mine.get("type") != "pci":
        return False
    wanted = _parse_address(mine)
    return any(other is not node and where == wanted for other, where in _explicit(domain))


def _root_port_hotplug_off(domain, index):
    for controller in domain.controllers:
        if controller.type == "pci" and controller.index == index:
            target = controller.node.find("target")
            return target is not None and target.get("hotplug") == "off"
    return False
