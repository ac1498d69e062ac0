"""conf.pci's shortcut for plain pc guests (_place_in_turn, taken where _fits_in_turn says so) gives
what the full Layout gives: the same addresses, and the same error when pci.0 is full."""

from pathlib import Path

import pytest
from lxml import etree

from virtnet.conf import load, pci
from virtnet.errors import VirtnetError, XMLInputError

REPO = Path(__file__).resolve().parents[1]
CASES = sorted(p for p in (REPO / "testdata").rglob("*.xml") if not p.name.endswith(".out.xml"))


def _pc_domain(nics, balloon="none"):
    interfaces = "".join("\n    <interface type='user'/>" for _ in range(nics))
    return f"""<domain type='qemu'>
  <name>full</name>
  <uuid>568722cf-172f-5ba8-92e5-c59596b179f5</uuid>
  <memory unit='KiB'>219136</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>{interfaces}
    <memballoon model='{balloon}'/>
  </devices>
</domain>
"""


def _load(monkeypatch, text, layout_only, taken=None):
    """The domain of TEXT loaded, as its XML (bytes), or the VirtnetError loading it raises.
    LAYOUT_ONLY: never take the shortcut. TAKEN: a list that gets True for each shortcut taken."""
    fits = pci._fits_in_turn

    def fits_in_turn(*args):
        answer = not layout_only and fits(*args)
        if taken is not None and answer:
            taken.append(True)
        return answer

    with monkeypatch.context() as patched:
        patched.setattr(pci, "_fits_in_turn", fits_in_turn)
        try:
            return etree.tostring(load.load_text(text).domain.node)
        except VirtnetError as error:
            return error


def _error(result):
    assert isinstance(result, XMLInputError), result
    return str(result), result.line


@pytest.mark.parametrize("nics, balloon, culprit", [
    (31, "none", "<interface type='user'/>"),  # pci.0 has slots 2..31: the 31st NIC finds none
    (30, "virtio", "<memballoon model='virtio'/>"),  # the balloon is placed after the NICs
])
def test_a_full_pci_0_is_refused_as_by_the_layout(monkeypatch, nics, balloon, culprit):
    text = _pc_domain(nics, balloon)
    taken = []
    shortcut = _load(monkeypatch, text, layout_only=False, taken=taken)
    assert taken, "the shortcut was not taken: the test does not exercise it"
    message, line = _error(shortcut)
    assert "no free PCI slot left on pci.0" in message
    assert text.splitlines()[line - 1].strip() == culprit
    assert (message, line) == _error(_load(monkeypatch, text, layout_only=True))


def test_a_pci_0_just_full_is_accepted(monkeypatch):
    text = _pc_domain(30)
    taken = []
    placed = _load(monkeypatch, text, layout_only=False, taken=taken)
    assert taken and isinstance(placed, bytes), placed
    assert placed.count(b'slot="0x1f"') == 1
    assert placed == _load(monkeypatch, text, layout_only=True)


def test_testdata_domains_that_take_the_shortcut_get_the_layouts_addresses(monkeypatch):
    compared = 0
    for path in CASES:
        text = path.read_text()
        taken = []
        shortcut = _load(monkeypatch, text, layout_only=False, taken=taken)
        if not taken:
            continue  # refused before the addresses, or a domain the shortcut is not for
        layout = _load(monkeypatch, text, layout_only=True)
        if isinstance(shortcut, VirtnetError):
            assert isinstance(layout, VirtnetError), path
            assert (str(shortcut), shortcut.line) == (str(layout), layout.line), path
        else:
            assert shortcut == layout, path
            compared += shortcut.count(b'<address type="pci"')
    # Not vacuous: many testdata domains are plain pc guests with PCI devices to place.
    assert compared >= 200, compared
