"""A device's <address>, of any type (pci, drive, virtio-serial): one model class for all devices."""

from virtnet.conf.xmlmodel import Prop, XMLObject


def pci_number(value):
    """An address part as libvirt reads it: hexadecimal with 0x, decimal otherwise ('09' is 9)."""
    text = value.strip().lower()
    return int(text, 16) if text.startswith("0x") else int(text, 10)


class Address(XMLObject):
    """type='pci' (domain, bus, slot, function), type='drive' (controller, bus, target, unit) or
    type='virtio-serial' (controller, bus, port)."""

    type = Prop("@type")
    domain = Prop("@domain", pci_number)
    bus = Prop("@bus", pci_number)
    slot = Prop("@slot", pci_number)
    function = Prop("@function", pci_number)
    multifunction = Prop("@multifunction")
    controller = Prop("@controller", pci_number)
    target = Prop("@target", pci_number)
    unit = Prop("@unit", pci_number)
    port = Prop("@port", pci_number)

    def key(self):
        return (self.domain or 0, self.bus or 0, self.slot or 0, self.function or 0)

    def drive_key(self):
        return (self.controller or 0, self.bus or 0, self.target or 0, self.unit or 0)
