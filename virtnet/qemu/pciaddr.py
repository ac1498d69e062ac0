"""Where a -device sits on the guest's PCI buses: the properties of its placement (conf.pci), the
same for every device virtnet renders (NICs, disks, controllers, virtio-serial, balloon, RNGs)."""

from virtnet.conf.pci import bus_name, placed, read_placement

# The suffix of QEMU's virtio PCI device for each virtio model (virtio-net-pci,
# virtio-balloon-pci-transitional, ...).
VIRTIO_PCI_SUFFIX = {"virtio": "", "virtio-transitional": "-transitional",
                     "virtio-non-transitional": "-non-transitional"}


def add_pci_address(props, domain, device):
    """Add bus, multifunction and addr (libvirt's order) to the device properties PROPS when the
    model object DEVICE has an <address type='pci'> (a part left out counts as 0); nothing otherwise."""
    placement = placed(domain, device.node) or _written_placement(device)
    if placement is None:
        return
    bus, slot, function, multifunction = placement
    props["bus"] = bus_name(domain, bus)
    if multifunction is not None:
        props["multifunction"] = multifunction
    props["addr"] = f"0x{slot:x}.0x{function:x}" if function else f"0x{slot:x}"


def _written_placement(device):
    """The placement DEVICE's <address type='pci'> gives, or None: for a device conf.pci did not
    place while preparing this model (see conf.pci.placed)."""
    node = address_element(device)
    if node is None or node.get("type") != "pci":
        return None
    return read_placement(node)


def address_element(device):
    """The <address> element of the model object DEVICE, or None. Read from the element, found in
    C: through the model each would cost a frozen object, its snapshot and first reads for these
    few values."""
    node = device.node
    # The grammar allows one <address> per device, and it comes last (libvirt's order: a live XML,
    # a hot-plugged NIC; conf.pci hands over the placements of a definition), or just before the
    # <alias> conf.identity appends: the last two children (one C call), last first, are looked at
    # before a tag-matching walk (several times the cost).
    for child in reversed(node[-2:]):
        if child.tag == "address":
            return child
    return next(node.iterchildren("address"), None)
