"""Where a -device sits on the guest's PCI buses: the properties of its <address type='pci'>, the
same for every device virtnet renders (NICs, disks, controllers, virtio-serial, balloon, RNGs)."""

from functools import lru_cache

from virtnet.conf.address import pci_number
from virtnet.conf.pci import bus_name

# The suffix of QEMU's virtio PCI device for each virtio model (virtio-net-pci,
# virtio-balloon-pci-transitional, ...).
VIRTIO_PCI_SUFFIX = {"virtio": "", "virtio-transitional": "-transitional",
                     "virtio-non-transitional": "-non-transitional"}


def add_pci_address(props, domain, device):
    """Add bus, multifunction and addr (libvirt's order) to the device properties PROPS when the
    model object DEVICE has an <address type='pci'> (a part left out counts as 0); nothing otherwise."""
    node = address_element(device)
    if node is None or node.get("type") != "pci":
        return
    bus, addr = _location(node.get("bus"), node.get("slot"), node.get("function"))
    props["bus"] = bus_name(domain, bus)
    multifunction = node.get("multifunction")
    if multifunction in ("on", "off"):
        props["multifunction"] = multifunction == "on"
    props["addr"] = addr


def address_element(device):
    """The <address> element of the model object DEVICE, or None. Read from the element, found in
    C: every rendered device has an address, and through the model each would cost a frozen
    object, its snapshot and five first reads for these few values."""
    node = device.node
    # The grammar allows one <address> per device, and it comes last (libvirt's order), or just
    # before the <alias> conf.identity appends: the last two children (one C call) are looked at
    # before a tag-matching walk (several times the cost), in document order, which finds a NIC's
    # (before its alias) at the first look.
    for child in node[-2:]:
        if child.tag == "address":
            return child
    return next(node.iterchildren("address"), None)


@lru_cache(maxsize=1024)  # a batch's devices sit at a few dozen places: each is worked out once
def _location(bus, slot, function):
    """(bus index, QEMU's addr=) from the attributes' text (None when absent: 0)."""
    bus = 0 if bus is None else pci_number(bus)
    function = 0 if function is None else pci_number(function)
    slot = 0 if slot is None else pci_number(slot)
    return bus, f"0x{slot:x}" + (f".0x{function:x}" if function else "")
