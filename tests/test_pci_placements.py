"""conf.pci hands each device's PCI placement to the command line (pci.placed); a device it did not
place is read from its <address> (pci.read_placement). Both must give the same answers."""

from pathlib import Path

import pytest

from virtnet import convert, golden
from virtnet.conf import load, pci
from virtnet.conf.format import format_domain
from virtnet.errors import VirtnetError
from virtnet.qemu.pciaddr import address_element

REPO = Path(__file__).resolve().parents[1]
CASES = sorted((REPO / "testdata" / "xml2argv").glob("*.xml")) + sorted((REPO / "examples").glob("*.xml"))


def _loaded(path):
    try:
        return load.load_file(str(path))
    except VirtnetError:
        return None


def _argv(loaded):
    """The xml2argv text of LOADED, or the error it raises (as text)."""
    try:
        return convert.xml2argv(loaded, runtime_dir=golden.DEFAULT_RUNTIME_DIR).text
    except VirtnetError as error:
        return f"error: {error}"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_each_placement_is_what_its_address_says(path):
    loaded = _loaded(path)
    if loaded is None:
        return
    domain = loaded.domain
    assert domain.pci_placements is not None  # conf.pci made its record
    for node, placement in domain.pci_placements.items():
        address = address_element(type("Device", (), {"node": node}))
        assert placement == pci.read_placement(address), (node.tag, node.sourceline)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.name)
def test_the_command_line_is_the_same_read_back(path):
    """Without the handover (as for a tree conf.pci did not prepare) every address is read back."""
    loaded = _loaded(path)
    if loaded is None:
        return
    handed_over = _argv(loaded)
    loaded.domain.pci_placements = None
    assert _argv(loaded) == handed_over


def test_most_cases_hand_placements_over():
    # Not vacuous: the two tests above return early for the cases refused on the way.
    handed = [path for path in CASES if (loaded := _loaded(path)) is not None and loaded.domain.pci_placements]
    assert len(handed) >= 40, len(handed)


@pytest.mark.parametrize("name", ["net-pci-multifunction", "q35-explicit-root-ports", "net-q35"])
def test_a_running_domains_live_xml_gives_the_same_command_line(name):
    loaded = load.load_file(str(REPO / "testdata" / "xml2argv" / f"{name}.xml"))
    live = load.load_live(format_domain(loaded.domain, live=True), "live.xml")
    interfaces = live.domain.interfaces
    assert interfaces and all(pci.placed(live.domain, i.node) is None for i in interfaces)
    assert _argv(live) == _argv(loaded)


SHARED_SLOT = """<domain type='qemu'>
  <name>shared</name>
  <uuid>c5aea0d2-39f5-52a6-9a9e-275c80ad9011</uuid>
  <memory unit='KiB'>219136</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='user'>
      <address type='pci' bus='0' slot='7' function='0'/>
    </interface>
    <interface type='user'>
      <address type='pci' bus='0' slot='7' function='1'/>
    </interface>
  </devices>
</domain>
"""


def test_an_address_given_multifunction_after_is_read_back():
    domain = load.load_text(SHARED_SLOT).domain
    first, second = domain.interfaces
    assert pci.placed(domain, first.node) is None  # _multifunction wrote multifunction='on'
    assert pci.placed(domain, second.node) == (0, 7, 1, None)
    assert pci.read_placement(address_element(first)) == (0, 7, 0, True)


@pytest.mark.parametrize("device", ["<memballoon model='virtio'>{}</memballoon>",
                                    "<rng model='virtio'><backend model='random'/>{}</rng>"])
def test_a_balloon_or_rng_off_pci_is_refused_and_one_on_pci_is_not(device):
    """qemu.chardevs.check reads the <address> of a device conf.pci did not place."""
    def argv(address):
        text = SHARED_SLOT.replace("<interface", device.format(address) + "\n    <interface", 1)
        return _argv(load.load_text(text))

    refused = argv("<address type='ccw' cssid='0xfe' ssid='0x0' devno='0x0001'/>")
    assert refused.startswith("error: ") and "is for other machines" in refused
    driver = "virtio-balloon-pci" if device.startswith("<memballoon") else "virtio-rng-pci"
    on_slot_9 = argv("<address type='pci' slot='9'/>")
    assert f'"driver":"{driver}"' in on_slot_9 and '"addr":"0x9"' in on_slot_9, on_slot_9
    assert f'"driver":"{driver}"' in argv("")
