"""The input pipeline: read → hardened parse → RelaxNG → model → semantic checks → defaults."""

from virtnet.conf import checks, defaults, schema, xmlparse
from virtnet.conf.domain import Domain
from virtnet.errors import XMLInputError


class Loaded:
    """A domain read from a file: the model, where it came from, and warnings to show."""

    def __init__(self, domain, filename, warnings):
        self.domain = domain
        self.filename = filename
        self.warnings = warnings


def load_tree(tree, filename):
    schema.validate(tree, filename)
    domain = Domain(tree.getroot())
    checks.check_domain(domain, filename)
    try:
        warnings = defaults.apply_defaults(domain)
    except XMLInputError as e:
        raise e.located(filename) from None
    return Loaded(domain, filename, warnings)


def load_file(path):
    """Load and check a domain file ('-' for standard input)."""
    filename, tree = xmlparse.parse_file(path)
    return load_tree(tree, filename)


def load_text(text, filename="<string>"):
    return load_tree(xmlparse.parse_bytes(text.encode(), filename), filename)
