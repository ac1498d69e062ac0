"""A network's canonical XML, as libvirt's `net-dumpxml` writes it: <network>'s children in
libvirt's order, attributes of each element in libvirt's order, two-space indentation and
single quotes (conf.xmlwrite)."""

from virtnet.conf.xmlwrite import document_text, in_order
from virtnet.network.model import Network

# Attribute order per element (virNetworkDefFormatBuf and its helpers); others keep theirs.
ATTRIBUTE_ORDER = {
    "network": ["ipv6", "trustGuestRxFilters"],
    "forward": ["dev", "mode"],
    "bridge": ["name", "zone", "stp", "delay", "macTableManager"],
    "domain": ["name", "localOnly", "register"],
    "dns": ["enable", "forwardPlainNames"],
    "forwarder": ["domain", "addr"],
    "srv": ["service", "protocol", "domain", "target", "port", "priority", "weight"],
    "ip": ["family", "address", "netmask", "prefix", "localPtr"],
    "range": ["start", "end"],
    "host": ["mac", "id", "name", "ip"],
    "bootp": ["file", "server"],
    "route": ["family", "address", "netmask", "prefix", "gateway", "metric"],
    "lease": ["expiry", "unit"],
    "inbound": ["average", "peak", "floor", "burst"],
    "outbound": ["average", "peak", "floor", "burst"],
}
# Child order per element; children of other elements keep theirs.
CHILD_ORDER = {
    "network": Network.CHILD_ORDER,
    "forward": ("nat", "interface"),
    "dns": ("forwarder", "txt", "srv", "host"),
    "ip": ("tftp", "dhcp"),
    "dhcp": ("range", "host", "bootp"),
    "bandwidth": ("inbound", "outbound"),
}


def _sorted_attributes(node):
    order = ATTRIBUTE_ORDER.get(node.tag)
    if not order or len(node.attrib) < 2:
        return
    rank = {name: i for i, name in enumerate(order)}
    items = sorted(node.attrib.items(), key=lambda kv: rank.get(kv[0], len(order)))
    node.attrib.clear()
    for key, value in items:
        node.set(key, value)


def _sorted_children(node):
    order = CHILD_ORDER.get(node.tag)
    if not order:
        return
    for child in in_order(list(node), {tag: i for i, tag in enumerate(order)}):
        node.append(child)  # moves it to the end, in the new order


def canonicalize(network):
    """Put NETWORK's tree in libvirt's order, in place (metadata keeps its own)."""
    for node in network.node.iter():
        if not isinstance(node.tag, str) or any(a.tag == "metadata" for a in node.iterancestors()):
            continue
        _sorted_attributes(node)
        _sorted_children(node)


def format_network(network):
    """The canonical XML text of a Network (ends with a newline)."""
    canonicalize(network)
    return document_text(network.node)
