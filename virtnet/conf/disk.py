"""The storage model: <disk> and <controller>, and libvirt's defaults for them.

Each property is declared once as a path (conf.xmlmodel). What libvirt fills in after parsing a
disk is done here the same way (`apply_defaults`): the driver name and format, a cdrom's
<readonly/>, the bus a target name implies, the drive address a target name implies, libvirt's
order of disks, and the controllers those drive addresses need. PCI addresses, root ports and the
built-in controllers' addresses are conf.pci's; identities (aliases, node names) conf.identity's.
"""

import re

from lxml import etree

from virtnet.conf.address import Address, pci_number
from virtnet.conf.xmlmodel import Child, Prop, XMLObject

# libvirt's target name prefixes and the bus each implies (virDomainDiskDefParse... bus defaults).
PREFIX_BUS = (("xvd", "xen"), ("ubd", "uml"), ("hd", "ide"), ("sd", "scsi"), ("vd", "virtio"), ("fd", "fdc"))
DISK_NAME_RE = re.compile(r"(xvd|ubd|hd|sd|vd|fd)([a-z]+)")
# Buses whose disks sit on a controller at a drive address: (controller type, disks per controller).
DRIVE_BUSES = ("ide", "sata", "scsi")
ADDRESSED_BUSES = DRIVE_BUSES + ("fdc",)  # libvirt also addresses floppies (not rendered by virtnet)
IDE_UNITS, SATA_UNITS, SCSI_UNITS, FDC_UNITS = 4, 6, 15, 2
SCSI_CONTROLLER_UNIT = 7  # a wide SCSI bus: unit 7 is the controller itself
# <driver> attributes whose value 'default' libvirt reads as "not set" and does not write back.
DRIVER_DEFAULTABLE = ("cache", "error_policy", "rerror_policy", "io", "ioeventfd", "event_idx", "copy_on_read",
                      "discard", "detect_zeroes")
STORAGE_DEVICES = frozenset(("disk", "controller"))  # the <devices> elements this module models
DEFAULT_SCSI_MODEL = "lsilogic"  # libvirt's choice for x86 when QEMU has the LSI controller (7.2 has)


def disk_index(name):
    """libvirt's index of a disk target name: 'vda' 0, 'hdc' 2, 'sdaa' 26 (None if not a disk name)."""
    match = DISK_NAME_RE.fullmatch(name or "")
    if match is None:
        return None
    index = -1
    for char in match.group(2):
        index = (index + 1) * 26 + ord(char) - ord("a")
    return index


def bus_of_name(name):
    """The bus a target name implies when <target bus> is absent ('vda' → virtio), or None."""
    for prefix, bus in PREFIX_BUS:
        if (name or "").startswith(prefix):
            return bus
    return None


class Disk(XMLObject):
    tag = "disk"
    # libvirt's order of <disk> children (virDomainDiskDefFormat, then virDomainDeviceInfoFormat).
    CHILD_ORDER = (
        "driver", "auth", "source", "backingStore", "backenddomain", "geometry", "blockio", "mirror", "target",
        "iotune", "throttlefilters", "readonly", "shareable", "transient", "serial", "wwn", "vendor", "product",
        "encryption", "boot", "alias", "address",
    )
    ids = None  # DiskIds, stamped by conf.identity.prepare
    declared_type = Prop("@type")
    type = Prop("@type", default="file")  # libvirt's default, written out
    declared_device = Prop("@device")
    driver_name = Prop("driver/@name")
    format = Prop("driver/@type")
    cache = Prop("driver/@cache")
    discard = Prop("driver/@discard")
    io = Prop("driver/@io")
    detect_zeroes = Prop("driver/@detect_zeroes")
    error_policy = Prop("driver/@error_policy")
    rerror_policy = Prop("driver/@rerror_policy")
    queues = Prop("driver/@queues", int)
    queue_size = Prop("driver/@queue_size", int)
    source_file = Prop("source/@file")
    source_dev = Prop("source/@dev")
    target_dev = Prop("target/@dev")
    declared_bus = Prop("target/@bus")
    serial = Prop("serial")
    boot_order = Prop("boot/@order", int)
    alias = Prop("alias/@name")
    address = Child("address", Address)

    @property
    def device(self):
        return self.declared_device or "disk"

    @property
    def bus(self):
        return self.declared_bus or bus_of_name(self.target_dev)

    @property
    def is_cdrom(self):
        return self.device == "cdrom"

    @property
    def readonly(self):
        return self.has("readonly")

    @property
    def shareable(self):
        return self.has("shareable")

    @property
    def path(self):
        """The host file or block device (None for an empty cdrom or a source of another kind)."""
        return {"file": self.source_file, "block": self.source_dev}.get(self.type)

    @property
    def index(self):
        return disk_index(self.target_dev)

    @property
    def drive(self):
        """The drive address (controller, bus, target, unit) or None."""
        address = self.address
        return address if address is not None and address.type == "drive" else None

    @property
    def pci(self):
        address = self.address
        return address if address is not None and address.type == "pci" else None


class Controller(XMLObject):
    tag = "controller"
    # libvirt's order of <controller> children (virDomainControllerDefFormat).
    CHILD_ORDER = ("model", "target", "driver", "boot", "alias", "master", "rom", "acpi", "address", "pcihole64")
    type = Prop("@type")
    index = Prop("@index", int)
    model = Prop("@model")
    model_name = Prop("model/@name")
    chassis = Prop("target/@chassis", int)
    chassis_nr = Prop("target/@chassisNr", int)
    port = Prop("target/@port", pci_number)
    hotplug = Prop("target/@hotplug")
    queues = Prop("driver/@queues", int)
    cmd_per_lun = Prop("driver/@cmd_per_lun", int)
    max_sectors = Prop("driver/@max_sectors", int)
    ioeventfd = Prop("driver/@ioeventfd")
    alias = Prop("alias/@name")
    address = Child("address", Address)

    @property
    def pci(self):
        address = self.address
        return address if address is not None and address.type == "pci" else None


MODEL_CLASSES = (Disk, Controller)


# ---------------------------------------------------------------- libvirt's defaults


def _insert_after_last(devices, node, anchors):
    """Insert NODE into <devices> after the last element named in ANCHORS (tried in turn), else first."""
    for anchor in anchors:
        found = devices.findall(anchor)
        if found:
            found[-1].addnext(node)
            return node
    devices.insert(0, node)
    return node


def add_controller(domain, ctype, index, model=None):
    """A new <controller> placed as libvirt inserts it: after the last controller of its type with
    a lower index (before one with a higher index), else after the last controller, else after
    the disks or the emulator."""
    devices = domain.devices_node()
    attrib = {"type": ctype, "index": str(index)}
    if model:
        attrib["model"] = model
    node = etree.Element("controller", attrib)
    same = [c for c in devices.findall("controller") if c.get("type") == ctype]
    higher = [c for c in same if (_int(c.get("index")) or 0) > index]
    if higher:
        higher[0].addprevious(node)
    elif same:
        same[-1].addnext(node)
    else:
        _insert_after_last(devices, node, ("controller", "disk", "emulator"))
    return Controller(node)


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def controllers_of(domain, ctype):
    return [c for c in domain.controllers if c.type == ctype]


def find_controller(domain, ctype, index):
    for controller in domain.controllers:
        if controller.type == ctype and controller.index == index:
            return controller
    return None


def _driver_defaults(disk):
    driver = disk.node.find("driver")
    if driver is None:
        driver = etree.SubElement(disk.node, "driver")
    for attr in DRIVER_DEFAULTABLE:
        if driver.get(attr) == "default":
            del driver.attrib[attr]
    if driver.get("name") is None:
        driver.set("name", "qemu")
    if driver.get("type") is None and disk.type != "volume":
        driver.set("type", "raw")


def _drive_address(disk):
    """libvirt's drive address for a target name (virDomainDiskDefAssignAddress, wide SCSI)."""
    index, bus = disk.index, disk.bus
    if bus == "ide":
        return index // IDE_UNITS, (index % IDE_UNITS) // 2, index % 2
    if bus == "sata":
        return index // SATA_UNITS, 0, index % SATA_UNITS
    if bus == "fdc":
        return index // FDC_UNITS, 0, index % FDC_UNITS
    unit = index % SCSI_UNITS
    return index // SCSI_UNITS, 0, unit + 1 if unit >= SCSI_CONTROLLER_UNIT else unit


def effective_drive(disk):
    """(controller, bus, target, unit) of a disk on an IDE/SATA/SCSI controller: its <address
    type='drive'>, else the one its target name implies; None for other disks."""
    if disk.bus not in DRIVE_BUSES:
        return None
    drive = disk.drive
    if drive is not None:
        return drive.drive_key()
    if disk.address is not None or disk.index is None:
        return None
    controller, bus, unit = _drive_address(disk)
    return controller, bus, 0, unit


def _sort_disks(domain):
    """libvirt's order of disks (virDomainDiskInsert): by bus in order of first appearance, and by
    target name within a bus. The disks take the places disks had; nothing else moves."""
    devices = domain.devices_node()
    nodes = devices.findall("disk")
    ordered = []
    for node in nodes:
        bus, index = Disk(node).bus, Disk(node).index
        at = None
        for position in range(len(ordered) - 1, -1, -1):
            other = Disk(ordered[position])
            if other.bus != bus:
                continue
            if index is not None and other.index is not None and other.index > index:
                at = position
            elif at is None:
                at = position + 1
        ordered.insert(len(ordered) if at is None else at, node)
    if ordered == nodes:
        return
    positions = [devices.index(node) for node in nodes]
    for node in nodes:
        devices.remove(node)  # its tail (whitespace) goes with it
    for position, node in zip(positions, ordered):  # ascending: each lands where a disk was
        devices.insert(position, node)


def apply_defaults(domain):
    """Fill in and normalise the disks and their controllers the way libvirt does (in place)."""
    devices = domain.devices_node()
    if devices is None:
        return
    for node in devices.findall("disk"):
        disk = Disk(node)
        if disk.declared_type is None:
            disk.declared_type = "file"
        if disk.declared_device is None:
            disk.declared_device = "disk"
        if disk.declared_bus is None and disk.bus is not None and node.find("target") is not None:
            disk.declared_bus = disk.bus
        _driver_defaults(disk)
        if disk.is_cdrom and not disk.readonly:
            etree.SubElement(node, "readonly")  # libvirt: a cdrom is always read-only
        address = node.find("address")
        if address is None and disk.bus in ADDRESSED_BUSES and disk.index is not None:
            controller, bus, unit = _drive_address(disk)
            etree.SubElement(node, "address", {"type": "drive", "controller": str(controller), "bus": str(bus),
                                               "target": "0", "unit": str(unit)})
        elif address is not None and address.get("type") == "drive":
            for attr in ("controller", "bus", "target", "unit"):  # libvirt writes all four
                if address.get(attr) is None:
                    address.set(attr, "0")
    _sort_disks(domain)
    domain.__dict__.pop("disks", None)  # a list cached before the sort is in the old order
    _index_controllers(domain)
    add_disk_controllers(domain)


def _index_controllers(domain):
    """A controller without index gets the lowest index its type does not use (libvirt's rule)."""
    for controller in domain.controllers:
        if controller.index is None:
            used = {c.index for c in controllers_of(domain, controller.type) if c.index is not None}
            controller.node.set("index", str(min(set(range(len(used) + 1)) - used)))


# The model of the PCI root controller (index 0), the machine's own bus: by whether it is q35.
ROOT_MODELS = ("pci-root", "pcie-root")  # the PCI root controller's model: pc's, q35's (indexed by is_q35)


def root_model(domain):
    """The model of the PCI root controller (index 0): the machine's own bus."""
    return ROOT_MODELS[domain.is_q35]


def ensure_root(domain):
    """<controller type='pci' index='0' model='pci-root'|'pcie-root'>, added when missing (and
    returned then, else None)."""
    if find_controller(domain, "pci", 0) is None:
        return add_controller(domain, "pci", 0, root_model(domain))
    return None


def add_disk_controllers(domain):
    """The controllers the disks' drive addresses name (IDE, SATA, SCSI, floppy), as libvirt adds
    them implicitly; a SCSI controller without a model gets libvirt's default model, written out."""
    added = False
    for disk in domain.disks:
        drive = disk.drive
        if drive is None or disk.bus not in ADDRESSED_BUSES:
            continue
        if find_controller(domain, disk.bus, drive.controller or 0) is None:
            if not added:
                ensure_root(domain)
            add_controller(domain, disk.bus, drive.controller or 0)
            added = True
    for controller in controllers_of(domain, "scsi"):
        if controller.model is None:
            controller.model = DEFAULT_SCSI_MODEL
