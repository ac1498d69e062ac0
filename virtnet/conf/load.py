"""The input pipeline: read → hardened parse → RelaxNG → model → semantic checks → defaults →
identities, then the model is frozen (read-once, see conf.xmlmodel) for the verbs that read it."""

from virtnet.conf import checks, defaults, identity, schema, xmlparse
from virtnet.conf.domain import Domain
from virtnet.conf.xmlmodel import freeze
from virtnet.errors import XMLInputError


class Loaded:
    """A domain read from a file: the model, where it came from, and warnings to show."""

    def __init__(self, domain, filename, warnings):
        self.domain = domain
        self.filename = filename
        self.warnings = warnings


def load_tree(tree, filename):
    schema.validate(tree, filename)
    # The rules only read: they get model objects of their own, frozen (each value read from the
    # tree once) and then dropped, which costs less than thawing them for the steps that edit.
    checks.check_domain(freeze(Domain(tree.getroot())), filename)
    domain = Domain(tree.getroot())
    try:
        warnings = defaults.apply_defaults(domain)
    except XMLInputError as e:
        raise e.located(filename) from None
    identity.prepare(domain)
    # Every step that edits the tree goes above this line. From here on the model is read-once;
    # a later write through it (dumpxml's live names, start's taps) thaws it again.
    freeze(domain)
    return Loaded(domain, filename, warnings)


def load_file(path):
    """Load and check a domain file ('-' for standard input)."""
    filename, tree = xmlparse.parse_file(path)
    return load_tree(tree, filename)


def load_text(text, filename="<string>"):
    return load_tree(xmlparse.parse_bytes(text.encode(), filename), filename)


def load_live(text, filename):
    """A running domain's live XML, as virtnet wrote it at start: already checked and canonical, so
    only parsed and given its identities back (its generated aliases and tap names stay as they are)."""
    domain = Domain(xmlparse.parse_bytes(text.encode(), filename).getroot())
    identity.prepare(domain)
    freeze(domain)
    return Loaded(domain, filename, [])
