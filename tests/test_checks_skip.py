"""check_domain skips a rule registered with rule_about when the domain's devices hold none of the
elements the rule names. A rule so skipped must have had nothing to find: run directly on every
schema-valid domain of testdata/ (and of libvirt's corpus, when it is there), it yields nothing.
A wrong rule_about declaration (an element forgotten) fails here rather than hiding a problem.
The screen plain_values takes is held to the verdicts of the long way below."""

from pathlib import Path

import pytest

from virtnet.conf import checks, schema
from virtnet.conf.domain import Domain
from virtnet.conf.xmlmodel import freeze
from virtnet.conf.xmlparse import parse_file
from virtnet.errors import VirtnetError

REPO = Path(__file__).resolve().parents[1]
CORPUS = (REPO / ".." / "shared" / "conformance" / "libvirt").resolve()


def _domain_files():
    files = sorted((REPO / "testdata").rglob("*.xml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.rglob("*.xml"))
    return files


def _valid_domains():
    """(path, root element) of every file that parses, is a <domain> and passes the grammar."""
    for path in _domain_files():
        try:
            _, tree = parse_file(str(path))
            if tree.getroot().tag != "domain":
                continue
            schema.validate(tree, str(path))
        except VirtnetError:
            continue
        yield path, tree.getroot()


DOMAINS = list(_valid_domains())


def test_there_are_domains_to_judge_by():
    assert len(DOMAINS) > 100


def skipped_problems(domain):
    """(rule name, what it finds) of every rule check_domain does not run on DOMAIN that finds something."""
    run = checks.rules_for(checks.device_element_names(domain))
    return [(func.__name__, found) for func in checks.RULES if func not in run for found in [list(func(domain))]
            if found]


@pytest.mark.parametrize("path, root", DOMAINS, ids=[str(p.relative_to(p.parents[1])) for p, _ in DOMAINS])
def test_skipped_rules_find_nothing(path, root):
    missed = skipped_problems(freeze(Domain(root)))
    assert not missed, (f"{path.name}: rules skipped although they find something (their rule_about names "
                        f"too few elements): {missed}")


def test_a_wrong_declaration_is_caught(monkeypatch):
    """The check above can fail: declared as about <filterref>, the rule about invalid MACs would be
    skipped on the domains where it finds one."""
    monkeypatch.setattr(checks.mac_is_valid_unicast, "about", frozenset({"filterref"}))
    caught = [path.name for path, root in DOMAINS if skipped_problems(freeze(Domain(root)))]
    assert caught, "no domain of testdata/ has an invalid MAC and no <filterref>: the guard is not exercised"


# -- the screen of plain_values gives the verdicts of the long way ---------------------------------------


def test_a_printable_value_without_spaces_cannot_be_padded():
    """plain_values skips the padding rule when every value is printable and holds no space: every
    other character str.strip removes must then be non-printable."""
    import sys

    assert not [hex(c) for c in range(sys.maxunicode + 1)
                if chr(c).isspace() and chr(c) != " " and chr(c).isprintable()]
