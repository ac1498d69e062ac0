"""The prepare step hands on what it has read: what the defaults give the identities of each
interface is what the identities would read themselves (conf.identity.read_nic), and the device
index they give is the one <devices> has once the defaults are done (conf.guest.device_index)."""

from pathlib import Path

from virtnet.conf import defaults, guest, identity, load
from virtnet.conf.domain import Domain
from virtnet.errors import VirtnetError

REPO = Path(__file__).resolve().parents[1]
CASES = sorted(p for p in (REPO / "testdata").rglob("*.xml") if not p.name.endswith(".out.xml"))


def _handed_on(path, monkeypatch):
    """(domain, nics, index) as the defaults handed them on while PATH was loaded (load_file's own
    pipeline), read again before the identities change the domain; None for an input refused on
    the way (most testdata cases are refusals)."""
    captured = []

    def apply_defaults(domain, interface_children=None):
        warnings, nics, index = original(domain, interface_children)
        again = ([identity.read_nic(iface) for iface in domain.interfaces],
                 guest.device_index(domain.devices_node()))
        captured.append((domain, nics, index, again))
        return warnings, nics, index

    original = defaults.apply_defaults
    with monkeypatch.context() as patched:
        patched.setattr(defaults, "apply_defaults", apply_defaults)
        try:
            load.load_file(str(path))
        except VirtnetError:
            return None
    return captured[0]


def test_defaults_hand_identity_what_it_would_read(monkeypatch):
    compared = 0
    for path in CASES:
        handed = _handed_on(path, monkeypatch)
        if handed is None:
            continue
        domain, nics, index, (nics_read, index_read) = handed
        assert nics == nics_read, path
        assert index == index_read, path
        compared += len(nics)
    # Not vacuous: the testdata domains that get this far have many interfaces between them.
    assert compared >= 150, compared


def test_the_checks_hand_the_defaults_each_interfaces_first_children():
    handed = 0
    for path in CASES:
        try:
            tree, filename, seen = load._check(*load._parse_and_validate(str(path)))
        except VirtnetError:
            continue
        interfaces = Domain(tree.getroot()).interfaces
        assert seen.keys() == {iface.node for iface in interfaces}, path
        for iface in interfaces:
            assert seen[iface.node] == iface.first_children(), path
            handed += 1
    assert handed >= 150, handed  # not vacuous
