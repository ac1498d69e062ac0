"""virtnet's RelaxNG grammar: finding it, compiling it once, and validating against it.

libxml2's RelaxNG validator decides whether a document is valid. Its error log,
though, is vague exactly where users need help ("Extra element devices in
interleave", reported on the parent's line). So when a document is refused, a
second pass walks the document alongside the grammar files themselves and
reports the first problem in plain words: the element, the attribute, the value
and what would be accepted, on the offending element's line. The wording draws
on the grammar's <a:documentation> annotations, so the grammar stays the one
place that says what is allowed.

The walk lives in schemadiag.py and is imported only when a document is refused;
if it ever finds nothing wrong where libxml2 did, libxml2's own first message is
reported instead.
"""

import functools
import os
from pathlib import Path

from lxml import etree

from virtnet.errors import VirtnetError, XMLInputError

SCHEMA_DIR_VARIABLE = "VIRTNET_SCHEMA_DIR"
START_FILE = "domain.rng"


# ---------------------------------------------------------------- loading


def schema_dir() -> Path:
    """The folder holding domain.rng and the files it includes.

    $VIRTNET_SCHEMA_DIR wins; otherwise the package's own data, virtnet/schemas,
    wherever the package is (a checkout, a venv, pip --user, /usr/local). Found
    once per process for each value of those two (a batch validates many files).
    """
    key = (os.environ.get(SCHEMA_DIR_VARIABLE), __file__)
    folder = _found.get(key)
    if folder is None:
        folder = _found[key] = _find_schema_dir(*key)
    return folder


_found = {}


def _find_schema_dir(configured, module_file) -> Path:
    if configured:
        folder = Path(configured)
        if not (folder / START_FILE).is_file():
            raise VirtnetError(
                f"${SCHEMA_DIR_VARIABLE} is set to '{configured}', but there is no {START_FILE} in it"
            )
        return folder
    # What importlib.resources.files("virtnet") / "schemas" names for a package on disk (lxml needs
    # real files, for the includes), without that module's import (~15 ms of every start).
    folder = Path(module_file).parents[1] / "schemas"
    if (folder / START_FILE).is_file():
        return folder
    raise VirtnetError(
        f"cannot find virtnet's schema files (no {START_FILE} in {folder}: the package is incomplete); "
        f"reinstall virtnet, or set ${SCHEMA_DIR_VARIABLE} to the folder holding {START_FILE}"
    )


def schema(start_file=START_FILE) -> etree.RelaxNG:
    """The compiled grammar (the domain's, or START_FILE's: network.rng); compiled once per process
    for each schema folder."""
    return _compile(schema_dir(), start_file)


@functools.lru_cache(maxsize=None)
def _compile(folder: Path, start_file=START_FILE) -> etree.RelaxNG:
    start = folder / start_file
    try:
        return etree.RelaxNG(etree.parse(str(start)))
    except (etree.XMLSyntaxError, etree.RelaxNGParseError, OSError) as error:
        raise VirtnetError(f"the schema {start} cannot be loaded: {error}") from None


def validate(tree, filename: str, start_file=START_FILE) -> None:
    """Check a parsed document (a domain, or what START_FILE starts); raise XMLInputError naming the
    first problem."""
    relaxng = schema(start_file)
    if relaxng.validate(tree):
        return
    error_log = relaxng.error_log
    try:
        problem = diagnose(tree, start_file)
    except Exception:  # the explanation is a courtesy: never let it hide the refusal itself
        problem = None
    problem = problem or _libxml2_problem(error_log)
    raise XMLInputError(problem.message, file=filename, line=problem.line)


def diagnose(tree, start_file=START_FILE):
    """Walk a document (tree or root element) along the grammar; the first problem (a
    schemadiag.Problem), or None."""
    from virtnet.conf import schemadiag

    root = tree.getroot() if hasattr(tree, "getroot") else tree
    return schemadiag.first_problem(root, schema_dir() / start_file)


def _libxml2_problem(error_log):
    from virtnet.conf.schemadiag import Problem

    entries = [entry for entry in error_log if entry.message]
    located = [entry for entry in entries if entry.line > 0]
    entry = (located or entries or [None])[0]
    if entry is None:
        return Problem(None, "the document does not match virtnet's schema")
    return Problem(entry.line or None, f"the document does not match virtnet's schema: {entry.message}")
