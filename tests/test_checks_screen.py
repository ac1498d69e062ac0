"""check_domain skips the screened rules (rule(screened=True), rule_about(..., screened=True)) where
checks.survey finds the domain and its interfaces written the usual way. A rule so skipped must have
had nothing to find: on every domain of testdata/ (and of libvirt's corpus, when it is there), and on
variants of them with the name, machine, memory, or an interface's type, MAC, target, model, MTU or
socket source changed to values near and past the rules' limits, the screen passes only where the
screened rules find nothing (and raise nothing)."""

import copy
from pathlib import Path

import pytest
from lxml import etree

from virtnet.conf import checks, iftypes, schema
from virtnet.conf.domain import Domain
from virtnet.conf.xmlmodel import freeze
from virtnet.conf.xmlparse import parse_bytes, parse_file
from virtnet.errors import VirtnetError

REPO = Path(__file__).resolve().parents[1]
CORPUS = (REPO / ".." / "shared" / "conformance" / "libvirt").resolve()
SCREENED = [func for func in checks.RULES if func.screened]


def _roots(with_interfaces=True):
    """(name, root) of every file that parses, is a <domain> (with an <interface>) and passes the grammar."""
    files = sorted((REPO / "testdata").rglob("*.xml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.rglob("*.xml"))
    for path in files:
        try:
            _, tree = parse_file(str(path))
            if tree.getroot().tag != "domain" or (with_interfaces and tree.find("devices/interface") is None):
                continue
            schema.validate(tree, str(path))
        except VirtnetError:
            continue
        yield path.name, tree.getroot()


ROOTS = list(_roots())

USUAL = """<domain type='qemu'><name>usual</name><memory>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='tap1' managed='no'/>
      <model type='e1000e'/><mtu size='1400'/></interface>
    <interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/><model type='rtl8139'/></interface>
    <interface type='udp'><mac address='52:54:00:00:00:03'/><source address='192.0.2.1' port='5558'>
      <local address='192.0.2.2' port='5557'/></source><model type='virtio'/></interface>
    <interface type='mcast'><mac address='52:54:00:00:00:04'/><source address='230.0.0.1' port='5558'/></interface>
    <interface type='vhostuser'><mac address='52:54:00:00:00:05'/>
      <source type='unix' path='/run/v.sock' mode='client'/><model type='virtio'/></interface>
    <interface type='direct'><source dev='eth0' mode='vepa'/></interface>
    <interface type='user'><target dev='vnet3'/></interface>
  </devices></domain>"""

# (child of <interface> or '' for the interface itself, attribute, values to try)
VARIANTS = (
    ("", "type", iftypes.names() + ("bogus", "", None)),
    ("mac", "address", ("52:54:00:00:00:02", "52:54:00:00:00:0A", "01:00:5e:00:00:01", "52:54:0:0:0:9",
                        "52:54:00:aB:cD:eF", "", "zz", " 52:54:00:00:00:09", None)),
    ("target", "dev", ("tap1", "tap2", "vnet0", "vnet%d", "macvtap4", "a/b", "x" * 16, "", ".", "tap 0", "tap%",
                       "tàp", None)),
    ("target", "managed", ("no", "yes", "maybe", "", None)),
    ("model", "type", ("virtio", "VIRTIO", "e1000", "a b", "", "virtio-transitional", "virtio\n", None)),
    ("mtu", "size", ("68", "67", "65535", "65536", " 1500 ", "1_500", "abc", "", None)),
    ("source", "port", ("0", "1", "65535", "65536", " 80", "x", "", None)),
    ("source", "address", ("::1", "224.0.0.1", "239.255.255.255", "240.0.0.1", "1.2.3.4", "224.00.0.1", "", None)),
    ("source", "dev", ("eth0", "eth%d", "a:b", "", None)),
    ("source/local", "port", ("0", "5557", "65536", None)),
    ("source/local", "address", ("192.0.2.2", "fe80::1", "", None)),
)


def _screened_findings(root):
    """What the screened rules find on the domain ROOT (an exception counts as a finding)."""
    domain = freeze(Domain(root))
    found = []
    for func in SCREENED:
        try:
            found += [(func.__name__, message) for _, message in func(domain)]
        except Exception as error:  # the screen must not vouch for what a rule cannot read
            found.append((func.__name__, repr(error)))
    return found


def _passes(root):
    return checks.survey(root)[1]


def _variant(root, position, path, attr, value):
    """A copy of ROOT with attribute ATTR of the element at PATH below its interface number POSITION
    set to VALUE (None: removed), the elements along PATH made where missing."""
    root = copy.deepcopy(root)
    node = root.findall("devices/interface")[position]
    for tag in filter(None, path.split("/")):
        node = node.find(tag) if node.find(tag) is not None else etree.SubElement(node, tag)
    if value is None:
        node.attrib.pop(attr, None)
    else:
        node.set(attr, value)
    return root


def test_the_usual_interfaces_pass():
    root = parse_bytes(USUAL.encode(), "usual.xml").getroot()
    assert _passes(root) and not _screened_findings(root)


@pytest.mark.parametrize("name, root", ROOTS, ids=[name for name, _ in ROOTS])
def test_the_screen_passes_only_where_the_rules_find_nothing(name, root):
    if _passes(root):
        assert not _screened_findings(root), name


@pytest.mark.parametrize("path, attr, values", VARIANTS, ids=[f"{p or 'interface'}@{a}" for p, a, _ in VARIANTS])
def test_variants_of_interfaces(path, attr, values):
    bases = [parse_bytes(USUAL.encode(), "usual.xml").getroot()] + [root for _, root in ROOTS[:40]]
    passed = 0
    for base in bases:
        for position in range(len(base.findall("devices/interface"))):
            for value in values:
                variant = _variant(base, position, path, attr, value)
                if _passes(variant):
                    passed += 1
                    assert not _screened_findings(variant), (path, attr, value, position)
    assert passed, "the screen passed no variant: the test exercises nothing"


def test_a_second_element_of_a_name_is_not_read():
    """The model reads the first <mac>, <target>, ... of an interface: so does the screen."""
    root = parse_bytes(USUAL.encode(), "usual.xml").getroot()
    for tag, attr, value in (("mac", "address", "01:00:5e:00:00:01"), ("target", "managed", "maybe"),
                             ("model", "type", "a b"), ("mtu", "size", "1")):
        variant = copy.deepcopy(root)
        etree.SubElement(variant.find("devices/interface"), tag).set(attr, value)
        assert _passes(variant) and not _screened_findings(variant), tag


def test_the_survey_names_every_element_below_devices():
    """survey's names, from slices and subtrees, are those of one walk of the whole <devices>."""
    commented = parse_bytes(USUAL.replace("<mac", "<!-- c --><?pi x?><mac").encode(), "c.xml").getroot()
    for name, root in list(_roots(with_interfaces=False)) + [("usual", commented)]:
        devices = root.find("devices")
        names = frozenset() if devices is None else frozenset(element.tag for element in devices.iter())
        assert checks.survey(root)[0] == names, name
    assert checks.survey(etree.fromstring("<domain><name>x</name></domain>")) == (frozenset(), True)


# (path below <domain>, attribute or None for the text, values to try)
DOMAIN_VARIANTS = (
    ("name", None, ("vm", "", " ", "a/b", ".vm", "vm.", " vm", "\n", None)),
    ("os/type", "machine", ("pc", "q35", "pc-q35-7.2", "pc q35", "", "pc/", "é", None)),
    ("memory", None, ("128", "1", "0", "-1", " 64 ", "1_0", "x", "", None)),
)


@pytest.mark.parametrize("path, attr, values", DOMAIN_VARIANTS, ids=[p for p, _, _ in DOMAIN_VARIANTS])
def test_variants_of_domains(path, attr, values):
    bases = [parse_bytes(USUAL.encode(), "usual.xml").getroot()] + [root for _, root in ROOTS[:40]]
    passed = 0
    for base in bases:
        for value in values:
            variant = copy.deepcopy(base)
            node = variant
            for tag in path.split("/"):
                node = node.find(tag) if node.find(tag) is not None else etree.SubElement(node, tag)
            if attr is None:
                node.text = value
            elif value is None:
                node.attrib.pop(attr, None)
            else:
                node.set(attr, value)
            if _passes(variant):
                passed += 1
                assert not _screened_findings(variant), (path, attr, value)
    assert passed, "the screen passed no variant: the test exercises nothing"
