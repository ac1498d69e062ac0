"""Disks, their controllers and the PCI layout: the model, the rules, libvirt's corpus through the
schema, and real starts — `virtnet start --paused` of a guest with disks of every bus, inspected
over QMP (query-block, QOM) for libvirt's ids and, on q35, for each device behind a root port.
"""

import os
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from hostcases import assert_clean, fails, ok, qmp, snapshot, virtnet, write
from test_golden import ARGV_DIR, PLAN_DIR, XML_DIR, discover
from virtnet import convert
from virtnet.conf import disk as diskconf
from virtnet.errors import XMLInputError
from virtnet.conf import schema
from virtnet.conf.xmlparse import parse_file
from virtnet.errors import HostError
from virtnet.host.executor import check_disk_path
from virtnet.qemu import storage

REPO = Path(__file__).resolve().parents[1]
CORPUS = (REPO / ".." / "shared" / "conformance" / "libvirt" / "domain").resolve()
QEMU_IMG = "/usr/bin/qemu-img"
# libvirt's domain/ inputs with disks or controllers that virtnet refuses on purpose (QEMU would
# refuse libvirt's own command line, or libvirt refuses too), with a part of virtnet's message.
REFUSED = {
    "boot-dev+order": "cannot be combined with <os><boot dev=...>",
    "disk-blockio": "<address type='drive' unit='2'> is out of range for ide",
    "disk-serial": "<address type='drive' unit='2'> is out of range for ide",
    "disk-source-pool": "<address type='drive' unit='2'> is out of range for ide",
    "pcie-root-port-too-many": "a PCI slot is needed to connect a PCI controller model='pcie-root-port'",
}


# -- the model: every property a golden exercises ------------------------------------------------------

def _objects(domain):
    found = {cls: [] for cls in diskconf.MODEL_CLASSES}
    for disk in domain.disks:
        found[diskconf.Disk].append(disk)
    for controller in domain.controllers:
        found[diskconf.Controller].append(controller)
    return found


def test_every_modelled_storage_attribute_is_exercised():
    from virtnet.conf.domain import Domain

    seen = set()
    for case in discover(ARGV_DIR) + discover(XML_DIR) + discover(PLAN_DIR):
        try:
            _, tree = parse_file(case.source)
        except XMLInputError:
            continue  # a failure golden whose XML is malformed on purpose
        for cls, objs in _objects(Domain(tree.getroot())).items():
            for name, prop in cls.declared_props().items():
                if any(prop.raw(obj) is not None for obj in objs):
                    seen.add((cls.__name__, name))
    missing = [f"{cls.__name__}.{name} ({prop.path})" for cls in diskconf.MODEL_CLASSES
               for name, prop in cls.declared_props().items() if (cls.__name__, name) not in seen]
    assert not missing, "modelled but exercised by no golden input: " + ", ".join(missing)


@pytest.mark.parametrize("name,index", [("vda", 0), ("hdc", 2), ("sdz", 25), ("sdaa", 26), ("sdab", 27),
                                        ("xvdb", 1), ("vd", None), ("vda1", None), ("disk0", None)])
def test_disk_index_is_libvirts(name, index):
    assert diskconf.disk_index(name) == index


def test_unrendered_names_each_disk_and_why():
    loaded = convert.load(str(ARGV_DIR / "disk-unrendered.xml"))
    left_out = storage.unrendered(loaded.domain)
    assert {node.find("target").get("dev"): why for node, why in left_out.items()} == {
        "vda": "<disk type='network'>", "vdb": "<disk type='volume'>", "vdc": "<iotune>",
        "fda": "<disk device='floppy'>"}
    assert [node.tag for node in left_out] == ["disk"] * 4
    assert [d.ids.alias for d in storage.rendered_disks(loaded.domain)] == ["virtio-disk3"]


def test_inactive_xml_has_no_generated_aliases_and_the_live_one_keeps_them(tmp_path):
    from virtnet.conf.format import format_domain

    loaded = convert.load(str(ARGV_DIR / "q35-layout.xml"))
    live = format_domain(loaded.domain, live=True)
    aliases = [a.get("name") for a in etree.fromstring(live.encode()).iterfind("devices/*/alias")]
    assert {"virtio-disk0", "scsi0-0-0-0", "scsi0", "pci.1", "pcie.0", "net0"} <= set(aliases)
    assert "<alias" not in format_domain(loaded.domain)
    # The live XML reads back with the same ids, as `dumpxml` and destroy read it.
    from virtnet.conf.load import load_live

    again = load_live(live, "live.xml").domain
    assert [d.ids.alias for d in again.disks] == [d.ids.alias for d in loaded.domain.disks]
    assert [d.ids.format_node for d in again.disks] == [d.ids.format_node for d in loaded.domain.disks]


# -- libvirt's corpus through the schema and the rules ---------------------------------------------------

def corpus_inputs():
    if not CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"libvirt's corpus is not at {CORPUS}"))]
    names = sorted(p.name for p in CORPUS.glob("*.xml") if p.name.count(".") == 1)
    wanted = [n for n in names if n.startswith(("disk-", "controller-", "boot-", "q35", "pcie-root-port",
                                                "hotplug-base", "x86_64-"))]
    return [pytest.param(CORPUS / n, id=n[:-4]) for n in wanted]


def storage_only(path):
    """The corpus document with only its emulator, disks, controllers and NICs under <devices>: what
    this file judges (other devices are other tests' business)."""
    tree = etree.parse(str(path))
    devices = tree.getroot().find("devices")
    for child in list(devices):
        if isinstance(child.tag, str) and child.tag not in ("emulator", "disk", "controller", "interface"):
            devices.remove(child)
    return tree


@pytest.mark.parametrize("path", corpus_inputs())
def test_libvirt_corpus_disks_and_controllers_pass_the_schema(path):
    tree = storage_only(path)
    schema.validate(tree, path.name)
    assert schema.diagnose(tree) is None, "the explanation walk must agree with libxml2"


@pytest.mark.parametrize("path", corpus_inputs())
def test_libvirt_corpus_inputs_load_or_are_refused_on_purpose(path, tmp_path):
    name = path.name[:-4]
    copy = tmp_path / path.name
    storage_only(path).write(str(copy))
    if name in REFUSED:
        with pytest.raises(XMLInputError) as caught:
            convert.load(str(copy))
        assert REFUSED[name] in caught.value.message
        return
    loaded = convert.load(str(copy))
    assert convert.xml2xml(loaded).text.startswith("<domain")


# -- the host check before QEMU starts ---------------------------------------------------------------

def test_check_path_names_the_disk_and_what_is_wrong(tmp_path):
    image = tmp_path / "a.img"
    image.write_bytes(b"\0" * 512)
    check_disk_path("virtio-disk0", str(image), readonly=False, disk_type="file")
    with pytest.raises(HostError, match=r"disk virtio-disk0: cannot use .*missing.img: No such file"):
        check_disk_path("virtio-disk0", str(tmp_path / "missing.img"), readonly=True, disk_type="file")
    with pytest.raises(HostError, match=r"is not a block device; use <disk type='file'>"):
        check_disk_path("virtio-disk0", str(image), readonly=False, disk_type="block")
    with pytest.raises(HostError, match="is a directory"):
        check_disk_path("virtio-disk0", str(tmp_path), readonly=True, disk_type="file")


# -- real starts ----------------------------------------------------------------------------------------

def _image(path, fmt="raw"):
    if fmt == "raw":
        with open(path, "wb") as image:
            image.truncate(1 << 20)
    else:
        if not os.access(QEMU_IMG, os.X_OK):
            pytest.skip(f"needs {QEMU_IMG} (Debian: qemu-utils)")
        subprocess.run([QEMU_IMG, "create", "-q", "-f", fmt, str(path), "1M"], check=True)
    return path


@pytest.fixture
def loop_device(tmp_path):
    """A loop device over a 1 MiB raw image (a real block device for <disk type='block'>)."""
    image = _image(tmp_path / "block.img")
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True)


def storage_domain(name, machine, images, block):
    return f"""\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='{machine}'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{images / "root.qcow2"}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='{block}'/>
      <target dev='sdb' bus='scsi'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='{images / "install.iso"}'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sdc' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='scsi' model='virtio-scsi'/>
    <interface type='user'>
      <mac address='52:54:00:57:00:01'/>
      <model type='virtio'/>
    </interface>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_started_guest_has_the_disks_with_libvirts_ids(ns, dirs, tmp_path, loop_device, machine):
    d = dirs
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "root.qcow2", "qcow2")
    _image(images / "install.iso")
    name = f"disks-{machine}"
    path = write(tmp_path / f"{name}.xml", storage_domain(name, machine, images, loop_device))
    ok(virtnet(d, "define", path))
    before = snapshot(ns)
    plan = ok(virtnet(d, "plan", name, netns=ns))
    assert f"virtio-disk0: check disk image {images / 'root.qcow2'} exists and is readable and writable" in plan
    assert f"scsi0-0-0-1: check block device {loop_device} exists and is readable and writable" in plan

    ok(virtnet(d, "start", name, "--paused", netns=ns))
    record = d.record(name)
    try:
        with qmp(record["qmp"]) as client:
            blocks = {entry["qdev"].removesuffix("/virtio-backend").rsplit("/", 1)[-1]: entry
                      for entry in client.execute("query-block")}
            expected = {  # libvirt's ids and node names; N counts the disks from the last one
                "virtio-disk0": ("libvirt-4-format", "qcow2", False, str(images / "root.qcow2")),
                "scsi0-0-0-1": ("libvirt-3-format", "raw", False, loop_device),
                "sata0-0-0": ("libvirt-2-format", "raw", True, str(images / "install.iso")),
            }
            for ident, (node, fmt, readonly, source) in expected.items():
                inserted = blocks[ident]["inserted"]
                assert (inserted["node-name"], inserted["drv"], inserted["ro"]) == (node, fmt, readonly), ident
                assert inserted["image"]["filename"] == source, ident
            assert "inserted" not in blocks["sata0-0-2"] and blocks["sata0-0-2"]["removable"]
            # cache='none': the image is opened O_DIRECT, with the guest's write cache on.
            assert blocks["virtio-disk0"]["inserted"]["cache"] == {"writeback": True, "direct": True,
                                                                   "no-flush": False}

            def place(ident):
                device = f"/machine/peripheral/{ident}"
                bus = client.execute("qom-get", {"path": device, "property": "parent_bus"}).rsplit("/", 1)[-1]
                return bus, client.execute("qom-get", {"path": device, "property": "addr"}) >> 3

            def kind(ident):
                return client.execute("qom-get", {"path": f"/machine/peripheral/{ident}", "property": "type"})

            if machine == "q35":
                # Each PCI Express device behind a pcie-root-port of its own, at slot 0: the NIC,
                # the virtio-scsi controller and the virtio disk (libvirt's order); the SATA disks
                # on the chipset's AHCI (ide.N).
                for ident in ("net0", "scsi0", "virtio-disk0"):
                    bus, slot = place(ident)
                    assert slot == 0 and kind(bus) == "pcie-root-port", (ident, bus)
                assert [place(i)[0] for i in ("net0", "scsi0", "virtio-disk0")] == ["pci.1", "pci.2", "pci.3"]
                ports = [c for c in client.execute("qom-list", {"path": "/machine/peripheral"})
                         if c["name"].startswith("pci.")]
                assert len(ports) == 4, "three devices and one spare root port for hot-plug"
                assert kind("pci.4") == "pcie-root-port"
            else:
                assert [place(i) for i in ("net0", "scsi0", "virtio-disk0")] == [("pci.0", 2), ("pci.0", 3),
                                                                                   ("pci.0", 5)]
                assert place("sata0") == ("pci.0", 4) and kind("sata0") == "ich9-ahci"
        live = etree.fromstring(ok(virtnet(d, "dumpxml", name)).encode())
        assert [(x.find("target").get("dev"), x.find("alias").get("name")) for x in live.iterfind("devices/disk")] \
            == [("vda", "virtio-disk0"), ("sdb", "scsi0-0-0-1"), ("sda", "sata0-0-0"), ("sdc", "sata0-0-2")]
        assert "<alias" not in ok(virtnet(d, "dumpxml", "--inactive", name))
    finally:
        ok(virtnet(d, "destroy", name))
    assert_clean(ns, d, name, before, record["pid"])


def test_start_refuses_a_missing_image_before_touching_the_host(ns, dirs, tmp_path, loop_device):
    d = dirs
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "root.qcow2", "qcow2")  # install.iso is missing
    path = write(tmp_path / "missing.xml", storage_domain("missing", "q35", images, loop_device))
    ok(virtnet(d, "define", path))
    before = snapshot(ns)
    error = fails(virtnet(d, "start", "missing", "--paused", netns=ns))
    assert error == f"virtnet: error: disk sata0-0-0: cannot use {images / 'install.iso'}: No such file or directory"
    assert_clean(ns, d, "missing", before)


def test_qemu_refuses_an_ide_disk_at_unit_2_as_libvirts_line_has_it(tmp_path):
    """Where virtnet is stricter than libvirt (disk-blockio, disk-serial, disk-source-pool), QEMU 7.2
    refuses libvirt's own option: the PIIX3's IDE buses have units 0 and 1 only."""
    qemu = "/usr/bin/qemu-system-x86_64"
    if not os.access(qemu, os.X_OK):
        pytest.skip(f"needs {qemu}")
    image = _image(tmp_path / "ide.img")
    argv = [qemu, "-S", "-machine", "pc", "-accel", "tcg", "-display", "none", "-nodefaults", "-no-user-config",
            "-blockdev", f'{{"driver":"file","filename":"{image}","node-name":"libvirt-1-storage"}}',
            "-device", '{"driver":"ide-hd","bus":"ide.0","unit":2,"drive":"libvirt-1-storage","id":"ide0-0-2"}']
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "Can't create IDE unit 2, bus supports only 2 units" in proc.stderr, proc.stderr
