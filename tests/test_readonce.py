"""The fast paths of the conversion pipeline must not change an answer: read-once (frozen) model
objects, the iterchildren look-ups of plain paths, file reading, and the one-verb argument parser."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from virtnet import cli
from virtnet.conf import xmlmodel
from virtnet.conf.domain import Domain
from virtnet.conf.xmlmodel import Child, Children, Prop, XMLObject, freeze, frozen, is_frozen, thaw
from virtnet.conf.xmlparse import parse_bytes, parse_file
from virtnet.errors import XMLInputError

REPO = Path(__file__).resolve().parents[1]


def _parses(path):
    try:
        parse_file(str(path))
    except XMLInputError:
        return False  # a failure golden whose XML is malformed on purpose: nothing to read
    return True


CASES = sorted(p for p in (REPO / "testdata").rglob("*.xml") if not p.name.endswith(".out.xml") and _parses(p))
assert CASES, "no golden input parses: the parser itself is broken"


def _descriptors(cls):
    """Prop, Child and Children descriptors of a model class, by name (bases first)."""
    found = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, (Prop, Child)):
                found[name] = value
            else:
                found.pop(name, None)
    return found


def _compare(live, frozen_obj, where, seen):
    """Every modelled value of FROZEN_OBJ equals LIVE's (read through the tree), recursively."""
    assert type(live) is live._model and is_frozen(frozen_obj)
    for name, desc in _descriptors(live._model).items():
        if isinstance(desc, Prop):
            try:
                expected = getattr(live, name)
            except ValueError as e:  # a value the kind cannot convert: frozen reads raise the same
                with pytest.raises(ValueError, match=re.escape(str(e))):
                    getattr(frozen_obj, name)
                continue
            assert getattr(frozen_obj, name) == expected, f"{where}.{name}"
            assert getattr(frozen_obj, name) == expected, f"{where}.{name} (second read)"
        elif isinstance(desc, Children):
            a, b = getattr(live, name), getattr(frozen_obj, name)
            assert len(a) == len(b), f"{where}.{name}"
            for i, (x, y) in enumerate(zip(a, b)):
                assert x == y and x.node is y.node
                _compare(x, y, f"{where}.{name}[{i}]", seen)
        else:
            a, b = getattr(live, name), getattr(frozen_obj, name)
            assert (a is None) == (b is None), f"{where}.{name}"
            if a is not None:
                assert a == b and getattr(frozen_obj, name) is b, f"{where}.{name} is read once"
                _compare(a, b, f"{where}.{name}", seen)
    seen.add(live._model)


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_frozen_reads_equal_live_reads(path):
    _, tree = parse_file(str(path))
    live = Domain(tree.getroot())
    frozen_domain = freeze(Domain(tree.getroot()))
    _compare(live, frozen_domain, "domain", set())
    for tag in ("mtu", "script", "driver/host", "devices/interface", "nothere"):
        assert frozen_domain.has(tag) == live.has(tag)
        for a, b in zip(live.interfaces, frozen_domain.interfaces):
            assert a.has(tag) == b.has(tag)


DOC = b"""<domain type='kvm'>
  <name>d</name>
  <devices>
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:01'/>
      <source dev='s0'><local address='1.2.3.4'/></source>
      <target dev='tap0'/>
      <!-- a comment between children -->
      <target dev='second-target-is-ignored'/>
      <mtu size='1400'/>
      <tune><sndbuf> 1600 </sndbuf></tune>
    </interface>
    <interface type='user'/>
  </devices>
</domain>
"""


def _domain():
    return Domain(parse_bytes(DOC, "t.xml").getroot())


def test_frozen_values_are_plain_attributes_and_first_elements():
    domain = freeze(_domain())
    iface = domain.interfaces[0]
    assert iface.target_dev == "tap0"  # the first <target>, as find() answers
    assert iface.sndbuf == 1600 and iface.mtu == 1400 and iface.source.local_address == "1.2.3.4"
    assert iface.type == "ethernet"
    assert "target_dev" in iface.__dict__ and "type" in iface.__dict__  # a Prop and a derived property
    assert iface.source is iface.source and domain.interfaces[1].mac is None
    live = type(iface)._model(iface.node)  # an unfrozen wrapper of the same element
    assert iface == live and live == iface and hash(iface) == hash(live)
    assert iface != _domain().interfaces[0]


def test_write_after_freeze_thaws_the_whole_document():
    domain = freeze(_domain())
    iface = domain.interfaces[0]
    source = iface.source
    assert (iface.mtu, source.dev, domain.name) == (1400, "s0", "d")
    source.dev = "s1"  # a write through any frozen object of the document
    assert not is_frozen(domain) and not is_frozen(iface) and not is_frozen(source)
    assert source.dev == "s1" and iface.source.dev == "s1"
    iface.mtu = None
    assert iface.mtu is None and not iface.has("mtu")
    freeze(domain)
    assert domain.interfaces[0].mtu is None and domain.interfaces[0].source.dev == "s1"


def test_plain_attributes_do_not_thaw():
    domain = freeze(_domain())
    iface = domain.interfaces[0]
    iface.ids = "stamped"
    assert is_frozen(iface) and iface.ids == "stamped"


def test_raw_edits_need_an_explicit_thaw():
    domain = freeze(_domain())
    assert domain.interfaces[0].has("mtu")
    thaw(domain)
    node = domain.interfaces[0].node
    node.remove(node.find("mtu"))
    freeze(domain)
    assert domain.interfaces[0].mtu is None and not domain.interfaces[0].has("mtu")


def test_frozen_context_thaws_on_exit_and_on_error():
    domain = _domain()
    with frozen(domain):
        assert is_frozen(domain) and is_frozen(domain.interfaces[0])
    assert not is_frozen(domain) and not is_frozen(domain.interfaces[0])
    with pytest.raises(RuntimeError), frozen(domain):
        raise RuntimeError
    assert not is_frozen(domain)
    freeze(domain)
    with frozen(domain):
        pass
    assert is_frozen(domain), "a document frozen before stays frozen"


class _Holder(XMLObject):
    tag = "x"
    first = Prop("a/@v")
    calls = 0

    @property
    def listed(self):
        _Holder.calls += 1
        return [self.first]

    @property
    def counted(self):
        _Holder.calls += 1
        return self.first


def test_derived_values_are_memoised_unless_mutable():
    holder = freeze(_Holder(etree.fromstring("<x><a v='1'/></x>")))
    _Holder.calls = 0
    assert holder.counted == holder.counted == "1" and _Holder.calls == 1
    assert holder.listed == ["1"] and holder.listed is not holder.listed and _Holder.calls == 4


def test_prop_paths_must_be_plain_names():
    for path in ("a[1]/@v", "*/@v", "../@v", "{urn:x}a/@v", "a//b"):
        with pytest.raises(ValueError):
            Prop(path)
    Prop("suspend-to-mem/@enabled")


def test_a_default_answers_only_for_an_absent_value():
    class Item(XMLObject):
        kind = Prop("@kind", default="user")
        size = Prop("size/@n", int, default=1)

    for xml, kind, size in (("<i/>", "user", 1), ("<i kind='bridge'><size n=' 4 '/></i>", "bridge", 4),
                            ("<i><size/></i>", "user", 1), ("<i kind=''><size n='0'/></i>", "", 0)):
        for item in (Item(etree.fromstring(xml)), freeze(Item(etree.fromstring(xml)))):
            assert (item.kind, item.size) == (kind, size), xml
    item = Item(etree.fromstring("<i/>"))
    item.kind = "direct"
    assert item.node.get("kind") == "direct"


def test_plain_multistep_paths_follow_findall_order():
    root = etree.fromstring("<d><g><c i='1'/><x/><c i='2'/></g><!-- c --><g><c i='3'/></g><c i='0'/></d>")

    class Doc(XMLObject):
        all_c = Children("g/c", XMLObject)
        first_c = Child("g/c", XMLObject)
        direct = Children("c", XMLObject)
        where = Children("g/c[@i='2']", XMLObject)

    doc = Doc(root)
    for d in (doc, freeze(Doc(root))):
        assert [c.node.get("i") for c in d.all_c] == [e.get("i") for e in root.findall("g/c")] == ["1", "2", "3"]
        assert d.first_c.node.get("i") == "1"
        assert [c.node.get("i") for c in d.direct] == ["0"]
        assert [c.node.get("i") for c in d.where] == ["2"]


def test_files_are_read_whole_from_pipes_too(tmp_path):
    seed = REPO / "examples" / "net-eth-unmanaged-tap.xml"
    read = subprocess.run([sys.executable, "-m", "virtnet", "xml2xml", "/dev/stdin"], input=seed.read_bytes(),
                          capture_output=True)
    direct = subprocess.run([sys.executable, "-m", "virtnet", "xml2xml", str(seed)], capture_output=True)
    assert read.returncode == 0 and read.stdout == direct.stdout
    big = subprocess.run([sys.executable, "-m", "virtnet", "validate", "/dev/stdin"],
                         input=b" " * ((1 << 20) + 10), capture_output=True)
    assert big.returncode == 1 and b"larger than 1048576 bytes" in big.stderr


@pytest.mark.parametrize("argv", [
    ["xml2argv", "a.xml"], ["--debug", "xml2argv", "--syntax", "keyval", "a.xml", "b.xml"],
    ["--state-dir", "/s", "list", "--all"], ["--state-dir=/s", "--netns", "n", "plan", "x", "--format", "sh"],
    ["--runtime-dir", "xml2argv", "validate", "f.xml"], ["golden", "check", "d"], ["start", "vm", "--paused"],
])
def test_one_verb_parser_parses_like_the_whole_parser(argv):
    verb = cli._verb_of(argv)
    assert verb is not None
    assert vars(cli.build_parser(verb).parse_args(argv)) == vars(cli.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["bogus"], ["--state", "/s", "list"],
                                  ["--netns"], ["-", "x"], ["--debug"]])
def test_uncertain_verbs_build_the_whole_parser(argv):
    assert cli._verb_of(argv) is None


def test_parsing_a_verb_imports_no_shutil():
    code = ("import sys; from virtnet import cli\n"
            "cli.build_parser(cli._verb_of(['xml2argv', 'f.xml'])).parse_args(['xml2argv', 'f.xml'])\n"
            "cli.build_parser().parse_args(['list'])\n"
            "print('shutil' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["False"], out.stderr


QUICK = [
    ["xml2argv", "a.xml"], ["xml2argv", "a.xml", "b.xml", "-"], ["validate", "-"], ["xml2xml", "a.xml"],
    ["--debug", "xml2argv", "--syntax", "keyval", "--network-only", "a.xml"],
    ["xml2argv", "a.xml", "b.xml", "--standalone", "--host-caps", "none", "--bridge-helper", "/h"],
    ["--state-dir", "/s", "--runtime-dir", "/r", "--netns", "n", "xml2argv", "--debug", "a.xml"],
    ["xml2argv", "--syntax", "keyval", "--syntax", "json", "a.xml"], ["validate", "--netns", "x", "f.xml"],
]
NOT_QUICK = [
    [], ["xml2argv"], ["xml2argv", "--help"], ["--version"], ["xml2argv", "--syntax", "bad", "a.xml"],
    ["xml2argv", "--syntax=keyval", "a.xml"], ["xml2argv", "--net", "a.xml"], ["xml2argv", "a.xml", "--standalone", "b"],
    ["validate", "a.xml", "b.xml"], ["xml2argv", "--host-caps"], ["xml2argv", "--bridge-helper", "-", "a.xml"],
    ["xml2argv", "--", "a.xml"], ["list"], ["--state", "/s", "xml2argv", "a.xml"], ["xml2argv", "-x.xml"],
]


@pytest.mark.parametrize("argv", QUICK + NOT_QUICK)
def test_quick_args_are_what_argparse_makes(argv):
    """The conversion verbs' plain command lines skip argparse; the namespace must be the same."""
    quick = cli._quick_args(argv)
    assert (quick is not None) == (argv in QUICK)
    if quick is not None:
        assert vars(quick) == vars(cli.build_parser().parse_args(argv))


def test_a_plain_conversion_imports_no_argparse():
    seed = REPO / "examples" / "net-eth-unmanaged-tap.xml"
    code = ("import sys, io, contextlib; from virtnet.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    status = main(['xml2argv', '--host-caps', 'none', {str(seed)!r}])\n"
            "print(status, 'argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["0", "False"], out.stderr


def test_frozen_classes_are_made_once_per_model_class():
    a, b = freeze(_domain()), freeze(_domain())
    assert type(a) is type(b) is xmlmodel._frozen_class(Domain)
    assert type(a).__name__ == "Domain" and isinstance(a, Domain)


def test_frozen_sub_objects_wrap_the_elements_found():
    domain = freeze(_domain())
    iface = domain.interfaces[0]
    assert iface.source.node is iface.node.find("source")
    assert iface.address is None and iface.host_offloads is None and iface.guest_ips == []
    assert domain.interfaces[1].source is None
    xml = "<domain><devices><interface><address type='pci' bus='0x01' slot='3'/></interface></devices></domain>"
    address = freeze(Domain(etree.fromstring(xml))).interfaces[0].address
    assert (address.type, address.bus, address.slot, address.function) == ("pci", 1, 3, None)
    assert "_snap" not in address.__dict__, "a class that reads only its own attributes takes no snapshot"


def test_clark_name_paths_are_plain_and_read_alike():
    root = etree.fromstring(
        "<d xmlns:q='urn:q'><x/><q:cmd><q:arg v='a'/></q:cmd><q:cmd/><q:cmd><q:arg v='b'/></q:cmd></d>")

    class Doc(XMLObject):
        cmd = Child("{urn:q}cmd", XMLObject)
        cmds = Children("{urn:q}cmd", XMLObject)
        args = Children("{urn:q}cmd/{urn:q}arg", XMLObject)

    assert Doc.cmd.tag == "{urn:q}cmd" and Doc.args.steps == ["{urn:q}cmd", "{urn:q}arg"]
    for d in (Doc(root), freeze(Doc(root))):
        assert d.cmd.node is root.find("{urn:q}cmd")
        assert [c.node for c in d.cmds] == root.findall("{urn:q}cmd")
        assert [c.node for c in d.args] == root.findall("{urn:q}cmd/{urn:q}arg")


def test_model_classes_may_not_define_init():
    # A frozen document makes its sub-objects without calling __init__, so one would be skipped.
    with pytest.raises(TypeError, match="defines __init__"):
        class Counted(XMLObject):
            def __init__(self, node):
                super().__init__(node)


class _Nested(XMLObject):
    v = Prop("@v")


_Nested.inner = Child("n", _Nested)  # a model class naming itself
_Nested.inner.__set_name__(_Nested, "inner")


def test_a_model_class_may_name_itself():
    outer = freeze(_Nested(etree.fromstring("<n v='1'><n v='2'><n v='3'/></n></n>")))
    assert (outer.v, outer.inner.v, outer.inner.inner.v, outer.inner.inner.inner) == ("1", "2", "3", None)
    assert type(outer.inner) is type(outer)


def test_a_frozen_document_is_freed_without_the_cycle_collector():
    """A frozen model makes no reference cycle (its group holds the objects by weak reference): a
    batch would otherwise leave every domain to the garbage collector."""
    import gc
    import weakref

    from virtnet.conf.load import load_file

    gc.disable()
    try:
        domain = load_file(str(REPO / "examples" / "net-eth-unmanaged-tap.xml")).domain
        assert is_frozen(domain)
        sources = [iface.source for iface in domain.interfaces]  # frozen sub-objects, memoised
        assert sources and is_frozen(domain.interfaces[0])
        gone = weakref.ref(domain)
        del domain, sources
        assert gone() is None
    finally:
        gc.enable()
