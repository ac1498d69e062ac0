"""What libvirt fills in or normalises after parsing, done the same way by virtnet.

Unlike libvirt, generated values are deterministic (derived from the domain's uuid), so the same
input always gives the same canonical XML and argv — what golden tests and CI pipelines need.
"""

from lxml import etree

from virtnet.conf import disk, guest, ifname, mac, pci

DEFAULT_MODEL = "rtl8139"  # libvirt's choice for x86 guests when <model> is absent
# <driver> attributes that only mean something to virtio-net.
VIRTIO_DRIVER_ATTRS = ("txmode", "ioeventfd", "event_idx", "queues", "rx_queue_size", "tx_queue_size",
                       "rss", "rss_hash_report")
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


def _fill_macs(domain):
    interfaces = domain.interfaces
    # Each MAC read and normalised once (the model is not frozen here: a read walks the tree).
    written = [iface.mac for iface in interfaces]
    given = [mac.normal(value) if value and not mac.is_zero(value) else None for value in written]
    used = {value for value in given if value}
    for index, (iface, value) in enumerate(zip(interfaces, given)):
        if value:
            if value != written[index]:
                iface.mac = value
            continue
        new = mac.unused(domain.uuid, index, used)
        used.add(new)
        iface.mac = new


def _drop_generated_target(iface):
    dev = iface.target_dev
    if dev and not iface.unmanaged and ifname.is_generated(dev):
        # The whole <target> goes: managed='yes' is the default, and <target> without dev is invalid.
        iface.node.remove(iface.node.find("target"))


def _tidy_driver(iface, warnings):
    driver = iface.node.find("driver")
    if driver is None:
        return
    if driver.get("queues") == "1":
        del driver.attrib["queues"]  # one queue is the default; libvirt normalises it away
    if not iface.is_virtio:
        # libvirt parses <driver> only for virtio; for other models it vanishes (we say so).
        dropped = [a for a in ("name",) + VIRTIO_DRIVER_ATTRS if a in driver.attrib]
        for attr in dropped:
            del driver.attrib[attr]
        if dropped:
            warnings.append((driver.sourceline, f"<driver {' '.join(dropped)}> only applies to virtio "
                             f"models and was dropped for model '{iface.model}'"))
        backend = iface.node.find("backend")
        if backend is not None and backend.attrib.pop("vhost", None) is not None and not backend.attrib:
            iface.node.remove(backend)
    if not driver.attrib and not len(driver):
        iface.node.remove(driver)


def _drop_runtime_only(iface):
    """What libvirt leaves out of inactive XML: a network port's id, and coalescing that does nothing."""
    source = iface.node.find("source")
    if source is not None:
        source.attrib.pop("portid", None)
    coalesce = iface.node.find("coalesce")
    if coalesce is not None:
        for frames in coalesce.findall("rx/frames"):
            if frames.get("max") == "0":
                frames.getparent().remove(frames)
        for rx in coalesce.findall("rx"):
            if not len(rx) and not rx.attrib:
                coalesce.remove(rx)
        if not len(coalesce):
            iface.node.remove(coalesce)


def apply_defaults(domain):
    """Fill in and normalise the domain in place. Returns warnings as (line, message)."""
    warnings = []
    _ensure_uuid(domain)
    for iface in domain.interfaces:
        if iface.declared_type is None:
            iface.declared_type = "user"  # libvirt writes the default type out
        _drop_generated_target(iface)
        _drop_runtime_only(iface)
        if iface.model_raw is None:
            iface.model_raw = DEFAULT_MODEL
        elif iface.model != iface.model_raw:
            iface.model_raw = iface.model  # 'ViRtIo' → 'virtio'
        _tidy_driver(iface, warnings)
    _fill_macs(domain)
    guest.add_default_memballoon(domain)
    guest.add_virtio_serial_controllers(domain)
    disk.apply_defaults(domain)
    pci.assign_addresses(domain)  # every PCI device, normalised or given a slot
    guest.assign_virtio_serial_ports(domain)
    return warnings
