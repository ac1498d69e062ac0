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
import sys
from pathlib import Path

from lxml import etree

from virtnet.errors import VirtnetError, XMLInputError

SCHEMA_DIR_VARIABLE = "VIRTNET_SCHEMA_DIR"
START_FILE = "domain.rng"


# ---------------------------------------------------------------- loading


def schema_dir() -> Path:
    """The folder holding domain.rng and the files it includes.

    $VIRTNET_SCHEMA_DIR wins; then the checkout's schemas/ next to the package;
    then the installed copy under sys.prefix/share/virtnet/schemas. Found once per
    process for each value of those three (a batch validates many files).
    """
    key = (os.environ.get(SCHEMA_DIR_VARIABLE), __file__, sys.prefix)
    folder = _found.get(key)
    if folder is None:
        folder = _found[key] = _find_schema_dir(*key)
    return folder


_found = {}


def _find_schema_dir(configured, module_file, prefix) -> Path:
    if configured:
        folder = Path(configured)
        if not (folder / START_FILE).is_file():
            raise VirtnetError(
                f"${SCHEMA_DIR_VARIABLE} is set to '{configured}', but there is no {START_FILE} in it"
            )
        return folder
    candidates = [
        Path(module_file).resolve().parents[2] / "schemas",
        Path(prefix) / "share" / "virtnet" / "schemas",
    ]
    for folder in candidates:
        if (folder / START_FILE).is_file():
            return folder
    looked = ", ".join(str(folder) for folder in candidates)
    raise VirtnetError(
        f"cannot find virtnet's schema files (looked in {looked}); "
        f"set ${SCHEMA_DIR_VARIABLE} to the folder holding {START_FILE}"
    )


def schema() -> etree.RelaxNG:
    """The compiled grammar; compiled once per process for each schema folder."""
    return _compile(schema_dir())


@functools.lru_cache(maxsize=None)
def _compile(folder: Path) -> etree.RelaxNG:
    start = folder / START_FILE
    try:
        return etree.RelaxNG(etree.parse(str(start)))
    except (etree.XMLSyntaxError, etree.RelaxNGParseError, OSError) as error:
        raise VirtnetError(f"the schema {start} cannot be loaded: {error}") from None


def validate(tree, filename: str) -> None:
    """Check a parsed domain document; raise XMLInputError naming the first problem."""
    relaxng = schema()
    if relaxng.validate(tree):
        return
    error_log = relaxng.error_log
    try:
        problem = diagnose(tree)
    except Exception:  # the explanation is a courtesy: never let it hide the refusal itself
        problem = None
    problem = problem or _libxml2_problem(error_log)
    raise XMLInputError(problem.message, file=filename, line=problem.line)


def diagnose(tree):
    """Walk a document (tree or root element) along the grammar; the first problem (a
    schemadiag.Problem), or None."""
    from virtnet.conf import schemadiag

    root = tree.getroot() if hasattr(tree, "getroot") else tree
    return schemadiag.first_problem(root, schema_dir() / START_FILE)


def _libxml2_problem(error_log):
    from virtnet.conf.schemadiag import Problem

    entries = [entry for entry in error_log if entry.message]
    located = [entry for entry in entries if entry.line > 0]
    entry = (located or entries or [None])[0]
    if entry is None:
        return Problem(None, "the document does not match virtnet's schema")
    return Problem(entry.line or None, f"the document does not match virtnet's schema: {entry.message}")
