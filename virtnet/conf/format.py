"""Canonical XML output, formatted like libvirt's `dumpxml --inactive`.

Two-space indentation, single-quoted attributes, the children of <interface>, <disk> and
<controller> in libvirt's order and attributes of modelled elements in libvirt's order.
Everything else keeps its document order.
"""

from lxml import etree

from virtnet.conf.disk import Controller, Disk
from virtnet.conf.domain import Interface
from virtnet.conf.identity import is_generated_alias

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


def _escape(text, quote=True):
    # A carriage return (and, in attributes, a tab or newline) would be normalised away when the
    # output is read again: written as character references, the text survives a round trip.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    if quote:
        text = text.replace("'", "&apos;").replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")
    return text


def _qname(node, name):
    """Prefixed name for a Clark-notation name, using the node's in-scope prefixes."""
    if not name.startswith("{"):
        return name
    uri, local = name[1:].split("}", 1)
    for prefix, ns in node.nsmap.items():
        if ns == uri and prefix:
            return f"{prefix}:{local}"
    return local


def _attributes(node, device):
    items = list(node.attrib.items())
    order = ATTRIBUTE_ORDERS[device].get(node.tag) if device else None
    if order:
        rank = {name: i for i, name in enumerate(order)}
        items.sort(key=lambda kv: rank.get(kv[0], len(order)))
    parent_ns = node.getparent().nsmap if node.getparent() is not None else {}
    decls = [(p, u) for p, u in node.nsmap.items() if parent_ns.get(p) != u]
    out = [f" xmlns{':' + p if p else ''}='{_escape(u)}'" for p, u in decls]
    out += [f" {_qname(node, k)}='{_escape(v)}'" for k, v in items]
    return "".join(out)


def in_order(children, ranks):
    """CHILDREN sorted by RANKS ({tag: rank}; other tags after those, as they were): a comment
    travels with the element after it."""
    groups, pending = [], []
    for child in children:
        pending.append(child)
        if isinstance(child.tag, str):
            groups.append((ranks.get(child.tag, len(ranks)), pending))
            pending = []
    groups.sort(key=lambda g: g[0])
    return [c for _, group in groups for c in group] + pending


def _children(node, device):
    children = list(node)
    ranks = CHILD_RANKS.get(node.tag) if node.tag == device and _is_device(node) else None
    return children if ranks is None else in_order(children, ranks)  # a device's, in libvirt's order


def _has_mixed_content(node):
    """Text beside child elements (before the first or after any) must be kept exactly."""
    return len(node) and ((node.text or "").strip() or any((c.tail or "").strip() for c in node))


def _is_device(node):
    parent = node.getparent()
    return parent is not None and parent.tag == "devices"


def _write(node, depth, out, device=None, skip=frozenset()):
    if node in skip:
        return
    pad = "  " * depth
    if node.tag is etree.Comment:
        out.append(f"{pad}<!--{node.text}-->")
        return
    if node.tag is etree.PI:
        out.append(pad + etree.tostring(node, encoding="unicode").strip())
        return
    if device is None and node.tag in ATTRIBUTE_ORDERS and _is_device(node):
        device = node.tag
    name = _qname(node, node.tag)
    start = f"<{name}{_attributes(node, device)}"
    text = node.text or ""
    if _has_mixed_content(node):
        # Mixed content (text between elements) is kept exactly as written.
        out.append(pad + etree.tostring(node, encoding="unicode", with_tail=False))
        return
    children = [child for child in _children(node, device) if child not in skip]
    if not children:
        out.append(f"{pad}{start}>{_escape(text, quote=False)}</{name}>" if text else f"{pad}{start}/>")
        return
    out.append(f"{pad}{start}>")
    for child in children:
        _write(child, depth + 1, out, device, skip)
    out.append(f"{pad}</{name}>")


def format_domain(domain, live=False):
    """The canonical XML text of a Domain (ends with a newline). Inactive XML (the default: xml2xml,
    define) leaves out the aliases virtnet generated, as libvirt does; the live XML keeps them."""
    skip = set()
    if not live:
        skip = {a for a in domain.node.iterfind("devices/*/alias") if is_generated_alias(a.get("name", ""))}
    return document_text(domain.node, skip)


def document_text(root, skip=frozenset()):
    """ROOT written out canonically (two-space indentation, single quotes; ends with a newline),
    leaving out the elements in SKIP."""
    out = []
    _write(root, 0, out, skip=skip)
    return "\n".join(out) + "\n"
