"""What libvirt fills in or normalises after parsing, done the same way by virtnet.

Unlike libvirt, generated values are deterministic (derived from the domain's uuid), so the same
input always gives the same canonical XML and argv — what golden tests and CI pipelines need.
"""

from lxml import etree

from virtnet.conf import disk, guest, identity, ifname, iftypes, mac, pci
from virtnet.conf.domain import model_name
from virtnet.conf.guest import VIRTIO_MODELS

DEFAULT_MODEL = "rtl8139"  # libvirt's choice for x86 guests when <model> is absent
# <driver> attributes that only mean something to virtio-net.
VIRTIO_DRIVER_ATTRS = ("txmode", "ioeventfd", "event_idx", "queues", "rx_queue_size", "tx_queue_size",
                       "rss", "rss_hash_report")
SERIAL_PORT_USERS = frozenset(("channel", "console"))  # devices that may need a virtio-serial controller
# The devices disk.apply_defaults normalises: storage, and the controllers added for the above.
DISK_STEP_DEVICES = disk.STORAGE_DEVICES | SERIAL_PORT_USERS
UUID_NAMESPACE = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"  # the RFC 4122 URL namespace


def _ensure_uuid(domain):
    if domain.uuid is None:
        import uuid  # only for a domain without one: the module costs a conversion ~10% of its start-up

        value = str(uuid.uuid5(uuid.UUID(UUID_NAMESPACE), f"virtnet:{domain.name}"))
        name = domain.node.find("name")
        node = etree.Element("uuid")
        node.text = value
        name.addnext(node)
        node.tail = name.tail


def _normalize_mac(iface, node):
    """Write the interface's MAC (NODE: its <mac>) in normal form. Returns it, or None when there
    is none to keep: absent, or the all-zero one (both get a generated MAC, see _fill_macs)."""
    written = node.get("address") if node is not None else None
    if not written:
        return None
    value = mac.normal(written)
    if value == mac.ZERO:
        return None
    if value != written:
        iface.mac = value
    return value


def _fill_macs(domain, nics):
    """A generated MAC for each interface without one to keep (NICS: their identity.NicRead, by
    position; guest_mac None), written in the NicRead too."""
    used = {nic.guest_mac for nic in nics if nic.guest_mac}
    for index, (iface, nic) in enumerate(zip(domain.interfaces, nics)):
        if nic.guest_mac is None:
            new = mac.unused(domain.uuid, index, used)
            used.add(new)
            iface.mac = nic.guest_mac = new


def _target_dev(iface, target):
    """The <target dev> of the interface (TARGET: its <target>), once a generated name is dropped
    (it would not be the tap's name at start)."""
    dev = target.get("dev")
    if dev and target.get("managed") != "no" and ifname.is_generated(dev):
        # The whole <target> goes: managed='yes' is the default, and <target> without dev is invalid.
        iface.node.remove(target)
        return None
    return dev


def _normalize_model(iface, node):
    """Write the model out as libvirt does (its default when absent); returns the model name."""
    raw = node.get("type") if node is not None else None
    if raw is None:
        iface.model_raw = DEFAULT_MODEL
        return DEFAULT_MODEL
    model = model_name(raw)
    if model != raw:
        iface.model_raw = model  # 'ViRtIo' → 'virtio'
    return model


def _tidy_driver(iface, driver, backend, model, warnings):
    if driver.get("queues") == "1":
        del driver.attrib["queues"]  # one queue is the default; libvirt normalises it away
    if model not in VIRTIO_MODELS:
        # libvirt parses <driver> only for virtio; for other models it vanishes (we say so).
        dropped = [a for a in ("name",) + VIRTIO_DRIVER_ATTRS if a in driver.attrib]
        for attr in dropped:
            del driver.attrib[attr]
        if dropped:
            warnings.append((driver.sourceline, f"<driver {' '.join(dropped)}> only applies to virtio "
                             f"models and was dropped for model '{model}'"))
        if backend is not None and backend.attrib.pop("vhost", None) is not None and not backend.attrib:
            iface.node.remove(backend)
    if not driver.attrib and not len(driver):
        iface.node.remove(driver)


def _drop_runtime_only(iface, network_source, coalesce):
    """What libvirt leaves out of inactive XML: a network port's id (NETWORK_SOURCE: the <source>
    of a type='network' interface, the only one the grammar gives a portid), and coalescing that
    does nothing."""
    if network_source is not None:
        network_source.attrib.pop("portid", None)
    if coalesce is not None:
        for frames in coalesce.findall("rx/frames"):
            if frames.get("max") == "0":
                frames.getparent().remove(frames)
        for rx in coalesce.findall("rx"):
            if not len(rx) and not rx.attrib:
                coalesce.remove(rx)
        if not len(coalesce):
            iface.node.remove(coalesce)


def _interface_defaults(iface, warnings, children=None):
    """Normalise one interface in place; returns the identity.NicRead of what is read here. Each
    child element is looked up once (CHILDREN: Interface.first_children, unless the checks' walk
    saw them), and a step is called only for an interface that has its element: most have no
    <target>, <driver> or <coalesce>."""
    if children is None:
        children = iface.first_children()
    iftype = iface.node.get("type")  # (as iface.declared_type: the model is not frozen here)
    if iftype is None:
        iftype = iface.declared_type = iftypes.DEFAULT_TYPE  # libvirt writes the default type out
    target = children.get("target")
    dev = _target_dev(iface, target) if target is not None else None
    network_source = children.get("source") if iftype == "network" else None
    coalesce = children.get("coalesce")
    if coalesce is not None or network_source is not None:
        _drop_runtime_only(iface, network_source, coalesce)
    model = _normalize_model(iface, children.get("model"))
    driver = children.get("driver")
    if driver is not None:
        _tidy_driver(iface, driver, children.get("backend"), model, warnings)
    return identity.NicRead(iftype, children.get("alias"), _normalize_mac(iface, children.get("mac")), dev)


def apply_defaults(domain, interface_children=None):
    """Fill in and normalise the domain in place. Returns (warnings, nics, index): the warnings
    as (line, message); for each interface the identity.NicRead of what is read here, and the
    guest.device_index of <devices> once every device is added: both handed on to
    identity.prepare rather than read again. INTERFACE_CHILDREN: what checks.check_domain saw of
    the interfaces, likewise not read again."""
    warnings = []
    _ensure_uuid(domain)
    seen = interface_children or {}
    nics = [_interface_defaults(iface, warnings, seen.get(iface.node)) for iface in domain.interfaces]
    if None in [nic.guest_mac for nic in nics]:
        _fill_macs(domain, nics)
    # The devices by tag, from one look at <devices>: most domains have none of those the
    # virtio-serial and disk steps are about, and those would look through the model.
    devices = guest.devices_element(domain)
    index = guest.device_index(devices)
    guest.add_default_memballoon(devices, index)
    if not guest.CHARDEV_TAGS.isdisjoint(index):
        guest.drop_pty_paths(index)
    if not SERIAL_PORT_USERS.isdisjoint(index):
        guest.add_virtio_serial_controllers(domain)
    if not DISK_STEP_DEVICES.isdisjoint(index):
        disk.apply_defaults(domain)
        # Those steps add controllers and reorder disks, and so may the virtio-serial step above
        # (DISK_STEP_DEVICES holds SERIAL_PORT_USERS): the index is made again after them all.
        index = guest.device_index(devices)
    pci.assign_addresses(domain, index)  # every PCI device, normalised or given a slot
    if "channel" in index:
        guest.assign_virtio_serial_ports(domain)
    return warnings, nics, index
