"""Guest PCI addresses for NICs: honour explicit ones, assign the rest like libvirt does."""

from lxml import etree

from virtnet.conf.domain import pci_number
from virtnet.errors import XMLInputError

FIRST_FREE_SLOT = 2  # slot 0 is the host bridge, slot 1 the PIIX3/ICH chipset functions
LAST_SLOT = 31
Q35_RESERVED = {0x1F}  # ICH9 LPC/SATA/SMBus on q35


def root_bus_name(domain):
    return "pcie.0" if domain.is_q35 else "pci.0"


def explicit_pci_slots(domain):
    """Slots on bus 0 taken by any device with an explicit PCI address (modelled or not)."""
    taken = set()
    for tag, addr in domain.pci_addresses:
        try:
            bus, slot = pci_number(addr.get("bus", "0")), pci_number(addr.get("slot", "0"))
        except ValueError:
            # Devices virtnet does not model are not schema-checked: say where the bad value is.
            raise XMLInputError(
                f"<{tag}>: <address type='pci' bus='{addr.get('bus')}' slot='{addr.get('slot')}'> "
                "is not a PCI address; use hexadecimal (0x1f) or decimal numbers", line=addr.sourceline) from None
        if bus == 0:
            taken.add(slot)
    return taken


def assign_addresses(domain):
    """Give every interface without an <address> the lowest free slot, in document order."""
    taken = explicit_pci_slots(domain)
    if domain.is_q35:
        taken |= Q35_RESERVED
    slot = FIRST_FREE_SLOT
    for iface in domain.interfaces:
        if iface.address is not None:
            continue
        while slot in taken:
            slot += 1
        if slot > LAST_SLOT:
            raise XMLInputError(
                f"<interface>: no free PCI slot left on bus 0 (slots {FIRST_FREE_SLOT}..{LAST_SLOT} "
                "are taken); give some devices explicit <address type='pci' bus=...> on another bus",
                line=iface.line,
            )
        taken.add(slot)
        etree.SubElement(
            iface.node,
            "address",
            {"type": "pci", "domain": "0x0000", "bus": "0x00", "slot": f"0x{slot:02x}", "function": "0x0"},
        )


def normalize(address):
    """Write an explicit PCI address the way libvirt formats it (hex, fixed widths)."""
    if address.type != "pci":
        return
    node = address.node
    for attr, width in (("domain", 4), ("bus", 2), ("slot", 2)):
        node.set(attr, f"0x{pci_number(node.get(attr, '0')):0{width}x}")
    node.set("function", f"0x{pci_number(node.get('function', '0')):x}")
