"""A network definition's pipeline: read → hardened parse → RelaxNG (network.rng) → model → rules →
libvirt's defaults, as virtnet.conf.load does for domains."""

import uuid as uuidlib

from lxml import etree

from virtnet.conf import schema, xmlparse
from virtnet.conf.mac import normal
from virtnet.errors import XMLInputError
from virtnet.network import checks
from virtnet.network.model import Network

START_FILE = "network.rng"


class LoadedNetwork:
    def __init__(self, network, filename, uuid_generated=False):
        self.network = network
        self.filename = filename
        self.uuid_generated = uuid_generated  # no <uuid> given: an update keeps the stored one


def _set_first(node, name, value):
    """Set attribute NAME and put it first among NODE's attributes (libvirt writes forward's dev
    before its mode)."""
    items = [(k, v) for k, v in node.attrib.items() if k != name]
    node.attrib.clear()
    node.set(name, value)
    for key, old in items:
        node.set(key, old)


def apply_defaults(network):
    """What libvirt's parser fills in or normalises, so that the canonical XML is libvirt's. Returns
    True when the uuid was generated."""
    root = network.node
    generated = network.uuid is None
    if root.get("ipv6") == "no":  # the default; libvirt writes only ipv6='yes'
        del root.attrib["ipv6"]
    if network.uuid is None:
        etree.SubElement(root, "uuid").text = str(uuidlib.uuid4())
    else:
        network.uuid = str(uuidlib.UUID(network.uuid.strip()))
    forward = network.forward
    if forward is not None:
        if forward.mode_attr is None:
            forward.mode_attr = "nat"
        devs = [i.dev for i in forward.interfaces]
        if forward.dev and not devs:
            etree.SubElement(forward.node, "interface").set("dev", forward.dev)
        elif devs and not forward.dev:
            _set_first(forward.node, "dev", devs[0])
    if network.own_bridge:
        bridge = root.find("bridge")
        if bridge is None:
            bridge = etree.SubElement(root, "bridge")
        if bridge.get("stp") is None:
            bridge.set("stp", "on")
        if bridge.get("delay") is None:
            bridge.set("delay", "0")
    if network.mac:
        network.mac = normal(network.mac)
    for ip in network.ips:
        if ip.dhcp is not None:
            for host in ip.dhcp.hosts:
                if host.mac:
                    host.mac = normal(host.mac)
    return generated


def load_tree(tree, filename):
    schema.validate(tree, filename, START_FILE)
    network = Network(tree.getroot())
    try:
        checks.check_network(network)
        generated = apply_defaults(network)
    except XMLInputError as e:
        raise e.located(filename) from None
    return LoadedNetwork(network, filename, generated)


def load_file(path):
    """Load and check a network file ('-' for standard input)."""
    filename, tree = xmlparse.parse_file(path)
    return load_tree(tree, filename)


def load_text(text, filename="<string>"):
    return load_tree(xmlparse.parse_bytes(text.encode(), filename), filename)
