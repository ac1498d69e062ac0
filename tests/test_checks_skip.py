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
    run = checks.rules_for(checks.survey(domain.node)[0])
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


# -- the screens of the MAC, model and socket rules give the verdicts of the long way ----------------------


def _mac_variants():
    """MACs of every first octet, in two-digit, one-digit and upper-case spellings, and near misses."""
    for octet in range(256):
        for first in (f"{octet:02x}", f"{octet:02X}", f"{octet:x}"):
            yield first + ":54:00:AB:cd:0e"
            yield first + ":54:00:ab:cd:e"
            yield first + ":54:00:ab:cd:0g"
            yield first + ":54:00:ab:cd:0e:"
    yield from ("", ",", "52:54:00:ab:cd:0e,52:54:00:ab:cd:0f", " 52:54:00:ab:cd:0e")


def test_the_usual_mac_screen_passes_only_unicast_mac_addresses():
    from virtnet.conf import mac

    for value in _mac_variants():
        if checks._usual_unicast_macs([value]):
            assert mac.is_mac(value) and not mac.is_multicast(value), value
        else:
            assert not (len(value) == mac.TWO_DIGIT_LENGTH and mac.is_mac(value) and not mac.is_multicast(value)), value
    assert checks._usual_unicast_macs(["52:54:00:ab:cd:0e", "02:00:00:00:00:01"])
    assert not checks._usual_unicast_macs(["52:54:00:ab:cd:0e,52:54:00:ab:cd:0f"])  # one value, a separator


def test_seventeen_characters_make_a_mac_key_its_lower_case():
    """unique_macs' screen: a MAC address of 17 characters is its normal form in lower case."""
    from virtnet.conf import mac

    for value in _mac_variants():
        if len(value) == mac.TWO_DIGIT_LENGTH and mac.is_mac(value):
            assert mac.normalized(value) == value.lower(), value


TRICKY_MODEL_LISTS = (
    ["virtio"], ["virtio", "e1000"], ["virtio", "-x"], ["-"], ["a b"], ["virtio", "a b"], [""], ["virtio", ""],
    ["", "virtio"], [None], ["virtio", None], [], ["virtio\n"], ["\n"], ["é"], ["virtio", "e1000é"], ["١"],
    ["ｖｉｒｔｉｏ"], ["a,b"], ["a.b"], ["virtio", "rtl8139", "e1000e", "ne2k_pci", "x-y_z0"],
)


def _model_problems(models):
    """What model_name_characters finds on a domain whose interfaces name MODELS (its whole code)."""
    from types import SimpleNamespace

    ifaces = [SimpleNamespace(type="user", model_raw=m, line_of=lambda tag, n=n: n) for n, m in enumerate(models)]
    return list(checks.model_name_characters(SimpleNamespace(interfaces=ifaces)))


def test_the_model_screen_gives_the_verdicts_of_each_model_asked():
    """model_name_characters' screen (one match of the models joined) passes a list only where asking
    each model would find nothing; and for models all given, it passes every such list."""
    for models in TRICKY_MODEL_LISTS:
        each_plain = all(m is None or checks.MODEL_RE.fullmatch(m) for m in models)
        assert (not _model_problems(models)) == each_plain, models
        if checks._plain_models(models):
            assert each_plain, models
        elif models and None not in models:
            assert not each_plain, models


def test_the_multicast_screen_passes_only_ipv4_multicast_addresses():
    import ipaddress

    for first in range(256):
        for rest in (".0.0.1", ".255.255.255", ".01.0.0", ".256.1.1", ".1.1", ".1.1.1.1", ".1.1.١"):
            for value in (f"{first}{rest}", f"0{first}{rest}"):
                try:
                    multicast = ipaddress.ip_address(value).is_multicast
                except ValueError:
                    multicast = False
                assert bool(checks._IPV4_MULTICAST_RE.fullmatch(value)) == multicast, value


def test_the_selection_once_per_set_of_names_is_rules_for():
    for _, root in DOMAINS[:50]:
        names = checks.survey(root)[0]
        assert list(checks._rules_for_names(names)) == checks.rules_for(names)
