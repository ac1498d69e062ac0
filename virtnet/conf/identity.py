"""The prepare phase: after the checks and libvirt's defaults, each device is stamped once with its
identity, which argv, plan, executor, live state and (later) hot-plug all read.

Disks and controllers get libvirt's aliases the same way: 'virtio-disk0' (from the target name),
'sata0-0-0', 'ide0-1-0', 'scsi0-0-0-0' (from the drive address; 'scsi0-0-0' on an LSI controller),
'pci.1', 'scsi0', 'sata0', and 'ide' for the chipset's own IDE (pc) or SATA (q35) controller. A
disk's block nodes are libvirt's too: 'libvirt-N-storage' (the file or block device) and
'libvirt-N-format' (raw, qcow2), N counting the disks from the last one.

A NIC's alias is its name everywhere: QEMU's ids (hostnet0/net0/charnet0 or a user alias's), the
plan's actions, the runtime record, QMP. It is written into the XML, so the live XML keeps it for
the device's lifetime: a device added or removed later renumbers nothing else. Inactive XML leaves
generated aliases out, as libvirt does (conf.format).
"""

import re

from lxml import etree

from virtnet.conf import iftypes, mac
from virtnet.conf.disk import STORAGE_DEVICES
from virtnet.conf.ifname import GENERATED_PREFIX
from virtnet.conf.xmlmodel import copied
from virtnet.record import Record

NET_ALIAS = re.compile(r"net(\d+)")
USER_ALIAS_PREFIX = "ua-"
# libvirt's disk alias prefix for each bus (qemuAssignDeviceDiskAlias).
DISK_ALIAS_PREFIX = {"ide": "ide", "sata": "sata", "scsi": "scsi", "virtio": "virtio", "usb": "usb", "fdc": "fdc",
                     "sd": "sd", "xen": "xen", "uml": "uml"}


class NicIds(Record):
    """An interface's identity. What only the host plan reads (host_mac, tap) is derived when
    asked, from what the interface had when it was stamped: a conversion never asks."""
    __slots__ = ("alias", "guest_mac", "iftype", "dev")

    def __init__(self, alias, guest_mac, iftype, dev):
        self.alias = alias  # 'net0', or the user's 'ua-…'
        self.guest_mac = guest_mac
        self.iftype = iftype
        self.dev = dev  # <target dev>, or None

    @property
    def host_mac(self):
        """The MAC of the host side of a tap (see mac.host_side)."""
        return mac.host_side(self.guest_mac)

    @property
    def tap(self):
        """Tap-backed types: the name or '%d' template of the tap (managed='no': as given); else None."""
        return _tap_name(self.iftype, self.dev)

    @property
    def netdev(self):
        return "host" + self.alias

    @property
    def device(self):
        return self.alias

    @property
    def chardev(self):
        return "char" + self.alias


class NicRead(Record):
    """What `prepare` reads of an interface (read_nic), or what the defaults step hands it having
    read the same just before (so nothing is looked up twice)."""
    __slots__ = ("iftype", "alias_node", "guest_mac", "dev")

    def __init__(self, iftype, alias_node, guest_mac, dev):
        self.iftype = iftype
        self.alias_node = alias_node  # the <alias> element, or None
        self.guest_mac = guest_mac
        self.dev = dev  # <target dev>, or None


class DiskIds(Record):
    __slots__ = ("alias", "node")

    def __init__(self, alias, node):
        self.alias = alias  # 'virtio-disk0', 'sata0-0-0', ... or the user's 'ua-…'
        self.node = node  # N of libvirt's node names: libvirt-N-storage, libvirt-N-format

    @property
    def device(self):
        return self.alias

    @property
    def storage_node(self):
        return f"libvirt-{self.node}-storage"

    @property
    def format_node(self):
        return f"libvirt-{self.node}-format"


def disk_alias(domain, disk):
    """libvirt's alias of a disk: from its drive address on a controller's bus, else its target name."""
    prefix = DISK_ALIAS_PREFIX.get(disk.bus, disk.bus)
    drive = disk.drive
    if drive is None:
        return f"{prefix}-disk{disk.index}"
    parts = [drive.controller or 0, drive.bus or 0, drive.target or 0, drive.unit or 0]
    if disk.bus != "scsi" or _scsi_model(domain, drive.controller or 0) == "lsilogic":
        del parts[2]  # target: only non-LSI SCSI controllers have targets in the id
    return prefix + "-".join(str(part) for part in parts)


def _scsi_model(domain, index):
    for controller in domain.controllers:
        if controller.type == "scsi" and (controller.index or 0) == index:
            return controller.model
    return None


def controller_alias(domain, controller):
    """libvirt's alias of a controller (qemuAssignDeviceControllerAlias)."""
    ctype, index = controller.type, controller.index or 0
    if ctype == "pci":
        return "pcie.0" if controller.model == "pcie-root" else f"pci.{index}"
    builtin = (ctype == "ide" and not domain.is_q35) or (ctype == "sata" and domain.is_q35)
    if index == 0 and (builtin or ctype == "usb"):
        return "ide" if builtin else "usb"
    return f"{ctype}{index}"


def _prepare_storage(domain, index):
    """Stamp every disk and controller with its ids (aliases written into the XML when missing).
    INDEX: the guest.device_index of <devices>, or None."""
    # Most domains have neither: no model objects made to find that out.
    if index is None:
        if not domain.has_device(*STORAGE_DEVICES):
            return
    elif STORAGE_DEVICES.isdisjoint(index):
        return
    disks = domain.disks
    for position, disk in enumerate(disks):
        if disk.alias is None and disk.bus is not None and (disk.drive is not None or disk.index is not None):
            disk.alias = disk_alias(domain, disk)
        disk.ids = DiskIds(alias=disk.alias, node=len(disks) - position) if disk.alias else None
    for controller in domain.controllers:  # the alias is the controller's id: read it as .alias
        if controller.alias is None and controller.type is not None:
            controller.alias = controller_alias(domain, controller)


def _first_new_net_number(aliases):
    """N of the first alias 'netN' a new NIC gets (ALIASES: the NICs', None for none). libvirt's
    rule: one past the highest netN in use (so a removed device's id is not reused), counting the
    ones given before it."""
    if not any(aliases):
        return 0  # most domains: no alias given, none to match
    numbers = [int(m.group(1)) for m in map(NET_ALIAS.fullmatch, filter(None, aliases)) if m]
    return max(numbers) + 1 if numbers else 0


@copied
def _alias_element(name):
    return etree.Element("alias", {"name": name})


def _attribute(node, name):
    """Attribute NAME of NODE, an element or None."""
    return node.get(name) if node is not None else None


def _tap_name(iftype, dev):
    """The tap of an interface of type IFTYPE whose <target dev> is DEV (or None), or None if it has none."""
    if iftype not in iftypes.TAP_TYPES:
        return None
    if dev:
        return dev
    return ("macvtap" if iftype == "direct" else GENERATED_PREFIX) + "%d"  # libvirt's two counters


def read_nic(iface):
    """What `prepare` reads of an interface, as a NicRead. Each element is looked up once, and read
    here directly (as Interface.alias, .mac and .target_dev would): the model is not frozen yet."""
    children = iface.first_children()
    return NicRead(iface.type, children.get("alias"), _attribute(children.get("mac"), "address"),
                   _attribute(children.get("target"), "dev"))


def prepare(domain, nics=None, index=None):
    """Stamp every interface with its NicIds (alias written into the XML when it has none), and
    the disks and controllers with theirs. NICS: a NicRead for each interface, and INDEX: the
    guest.device_index of <devices>, when the caller has read them already (the defaults step,
    which reads every interface and device just before)."""
    interfaces = domain.interfaces
    if nics is None:
        nics = [read_nic(iface) for iface in interfaces]
    aliases = [_attribute(nic.alias_node, "name") for nic in nics]
    number = _first_new_net_number(aliases) if None in aliases else None
    for iface, nic, alias in zip(interfaces, nics, aliases):
        if alias is None:
            alias = f"net{number}"
            number += 1
            if nic.alias_node is None:
                iface.node.append(_alias_element(alias))
            else:
                nic.alias_node.set("name", alias)
        iface.ids = NicIds(alias, nic.guest_mac, nic.iftype, nic.dev)
    _prepare_storage(domain, index)
    return domain


def is_generated_alias(alias):
    """An alias virtnet (or libvirt) made: anything but a user alias ('ua-…'). Inactive XML leaves
    these out, as libvirt does."""
    return not alias.startswith(USER_ALIAS_PREFIX)
