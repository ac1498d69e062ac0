"""A device on its own, as attach-device and detach-device take it (and attach-interface makes it):
checked as a device of the domain it goes into, by the same schema, rules and defaults as a whole
domain, with errors located in the device's own file."""

import copy

from lxml import etree

from virtnet.conf import xmlparse
from virtnet.conf import mac
from virtnet.conf.iftypes import SOCKET_TYPES
from virtnet.errors import XMLInputError

DEVICE_TAGS = ("interface",)  # the devices virtnet attaches and detaches


def parse_device(path):
    """(filename, element) of the device in file PATH ('-' for standard input)."""
    filename, tree = xmlparse.parse_file(path)
    return filename, device_element(tree.getroot(), filename)


def device_element(root, filename):
    if root.tag not in DEVICE_TAGS:
        raise XMLInputError(f"<{root.tag}> cannot be attached or detached by virtnet; it changes "
                            f"{' and '.join(f'<{t}>' for t in DEVICE_TAGS)} devices (edit the definition and restart "
                            "the domain for others)", file=filename, line=root.sourceline)
    return root


def checked_interface(element, filename, context, macs_in_use=()):
    """ELEMENT (an <interface>) checked as a device of the domain CONTEXT (its definition or its
    live model), with libvirt's defaults filled in: the model, and a MAC that neither CONTEXT's
    interfaces nor MACS_IN_USE have. Returns (a new element holding no alias and no PCI address
    that ELEMENT did not have, the warnings). Raises XMLInputError located in FILENAME."""
    from virtnet.conf.load import load_tree  # conf.load imports the whole pipeline

    scratch = copy.deepcopy(context.node)
    devices = scratch.find("devices")
    for child in list(devices):
        if child.tag != "emulator":
            devices.remove(child)
    devices.append(copy.deepcopy(element))  # copies keep their source lines, so errors point at FILENAME
    loaded = load_tree(etree.ElementTree(scratch), filename)
    checked = copy.deepcopy(loaded.domain.interfaces[0].node)
    for tag in ("alias", "address"):
        if element.find(tag) is None:
            for node in checked.findall(tag):
                checked.remove(node)
    if element.find("mac") is None:
        _new_mac(checked, context, macs_in_use)
    checked.tail = None
    return checked, loaded.warnings


def _new_mac(node, context, macs_in_use):
    """A generated MAC for a device added to CONTEXT: as defaults does for a whole domain, from the
    uuid and the device's position, and one that nothing in use has."""
    used = {mac.normal(i.mac) for i in context.interfaces if i.mac} | {mac.normal(m) for m in macs_in_use}
    node.find("mac").set("address", mac.unused(context.uuid, len(context.interfaces), used))


def matching_interfaces(domain, element):
    """The interfaces of DOMAIN that ELEMENT (an <interface> given to detach-device) names, as
    libvirt matches them: by MAC address, alias and PCI address, whichever ELEMENT has."""
    mac_node = element.find("mac")
    alias = element.find("alias")
    address = element.find("address")
    wanted_mac = _normal(mac_node.get("address", "")) if mac_node is not None else None
    found = []
    for iface in domain.interfaces:
        if wanted_mac is not None and _normal(iface.mac or "") != wanted_mac:
            continue
        if alias is not None and iface.alias != alias.get("name"):
            continue
        if address is not None and not _same_address(iface.node.find("address"), address):
            continue
        found.append(iface)
    return found


def _normal(text):
    return mac.normal(text) if mac.is_mac(text) else text.lower()


def _same_address(mine, wanted):
    from virtnet.conf.address import pci_number

    if mine is None or mine.get("type") != wanted.get("type", "pci"):
        return False
    try:
        return all(pci_number(mine.get(a, "0")) == pci_number(wanted.get(a, "0"))
                   for a in ("domain", "bus", "slot", "function"))
    except ValueError:
        return False


# attach-interface TYPE SOURCE: where SOURCE goes for each type (virsh's mapping, and virtnet's for
# the types virsh's attach-interface does not take).
SOURCE_OF_TYPE = {"bridge": "bridge", "network": "network", "direct": "dev", "vhostuser": "path"}
NO_SOURCE_TYPES = ("ethernet", "user")


def interface_from_options(iface_type, source=None, *, target=None, unmanaged=False, mac=None, model=None, mtu=None,
                           script=None, alias=None, source_mode=None):
    """The <interface> element attach-interface makes of its arguments (checked afterwards like
    any other: checked_interface). Raises UsageError for arguments that do not fit the type."""
    from virtnet.errors import UsageError

    if iface_type in NO_SOURCE_TYPES:
        if source is not None:
            raise UsageError(f"type '{iface_type}' takes no SOURCE (got '{source}')" + (
                "; name its tap with --target" if iface_type == "ethernet" else ""))
    elif source is None:
        raise UsageError(f"type '{iface_type}' needs a SOURCE: "
                         + ("ADDRESS:PORT" if iface_type in SOCKET_TYPES else f"its {SOURCE_OF_TYPE[iface_type]}"))
    if unmanaged and (iface_type != "ethernet" or not target):
        raise UsageError("--unmanaged is for type 'ethernet' with --target: a tap that exists already")
    node = etree.Element("interface", type=iface_type)
    if mac is not None:
        etree.SubElement(node, "mac", address=mac)
    if iface_type in SOCKET_TYPES:
        address, _, port = source.rpartition(":")
        if not port.isdigit():
            raise UsageError(f"SOURCE '{source}' of type '{iface_type}' is not ADDRESS:PORT (e.g. 127.0.0.1:5558)")
        attributes = {"address": address, "port": port} if address else {"port": port}
        etree.SubElement(node, "source", attributes)
    elif iface_type == "vhostuser":
        etree.SubElement(node, "source", type="unix", path=source, mode=source_mode or "client")
    elif source is not None:
        attributes = {SOURCE_OF_TYPE[iface_type]: source}
        if iface_type == "direct":
            attributes["mode"] = source_mode or "vepa"
        etree.SubElement(node, "source", attributes)
    if script is not None:
        etree.SubElement(node, "script", path=script)
    if target is not None:
        etree.SubElement(node, "target", {"dev": target, **({"managed": "no"} if unmanaged else {})})
    if model is not None:
        etree.SubElement(node, "model", type=model)
    if mtu is not None:
        etree.SubElement(node, "mtu", size=str(mtu))
    if alias is not None:
        etree.SubElement(node, "alias", name=alias)
    return node
