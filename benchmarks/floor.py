"""The batch conversion's floor: read, parse and RelaxNG-validate every *.xml file of a folder with
lxml in one process, the way virtnet does (same parser options, virtnet's grammar compiled once),
and nothing else. Prints JSON: the file count and the seconds the loop took.

  python benchmarks/floor.py SCHEMA_DIR DIR

Kept to the imports the work needs (os, sys, time, lxml), so that its whole-process time is the
interpreter, lxml, one grammar compile and the per-file floor.
"""

import os
import sys
import time

from lxml import etree


def main(schema_dir, folder):
    relaxng = etree.RelaxNG(etree.parse(os.path.join(schema_dir, "domain.rng")))
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_blank_text=True, remove_comments=False)
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".xml"))
    start = time.perf_counter()
    for path in files:
        with open(path, "rb") as f:
            tree = etree.fromstring(f.read(), parser).getroottree()
        if not relaxng.validate(tree):
            sys.exit(f"{path}: not valid: {relaxng.error_log.last_error}")
    seconds = time.perf_counter() - start
    sys.stdout.write(f'{{"files": {len(files)}, "seconds": {seconds!r}}}\n')


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
