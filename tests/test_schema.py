"""virtnet's RelaxNG grammar (schemas/) and the plain-words explanation of what it refuses.

Real lxml/libxml2 RelaxNG throughout. Refused documents mark the line the error must
point at with the comment <!--!--> (comments are invisible to the grammar).
"""

import random
import shutil
from pathlib import Path

import pytest
from lxml import etree

from virtnet.conf import schema
from virtnet.errors import VirtnetError, XMLInputError

REPO = Path(__file__).resolve().parents[1]
CORPUS = (REPO / ".." / "shared" / "conformance" / "libvirt").resolve()
MARK = "<!--!-->"
SUPPORTED_TYPES = "ethernet, bridge, network, direct, user, vhostuser, server, client, mcast, udp"

# libvirt corpus cases virtnet refuses on purpose: case -> (message part, XPath of the element blamed).
UNSUPPORTED_TYPE = "//interface[@type='hostdev' or @type='vdpa']"
REFUSED_CASES = {
    "net-hostdev": ("<interface>: type 'hostdev' is not supported", UNSUPPORTED_TYPE),
    "net-hostdev-bootorder": ("<interface>: type 'hostdev' is not supported", UNSUPPORTED_TYPE),
    "net-hostdev-fail": ("<interface>: type 'hostdev' is not supported", UNSUPPORTED_TYPE),
    "net-hostdev-multidomain": ("<interface>: type 'hostdev' is not supported", UNSUPPORTED_TYPE),
    "net-hostdev-vfio": ("<interface>: type 'hostdev' is not supported", UNSUPPORTED_TYPE),
    "net-hostdev-vfio-multidomain": ("<interface>: type 'hostdev' is not supported", UNSUPPORTED_TYPE),
    "net-virtio-teaming": ("<interface>: type 'hostdev' is not supported", UNSUPPORTED_TYPE),
    "net-vdpa": ("<interface>: type 'vdpa' is not supported", UNSUPPORTED_TYPE),
    "net-vdpa-multiqueue": ("<interface>: type 'vdpa' is not supported", UNSUPPORTED_TYPE),
    # libvirt refuses it too, at parse time ("Expected non-negative integer value").
    "vhost_queues-invalid": ("<driver> queues='-5' is not valid; expected a positive integer", "//driver"),
}


def case_name(path):
    return path.name.split(".")[0]


def corpus_files(accepted_only=False):
    if not CORPUS.is_dir():
        reason = f"libvirt conformance corpus not found at {CORPUS}"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="corpus-absent")]
    files = sorted(CORPUS.glob("xml2argv/*.xml")) + sorted(CORPUS.glob("xml2xml/*.xml"))
    files += sorted(CORPUS.glob("ref/newer-variants/*.xml"))
    if accepted_only:
        files = [path for path in files if case_name(path) not in REFUSED_CASES]
    return [pytest.param(path, id=str(path.relative_to(CORPUS))) for path in files]


def parse(text):
    return etree.fromstring(text.encode()).getroottree()


def domain(devices="", top=""):
    """A small valid domain; `devices` goes inside <devices>, `top` directly inside <domain>."""
    return f"""<domain type='kvm'>
  <name>guest</name>
  <memory unit='MiB'>256</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>{top}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}
  </devices>
</domain>
"""


def marked_line(text):
    lines = [number for number, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, "a refused test document marks exactly one line"
    return lines[0]


def refusal(text):
    with pytest.raises(XMLInputError) as caught:
        schema.validate(parse(text), "dom.xml")
    return caught.value


# ---------------------------------------------------------------- libvirt's corpus


@pytest.mark.parametrize("path", corpus_files())
def test_corpus_document(path):
    tree = etree.parse(str(path))
    refused = REFUSED_CASES.get(case_name(path))
    if refused is None:
        schema.validate(tree, path.name)
        assert schema.diagnose(tree) is None, "the explanation walk must agree with libxml2"
        return
    words, blamed = refused
    with pytest.raises(XMLInputError) as caught:
        schema.validate(tree, path.name)
    assert words in caught.value.message
    assert caught.value.line == tree.xpath(blamed)[0].sourceline


@pytest.mark.parametrize("path", corpus_files(accepted_only=True))
def test_corpus_document_in_any_order(path):
    """Children may come in any order: shuffle <domain>, <devices> and every <interface>."""
    tree = etree.parse(str(path))
    shuffle = random.Random(path.name).shuffle
    root = tree.getroot()
    for parent in [root, *root.findall("devices"), *root.findall("devices/interface")]:
        children = list(parent)
        shuffle(children)
        parent[:] = children
    relaxng = schema.schema()
    assert relaxng.validate(tree), str(relaxng.error_log)


# ---------------------------------------------------------------- refused documents

REFUSED = [
    # (id, document, words the message must contain)
    ("unknown-top-level-element",
     domain(top=f"\n  <devicez/> {MARK}"),
     ["<domain>: unknown element <devicez>", "did you mean <devices>?"]),
    ("unknown-device",
     domain(f"\n    <frobnicator/> {MARK}"),
     ["<devices>: unknown element <frobnicator>"]),
    ("misspelt-device",
     domain(f"\n    <interfac type='user'/> {MARK}"),
     ["unknown element <interfac>", "did you mean <interface>?"]),
    ("misspelt-element-inside-a-device",
     domain(f"\n    <interface type='user'>\n      <modle type='virtio'/> {MARK}\n    </interface>"),
     ["<interface type='user'>: unknown element <modle> (did you mean <model>?)"]),
    ("misspelt-element-below-a-device",
     domain(f"\n    <interface type='udp'>\n      <source address='192.0.2.1' port='5558'>\n"
            f"        <locl address='192.0.2.2' port='5557'/> {MARK}\n      </source>\n    </interface>"),
     ["<interface type='udp'>: unknown element <locl> in <source> (did you mean <local>?)"]),
    ("misspelt-attribute",
     domain(f"\n    <interface type='user'>\n      <model typ='virtio'/> {MARK}\n    </interface>"),
     ["<interface type='user'>: unexpected attribute 'typ' on <model> (did you mean 'type'?); allowed: type"]),
    ("interface-outside-devices",
     domain(top=f"\n  <interface type='user'/> {MARK}"),
     ["<domain>: unexpected element <interface>; it belongs inside <devices>"]),
    ("missing-bridge-attribute",
     domain(f"\n    <interface type='bridge'>\n      <source/> {MARK}\n    </interface>"),
     ["<interface type='bridge'>: <source> needs the attribute 'bridge' (the host bridge to attach to)"]),
    ("bridge-without-source",
     domain(f"\n    <interface type='bridge'> {MARK}\n      <model type='virtio'/>\n    </interface>"),
     ["<interface type='bridge'>: the element <source> is missing", "<source bridge='br0'/>"]),
    ("network-without-source",
     domain(f"\n    <interface type='network'> {MARK}\n    </interface>"),
     ["<interface type='network'>: the element <source> is missing", "<source network='default'/>"]),
    ("wrong-source-for-ethernet",
     domain(f"\n    <interface type='ethernet'>\n      <source bridge='br0'/> {MARK}\n    </interface>"),
     ["<interface type='ethernet'>: unexpected attribute 'bridge' on <source>; it takes no attributes"]),
    ("wrong-source-for-user",
     domain(f"\n    <interface type='user'>\n      <source network='default'/> {MARK}\n    </interface>"),
     ["<interface type='user'>: unexpected attribute 'network' on <source>; allowed: dev"]),
    ("host-ip-on-bridge-source",
     domain(f"\n    <interface type='bridge'>\n      <source bridge='br0'>\n"
            f"        <ip address='192.0.2.1'/> {MARK}\n      </source>\n    </interface>"),
     ["<interface type='bridge'>: unexpected element <ip> in <source>; no child elements are allowed there"]),
    ("local-outside-source",
     domain(f"\n    <interface type='udp'>\n      <source address='192.0.2.1' port='5558'>\n"
            f"        <local address='192.0.2.2' port='5557'/>\n      </source>\n"
            f"      <local address='192.0.2.2' port='5557'/> {MARK}\n    </interface>"),
     ["<interface type='udp'>: unexpected element <local>; it belongs inside <source>"]),
    ("hostdev-type",
     domain(f"\n    <interface type='hostdev' managed='yes'> {MARK}\n      <source/>\n    </interface>"),
     [f"<interface>: type 'hostdev' is not supported; accepted: {SUPPORTED_TYPES}"]),
    ("vds-type",
     domain(f"\n    <interface type='vds'/> {MARK}"),
     ["<interface>: type 'vds' is not supported"]),
    ("udp-without-local",
     domain(f"\n    <interface type='udp'>\n      <source address='192.0.2.1' port='5558'/> {MARK}\n"
            "    </interface>"),
     ["<interface type='udp'>: <source> needs the element <local>", "<local address="]),
    ("vhostuser-source-without-mode",
     domain(f"\n    <interface type='vhostuser'>\n      <source type='unix' path='/run/v.sock'/> {MARK}\n"
            "      <model type='virtio'/>\n    </interface>"),
     ["<interface type='vhostuser'>: <source> needs the attribute 'mode'", "accepted: server, client"]),
    ("vhostuser-tcp-socket",
     domain(f"\n    <interface type='vhostuser'>\n"
            f"      <source type='tcp' path='/run/v.sock' mode='client'/> {MARK}\n    </interface>"),
     ["<source> type='tcp' is not valid; accepted: unix"]),
    ("text-inside-interface",
     domain(f"\n    <interface type='user'>\n      hello {MARK}\n      <model type='virtio'/>\n"
            "    </interface>"),
     ["<interface type='user'>: unexpected text 'hello'"]),
    ("text-inside-mac",
     domain(f"\n    <interface type='user'>\n      <mac address='52:54:00:00:00:01'>oops</mac> {MARK}\n"
            "    </interface>"),
     ["unexpected text 'oops' in <mac>"]),
    ("text-inside-domain",
     domain(top=f"\n  stray words {MARK}"),
     ["<domain>: unexpected text 'stray words'"]),
    ("unexpected-element-in-interface",
     domain(f"\n    <interface type='ethernet'>\n      <foo/> {MARK}\n    </interface>"),
     ["<interface type='ethernet'>: unexpected element <foo>; allowed here: source, mac, target, model,"]),
    ("second-mac",
     domain("\n    <interface type='user'>\n      <mac address='52:54:00:00:00:01'/>\n"
            f"      <mac address='52:54:00:00:00:02'/> {MARK}\n    </interface>"),
     ["<interface type='user'>: element <mac> may appear only once"]),
    ("unexpected-interface-attribute",
     domain(f"\n    <interface type='user' bogus='1'/> {MARK}"),
     ["<interface type='user'>: unexpected attribute 'bogus'; allowed: trustGuestRxFilters, type"]),
    ("target-without-dev",
     domain(f"\n    <interface type='ethernet'>\n      <target managed='no'/> {MARK}\n    </interface>"),
     ["<target> needs the attribute 'dev'"]),
    ("direct-mode",
     domain(f"\n    <interface type='direct'>\n      <source dev='eth0' mode='sideways'/> {MARK}\n"
            "    </interface>"),
     ["<source> mode='sideways' is not valid; accepted: vepa, bridge, private, passthrough"]),
    ("value-with-braces-and-quotes",
     domain(f"\n    <interface type='direct'>\n      <source dev='eth0' mode=\"{{path}}'\"/> {MARK}\n"
            "    </interface>"),
     ["<source> mode='{path}'' is not valid"]),
    ("zero-queues",
     domain(f"\n    <interface type='user'>\n      <driver queues='0'/> {MARK}\n    </interface>"),
     ["<driver> queues='0' is not valid; expected a positive integer"]),
    ("host-offload-value",
     domain(f"\n    <interface type='user'>\n      <driver>\n        <host csum='maybe'/> {MARK}\n"
            "      </driver>\n    </interface>"),
     ["<driver><host> csum='maybe' is not valid; accepted: on, off"]),
    ("address-type",
     domain(f"\n    <interface type='user'>\n      <address type='isa'/> {MARK}\n    </interface>"),
     ["<address> type 'isa' is not supported; accepted: pci, ccw, virtio-mmio"]),
    ("pci-slot",
     domain(f"\n    <interface type='user'>\n      <address type='pci' slot='zz'/> {MARK}\n"
            "    </interface>"),
     ["<address> slot='zz' is not valid; expected a hex (0x..) or decimal number"]),
    ("network-portid",
     domain(f"\n    <interface type='network'>\n      <source network='default' portid='abc'/> {MARK}\n"
            "    </interface>"),
     ["portid='abc' is not valid; expected a UUID"]),
    ("server-port-range",
     domain(f"\n    <interface type='server'>\n      <source port='70000'/> {MARK}\n    </interface>"),
     ["port='70000' is not valid; expected a port number from 0 to 65535"]),
    ("port-forward-protocol",
     domain(f"\n    <interface type='user'>\n      <portForward proto='sctp'/> {MARK}\n    </interface>"),
     ["<portForward> proto='sctp' is not valid; accepted: tcp, udp"]),
    ("port-forward-range-without-start",
     domain(f"\n    <interface type='user'>\n      <portForward proto='tcp'>\n"
            f"        <range end='80'/> {MARK}\n      </portForward>\n    </interface>"),
     ["<portForward><range> needs the attribute 'start'"]),
    ("vlan-without-tag",
     domain(f"\n    <interface type='bridge'>\n      <source bridge='br0'/>\n      <vlan/> {MARK}\n"
            "    </interface>"),
     ["<vlan> needs the element <tag>"]),
    ("relative-emulator",
     domain().replace("<emulator>/usr", "<emulator>usr").replace("</emulator>", f"</emulator> {MARK}"),
     ["<emulator>: text 'usr/bin/qemu-system-x86_64' is not valid; expected an absolute path"]),
    ("xen-domain",
     domain().replace("<domain type='kvm'>", f"<domain type='xen'> {MARK}"),
     ["<domain>: type='xen' is not valid; accepted: kvm, qemu"]),
    ("domain-without-type",
     domain().replace("<domain type='kvm'>", f"<domain> {MARK}"),
     ["<domain>: the attribute 'type' is missing", "accepted: kvm, qemu"]),
    ("domain-without-name",
     domain().replace("<domain type='kvm'>", f"<domain type='kvm'> {MARK}").replace("<name>guest</name>", ""),
     ["<domain>: the element <name> is missing"]),
    ("second-name",
     domain(top=f"\n  <name>again</name> {MARK}"),
     ["<domain>: element <name> may appear only once"]),
    ("xen-guest-kind",
     domain().replace(">hvm</type>", f">xen</type> {MARK}"),
     ["<os>: <type> text 'xen' is not valid; accepted: hvm"]),
    ("boot-device",
     domain().replace("</type>", f"</type>\n    <boot dev='usb'/> {MARK}"),
     ["<os>: <boot> dev='usb' is not valid; accepted: hd, fd, cdrom, network"]),
    ("memory-size",
     domain().replace(">256</memory>", f">lots</memory> {MARK}"),
     ["<memory>: text 'lots' is not valid; expected a non-negative integer"]),
    ("memory-unit",
     domain().replace("unit='MiB'", "unit='mib'").replace("</memory>", f"</memory> {MARK}"),
     ["<memory>: unit='mib' is not valid; accepted: b, bytes, KB, k, KiB"]),
    ("crash-action",
     domain(top=f"\n  <on_crash>explode</on_crash> {MARK}"),
     ["<on_crash>: text 'explode' is not valid; accepted: destroy, restart"]),
    ("uuid",
     domain(top=f"\n  <uuid>not-a-uuid</uuid> {MARK}"),
     ["<uuid>: text 'not-a-uuid' is not valid; expected a UUID"]),
    ("root-element",
     f"<network> {MARK}\n  <name>default</name>\n</network>\n",
     ["the root element is <network>; expected <domain>"]),
]


@pytest.mark.parametrize("text, words", [pytest.param(t, w, id=i) for i, t, w in REFUSED])
def test_refused_document(text, words):
    error = refusal(text)
    for part in words:
        assert part in error.message
    assert error.line == marked_line(text)
    assert error.file == "dom.xml"
    assert "does not match virtnet's schema" not in error.message, "explained in plain words"
    assert "\n" not in error.message


def test_missing_bridge_message_in_full():
    text = domain(f"\n    <interface type='bridge'>\n      <source/> {MARK}\n    </interface>")
    error = refusal(text)
    assert str(error) == (
        f"dom.xml:{marked_line(text)}: <interface type='bridge'>: "
        "<source> needs the attribute 'bridge' (the host bridge to attach to)"
    )


def test_first_problem_in_document_order_is_reported():
    text = domain(f"\n    <interface type='direct'>\n      <source dev='eth0' mode='x'/> {MARK}\n"
                  "    </interface>\n    <interface type='hostdev'/>")
    assert "mode='x' is not valid" in refusal(text).message


# ---------------------------------------------------------------- accepted documents

ACCEPTED = [
    ("interface-without-type-is-user",
     domain("\n    <interface>\n      <model type='virtio'/>\n    </interface>")),
    # Values a semantic check judges with a better message than a grammar could.
    ("values-left-to-semantic-checks",
     domain("\n    <interface type='ethernet'>\n      <mac address='not-a-mac'/>\n"
            "      <target dev='tap0' managed='maybe'/>\n      <link state='sideways'/>\n"
            "      <model type='idontexist'/>\n    </interface>")),
    ("options-in-any-order",
     domain("\n    <interface type='udp'>\n      <model type='virtio'/>\n"
            "      <source address='192.0.2.1' port='5558'><local address='192.0.2.2' port='5557'/></source>\n"
            "      <mac address='52:54:00:00:00:01'/>\n      <driver queues='2'><guest csum='off'/>"
            "<host tso4='off'/></driver>\n      <boot order='1'/>\n"
            "      <address type='pci' domain='0' bus='0x00' slot='3' function='0x0'/>\n"
            "    </interface>")),
    ("passed-through-devices-and-elements",
     domain("\n    <hostdev mode='subsystem' type='pci'><anything goes='here'><deep/></anything></hostdev>\n"
            "    <graphics type='vnc'/>",
            top="\n  <cpu mode='host-passthrough'><feature policy='require' name='x'/></cpu>\n"
                "  <clock offset='utc' adjustment='reset'><timer name='rtc'/></clock>\n"
                "  <on_crash>coredump-restart</on_crash>")),
    ("foreign-namespace-elements",
     domain(top="\n  <qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
                "    <qemu:arg value='-no-hpet'/>\n  </qemu:commandline>")),
    ("other-bus-addresses",
     domain("\n    <interface type='user'><address type='ccw' cssid='0xfe' ssid='0' devno='1'/></interface>\n"
            "    <interface type='user'><address type='virtio-mmio'/></interface>")),
    ("minimal-domain",
     "<domain type='qemu'><name>m</name><os><type>hvm</type></os></domain>"),
]


@pytest.mark.parametrize("text", [pytest.param(t, id=i) for i, t in ACCEPTED])
def test_accepted_document(text):
    tree = parse(text)
    schema.validate(tree, "dom.xml")
    assert schema.diagnose(tree) is None


# ---------------------------------------------------------------- when the walk finds nothing


def test_libxml2_message_when_the_walk_finds_nothing(monkeypatch):
    # A walk that disagrees with libxml2 cannot be provoked for real (the corpus tests
    # prove they agree), so the walk is replaced to exercise the fallback.
    monkeypatch.setattr(schema, "diagnose", lambda tree: None)
    text = domain(top=f"\n  <devicez/> {MARK}")
    error = refusal(text)
    assert error.message.startswith("the document does not match virtnet's schema: ")
    assert "devicez" in error.message
    assert error.line and error.line > 0


def test_libxml2_message_when_the_walk_fails(monkeypatch):
    # Same reason as above: a failing walk is simulated to show the refusal still gets through.
    def broken(tree):
        raise RecursionError("simulated")

    monkeypatch.setattr(schema, "diagnose", broken)
    error = refusal(domain(f"\n    <interface type='hostdev'/> {MARK}"))
    assert error.message.startswith("the document does not match virtnet's schema")


# ---------------------------------------------------------------- finding and compiling the grammar

SCHEMA_FILES = ["domain.rng", "basictypes.rng", "interface.rng", "devices.rng"]


def copy_schemas(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in SCHEMA_FILES:
        shutil.copy(REPO / "virtnet" / "schemas" / name, folder / name)
    return folder


def test_checkout_schemas_are_found(monkeypatch):
    monkeypatch.delenv(schema.SCHEMA_DIR_VARIABLE, raising=False)
    assert schema.schema_dir() == REPO / "virtnet" / "schemas"


def test_environment_variable_wins(monkeypatch, tmp_path):
    folder = copy_schemas(tmp_path / "elsewhere")
    monkeypatch.setenv(schema.SCHEMA_DIR_VARIABLE, str(folder))
    assert schema.schema_dir() == folder
    assert schema.schema() is not schema._compile(REPO / "virtnet" / "schemas")
    schema.validate(parse(domain()), "dom.xml")


def test_environment_variable_without_schema_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(schema.SCHEMA_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(VirtnetError, match=r"\$VIRTNET_SCHEMA_DIR .* no domain.rng"):
        schema.schema_dir()


def test_installed_copy_is_found(monkeypatch, tmp_path):
    # The package's own data, wherever the package is: not under sys.prefix for pip --user or
    # /usr/local (tests/test_packaging.py installs it for real in each of those layouts).
    monkeypatch.delenv(schema.SCHEMA_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(schema, "__file__", str(tmp_path / "site" / "virtnet" / "conf" / "schema.py"))
    installed = copy_schemas(tmp_path / "site" / "virtnet" / "schemas")
    assert schema.schema_dir() == installed


def test_missing_schemas_are_an_error(monkeypatch, tmp_path):
    monkeypatch.delenv(schema.SCHEMA_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(schema, "__file__", str(tmp_path / "site" / "virtnet" / "conf" / "schema.py"))
    with pytest.raises(VirtnetError, match="cannot find virtnet's schema files .*VIRTNET_SCHEMA_DIR"):
        schema.schema_dir()


def test_broken_grammar_is_an_error(monkeypatch, tmp_path):
    folder = copy_schemas(tmp_path / "broken")
    (folder / "interface.rng").write_text("<grammar>")
    monkeypatch.setenv(schema.SCHEMA_DIR_VARIABLE, str(folder))
    with pytest.raises(VirtnetError, match="cannot be loaded"):
        schema.schema()


def test_grammar_is_compiled_once(monkeypatch):
    monkeypatch.delenv(schema.SCHEMA_DIR_VARIABLE, raising=False)
    assert schema.schema() is schema.schema()
