"""`virtnet golden check|regen DIR`: a folder of golden cases, compared or rewritten.

The layout is virtnet's own (testdata/xml2argv, testdata/xml2xml, testdata/plan): NAME.xml is a
domain, and each expectation next to it says what to run —

  NAME.out.xml    `virtnet xml2xml NAME.xml` prints exactly this
  NAME.args       `virtnet xml2argv NAME.xml` prints exactly this (exit 0)
  NAME.err        `virtnet xml2argv NAME.xml` fails and prints exactly this on stderr
  NAME.plan       `virtnet plan NAME.xml` (--format text) prints exactly this
  NAME.plan.json  `virtnet plan --format json NAME.xml` prints exactly this

A case may have several expectations (NAME.args and NAME.plan, say); each is one check.
A case name selects xml2argv options as the golden tests do: '-keyval' → --syntax keyval,
'-standalone' → --standalone, '-network-only' → --network-only; and '-unprivileged' plans bridges
through qemu-bridge-helper, as `virtnet start --unprivileged` does (each as a suffix or followed
by '-'). Host facts are pinned unless given — capabilities (vhost-net), the runtime directory
(/run/virtnet) — and always pinned: the bridge helper path (/usr/lib/qemu/qemu-bridge-helper) and
no interface names in use, so the output does not depend on the machine. Files are named
DIR/NAME.xml exactly as DIR is given, and error messages quote that path: run from the folder the
.err files were written from (the repository root for testdata/).

A case without any expectation gets the kinds the rest of its folder has (xml2argv when the
folder has none, and xml2xml only in a folder without xml2argv cases); `check` counts it as
failed, `regen` writes it. The conversions are virtnet.convert's, the ones the CLI prints.
"""

import difflib
import os
import sys
from dataclasses import dataclass

from virtnet.errors import VirtnetError

DEFAULT_HOST_CAPS = "vhost-net"  # as `--host-caps` text
PINNED_HOST_CAPS = frozenset({"vhost-net"})
DEFAULT_RUNTIME_DIR = "/run/virtnet"
PINNED_BRIDGE_HELPER = "/usr/lib/qemu/qemu-bridge-helper"
PINNED_NAMES_IN_USE = frozenset()
OPTION_SUFFIXES = {"-keyval": ["--syntax", "keyval"], "-standalone": ["--standalone"],
                   "-network-only": ["--network-only"]}
UNPRIVILEGED_SUFFIX = "-unprivileged"

# kind → its expectation files (the first holds the output, a second the error) and the command shown.
KINDS = {
    "xml2xml": ((".out.xml",), "xml2xml"),
    "xml2argv": ((".args", ".err"), "xml2argv"),
    "plan": ((".plan",), "plan"),
    "plan-json": ((".plan.json",), "plan --format json"),
}
PLAN_FORMAT = {"plan": "text", "plan-json": "json"}


def pinned_options(host_caps=DEFAULT_HOST_CAPS, runtime_dir=DEFAULT_RUNTIME_DIR):
    """xml2argv options that make its output independent of the host it runs on."""
    return ["--host-caps", host_caps, "--runtime-dir", runtime_dir, "--bridge-helper", PINNED_BRIDGE_HELPER]


def _selects(name, suffix):
    return name.endswith(suffix) or f"{suffix}-" in name


def case_options(name):
    """The xml2argv command-line options a case name selects."""
    opts = []
    for suffix, extra in OPTION_SUFFIXES.items():
        if _selects(name, suffix):
            opts += extra
    return opts


def argv_settings(name):
    """The same selection as convert.xml2argv keywords (syntax, standalone, network_only)."""
    return {"syntax": "keyval" if _selects(name, "-keyval") else "json",
            "standalone": _selects(name, "-standalone"), "network_only": _selects(name, "-network-only")}


def plan_bridge_helper(name):
    """The bridge helper a case's plan uses: the pinned one for '-unprivileged' cases, else none."""
    return PINNED_BRIDGE_HELPER if _selects(name, UNPRIVILEGED_SUFFIX) else None


@dataclass
class Case:
    name: str
    source: str  # DIR/NAME.xml, as given
    kinds: tuple  # the checks to run, in KINDS order

    def path(self, suffix):
        return self.source[: -len(".xml")] + suffix


@dataclass
class Outcome:
    case: Case
    kind: str
    expected_file: str  # the expectation file that should hold `actual`
    actual: str
    stale_file: str = None  # an expectation of the other outcome kind, now wrong
    note: str = ""
    writable: bool = True  # False when `actual` is a failure that belongs in no expectation file
    status: int = 0  # the verb's exit status; None when virtnet crashed


def _kinds_with_expectations(directory, name):
    return [kind for kind, (suffixes, _) in KINDS.items()
            if any(os.path.exists(os.path.join(directory, name + s)) for s in suffixes)]


def cases(directory):
    directory = os.fspath(directory)
    names = sorted(n[: -len(".xml")] for n in os.listdir(directory)
                   if n.endswith(".xml") and not n.endswith(".out.xml"))
    found = {name: _kinds_with_expectations(directory, name) for name in names}
    present = {kind for kinds in found.values() for kind in kinds}
    if "xml2argv" in present:
        present.discard("xml2xml")
    default = tuple(kind for kind in KINDS if kind in present) or ("xml2argv",)
    return [Case(name, os.path.join(directory, name + ".xml"), tuple(kinds) or default)
            for name, kinds in found.items()]


def _error_text(error):
    """The line the CLI prints for ERROR."""
    if isinstance(error, VirtnetError):
        return f"virtnet: error: {error}\n"
    where = f"{error.filename}: " if error.filename else ""
    return f"virtnet: error: {where}{error.strerror or error}\n"


def _run(source, convert_loaded):
    """(exit status, stdout, stderr) of converting SOURCE, as the CLI would print them."""
    from virtnet import convert

    warnings = []
    try:
        loaded = convert.load(source)
        warnings += convert.diagnostics(loaded)
        result = convert_loaded(loaded)
    except (VirtnetError, OSError) as e:
        status = e.exit_code if isinstance(e, VirtnetError) else 1
        return status, "", "".join(f"virtnet: warning: {w}\n" for w in warnings) + _error_text(e)
    except Exception as e:  # a crash is reported as this case's failure, not raised
        return None, "", f"virtnet crashed: {type(e).__name__}: {e}\n"
    warnings += result.warnings
    return 0, result.text, "".join(f"virtnet: warning: {w}\n" for w in warnings)


def _as_caps(host_caps):
    """A set of capability names; 'vhost-net,…' text (as --host-caps takes it, without auto/none) too."""
    if isinstance(host_caps, str):
        return frozenset(c.strip() for c in host_caps.split(",") if c.strip() and c.strip() != "none")
    return frozenset(host_caps)


def run_check(case, kind, *, host_caps=PINNED_HOST_CAPS, runtime_dir=DEFAULT_RUNTIME_DIR):
    """What virtnet prints for one check of CASE, and which expectation file that output belongs in."""
    from virtnet import convert

    host_caps = _as_caps(host_caps)
    suffixes = KINDS[kind][0]
    if kind == "xml2argv":
        settings = argv_settings(case.name)
        status, out, err = _run(case.source, lambda loaded: convert.xml2argv(
            loaded, runtime_dir=runtime_dir, host_caps=host_caps, bridge_helper=PINNED_BRIDGE_HELPER, **settings))
        args_file, err_file = case.path(".args"), case.path(".err")
        if status is None:
            return Outcome(case, kind, args_file, err, note="crashed", writable=False, status=None)
        if status == 0:
            stale = err_file if os.path.exists(err_file) else None
            return Outcome(case, kind, args_file, out, stale, "virtnet accepted it" if stale else "")
        stale = args_file if os.path.exists(args_file) else None
        return Outcome(case, kind, err_file, err, stale, f"virtnet rejected it (exit {status})" if stale else "",
                       status=status)
    if kind == "xml2xml":
        status, out, err = _run(case.source, convert.xml2xml)
    else:
        status, out, err = _run(case.source, lambda loaded: convert.plan(
            loaded, PLAN_FORMAT[kind], runtime_dir=runtime_dir, host_caps=host_caps,
            names_in_use=PINNED_NAMES_IN_USE, bridge_helper=plan_bridge_helper(case.name)))
    expected_file = case.path(suffixes[0])
    if status == 0:
        return Outcome(case, kind, expected_file, out)
    note = "crashed" if status is None else f"failed, exit {status}"
    return Outcome(case, kind, expected_file, err, note=note, writable=False, status=status)


def run_case(case, **pinned):
    """Every check of CASE (host_caps= and runtime_dir= override the pinned ones)."""
    return [run_check(case, kind, **pinned) for kind in case.kinds]


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def diff(outcome):
    """A unified diff from the expectation to what virtnet printed ('' when they agree)."""
    expected_file = outcome.stale_file or outcome.expected_file
    expected = _read(expected_file)
    if expected is not None and not outcome.stale_file and not outcome.note and expected == outcome.actual:
        return ""
    label = f"virtnet {KINDS[outcome.kind][1]} {outcome.case.source}"
    if outcome.note:
        label += f" ({outcome.note})"
    if expected is None:
        header = f"missing expectation {expected_file}\n"
        expected = ""
    else:
        header = ""
    lines = difflib.unified_diff(expected.splitlines(keepends=True), outcome.actual.splitlines(keepends=True),
                                 fromfile=expected_file, tofile=label)
    text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
    return header + (text or f"--- {expected_file}\n+++ {label}\n")


def write(outcome):
    """Make the expectation files agree with a writable OUTCOME; returns what was done, one line each."""
    with open(outcome.expected_file, "w", encoding="utf-8") as f:
        f.write(outcome.actual)
    done = [f"wrote {outcome.expected_file}\n"]
    if outcome.stale_file:
        os.unlink(outcome.stale_file)
        done.append(f"removed {outcome.stale_file} ({outcome.note})\n")
    return "".join(done)


def _outcomes(directory, pinned):
    for case in cases(directory):
        yield from run_case(case, **pinned)


def check(directory, *, host_caps=PINNED_HOST_CAPS, runtime_dir=DEFAULT_RUNTIME_DIR, out=None):
    """Compare every check; print diffs and 'N passed, M failed'. Returns the exit status."""
    out = out or sys.stdout
    passed = failed = 0
    for outcome in _outcomes(directory, {"host_caps": host_caps, "runtime_dir": runtime_dir}):
        text = diff(outcome)
        if text:
            failed += 1
            out.write(text)
        else:
            passed += 1
    out.write(f"{passed} passed, {failed} failed\n")
    return 1 if failed else 0


def regen(directory, *, host_caps=PINNED_HOST_CAPS, runtime_dir=DEFAULT_RUNTIME_DIR, out=None):
    """Rewrite every expectation that differs; print what changed. Returns the exit status."""
    out = out or sys.stdout
    unchanged = rewritten = failed = 0
    for outcome in _outcomes(directory, {"host_caps": host_caps, "runtime_dir": runtime_dir}):
        if not outcome.writable:
            failed += 1
            out.write(diff(outcome))
        elif not diff(outcome):
            unchanged += 1
        else:
            rewritten += 1
            out.write(write(outcome))
    out.write(f"{unchanged} unchanged, {rewritten} rewritten" + (f", {failed} failed" if failed else "") + "\n")
    return 1 if failed else 0


def main(action, directory, *, host_caps=None, runtime_dir=None):
    """HOST_CAPS: a set of capability names (None: the pinned vhost-net)."""
    from virtnet.errors import UsageError

    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: not a directory of golden cases")
    run = check if action == "check" else regen
    return run(directory, host_caps=PINNED_HOST_CAPS if host_caps is None else _as_caps(host_caps),
               runtime_dir=runtime_dir or DEFAULT_RUNTIME_DIR)
