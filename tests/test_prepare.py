"""The prepare step hands on what it has read: what the defaults give the identities of each
interface is what the identities would read themselves (conf.identity.read_nic)."""

from pathlib import Path

import pytest

from virtnet.conf import defaults, identity, load, schema, xmlparse
from virtnet.conf.domain import Domain
from virtnet.errors import VirtnetError

REPO = Path(__file__).resolve().parents[1]
CASES = sorted(p for p in (REPO / "testdata").rglob("*.xml") if not p.name.endswith(".out.xml"))


def _checked_tree(path):
    """The tree of PATH once read and checked, or None for an input that is refused before."""
    try:
        filename, tree = xmlparse.parse_file(str(path))
        schema.validate(tree, filename)
        load._check(tree, filename)
    except VirtnetError:
        return None
    return tree


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_defaults_hand_identity_what_it_would_read(path):
    tree = _checked_tree(path)
    if tree is None:
        pytest.skip("refused before the defaults")
    domain = Domain(tree.getroot())
    try:
        _, nics = defaults.apply_defaults(domain)
    except VirtnetError:
        pytest.skip("refused by the defaults")
    assert nics == [identity.read_nic(iface) for iface in domain.interfaces]
