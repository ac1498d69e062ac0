"""Canonical XML output, formatted like libvirt's `dumpxml --inactive`.

Two-space indentation, single-quoted attributes, the children of <interface>, <disk> and
<controller> in libvirt's order and attributes of modelled elements in libvirt's order.
Everything else keeps its document order.
"""

from virtnet.conf.disk import Controller, Disk
from virtnet.conf.domain import Interface
from virtnet.conf.identity import is_generated_alias
from virtnet.conf.xmlwrite import DeviceOrder, document_text

# The devices whose children are put in libvirt's order: tag -> {child tag: rank}.
CHILD_RANKS = {cls.tag: {tag: i for i, tag in enumerate(cls.CHILD_ORDER)} for cls in (Interface, Disk, Controller)}

# Attribute order for elements inside <interface> (unlisted attributes follow, in document order).
ATTRIBUTE_ORDER = {
    "interface": ["type", "trustGuestRxFilters"],
    "mac": ["address", "type", "check"],
    "source": ["type", "network", "portgroup", "portid", "bridge", "dev", "path", "mode", "address", "port"],
    "target": ["dev", "managed"],
    "driver": ["name", "txmode", "ioeventfd", "event_idx", "queues", "rx_queue_size", "tx_queue_size",
               "rss", "rss_hash_report"],
    "address": ["type", "domain", "bus", "slot", "function", "multifunction"],
    "ip": ["address", "family", "prefix", "peer"],
    "route": ["family", "address", "prefix", "gateway", "metric"],
    "portForward": ["proto", "address", "dev"],
    "range": ["start", "end", "to", "exclude"],
    "rom": ["bar", "file", "enabled"],
    "backend": ["type", "logFile", "tap", "vhost"],
}
# ... inside <disk> (virDomainDiskDefFormat and its helpers).
DISK_ATTRIBUTE_ORDER = {
    "disk": ["type", "device", "model", "rawio", "sgio", "snapshot"],
    "driver": ["name", "type", "cache", "error_policy", "rerror_policy", "io", "ioeventfd", "event_idx",
               "copy_on_read", "discard", "iothread", "detect_zeroes", "discard_no_unref", "queues", "queue_size"],
    "source": ["file", "dev", "dir", "protocol", "name", "pool", "volume", "mode", "query", "tls", "index",
               "startupPolicy"],
    "target": ["dev", "bus", "tray", "removable", "rotation_rate"],
    # PCI: type, domain, bus, slot, function, multifunction; drive: type, controller, bus, target, unit.
    "address": ["type", "domain", "controller", "bus", "slot", "target", "unit", "function", "multifunction"],
    "boot": ["order", "loadparm"],
}
# ... inside <controller> (virDomainControllerDefFormat).
CONTROLLER_ATTRIBUTE_ORDER = {
    "controller": ["type", "index", "model", "ports", "vectors", "maxGrantFrames", "maxEventChannels"],
    "target": ["chassisNr", "chassis", "port", "busNr", "hotplug", "index", "memReserve"],
    "driver": ["queues", "cmd_per_lun", "max_sectors", "ioeventfd", "iothread"],
    "address": ["type", "domain", "bus", "slot", "function", "multifunction"],
}
ATTRIBUTE_ORDERS = {"interface": ATTRIBUTE_ORDER, "disk": DISK_ATTRIBUTE_ORDER, "controller": CONTROLLER_ATTRIBUTE_ORDER}
DOMAIN_DEVICES = DeviceOrder(CHILD_RANKS, ATTRIBUTE_ORDERS)


def format_domain(domain, live=False):
    """The canonical XML text of a Domain (ends with a newline). Inactive XML (the default: xml2xml,
    define) leaves out the aliases virtnet generated, as libvirt does; the live XML keeps them."""
    skip = set()
    if not live:
        skip = {a for a in domain.node.iterfind("devices/*/alias") if is_generated_alias(a.get("name", ""))}
    return document_text(domain.node, skip, DOMAIN_DEVICES)
