"""The prepare step hands on what it has read: what the defaults give the identities of each
interface is what the identities would read themselves (conf.identity.read_nic)."""

from pathlib import Path

from virtnet.conf import defaults, identity, load, schema, xmlparse
from virtnet.conf.domain import Domain
from virtnet.errors import VirtnetError

REPO = Path(__file__).resolve().parents[1]
CASES = sorted(p for p in (REPO / "testdata").rglob("*.xml") if not p.name.endswith(".out.xml"))


def _accepted_domain(path):
    """The domain of PATH once read, checked and given the defaults, with the NicReads the defaults
    handed on; None for an input refused on the way (most testdata cases are refusals)."""
    try:
        filename, tree = xmlparse.parse_file(str(path))
        schema.validate(tree, filename)
        load._check(tree, filename)
        domain = Domain(tree.getroot())
        _, nics = defaults.apply_defaults(domain)
    except VirtnetError:
        return None
    return domain, nics


def test_defaults_hand_identity_what_it_would_read():
    compared = 0
    for path in CASES:
        accepted = _accepted_domain(path)
        if accepted is None:
            continue
        domain, nics = accepted
        assert nics == [identity.read_nic(iface) for iface in domain.interfaces], path
        compared += len(nics)
    # Not vacuous: the testdata domains that get this far have many interfaces between them.
    assert compared >= 150, compared
