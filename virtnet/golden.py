"""`virtnet golden check|regen DIR`: a folder of golden cases, compared or rewritten.

The layout is virtnet's own (testdata/xml2argv, testdata/xml2xml): NAME.xml is a domain, and its
expectation says what to run —

  NAME.out.xml   `virtnet xml2xml NAME.xml` prints exactly this
  NAME.args      `virtnet xml2argv NAME.xml` prints exactly this (exit 0)
  NAME.err       `virtnet xml2argv NAME.xml` fails and prints exactly this on stderr

A case name selects xml2argv options as the golden tests do: '-keyval' → --syntax keyval,
'-standalone' → --standalone, '-network-only' → --network-only (as a suffix or followed by '-').
Host capabilities, the runtime directory and the bridge helper path are pinned (vhost-net,
/run/virtnet, /usr/lib/qemu/qemu-bridge-helper) unless given, so the output does not depend on the
machine. Files are named DIR/NAME.xml exactly as DIR is given,
and error messages quote that path: run from the folder the .err files were written from (the
repository root for testdata/).

A case without any expectation takes the folder's kind (xml2xml when the folder holds .out.xml
files only); `check` counts it as failed, `regen` writes it.
"""

import contextlib
import difflib
import io
import os
import sys
from dataclasses import dataclass

DEFAULT_HOST_CAPS = "vhost-net"
DEFAULT_RUNTIME_DIR = "/run/virtnet"
PINNED_BRIDGE_HELPER = "/usr/lib/qemu/qemu-bridge-helper"
OPTION_SUFFIXES = {"-keyval": ["--syntax", "keyval"], "-standalone": ["--standalone"],
                   "-network-only": ["--network-only"]}


def pinned_options(host_caps=DEFAULT_HOST_CAPS, runtime_dir=DEFAULT_RUNTIME_DIR):
    """xml2argv options that make its output independent of the host it runs on."""
    return ["--host-caps", host_caps, "--runtime-dir", runtime_dir, "--bridge-helper", PINNED_BRIDGE_HELPER]


def case_options(name):
    opts = []
    for suffix, extra in OPTION_SUFFIXES.items():
        if name.endswith(suffix) or f"{suffix}-" in name:
            opts += extra
    return opts


@dataclass
class Case:
    name: str
    source: str  # DIR/NAME.xml, as given
    kind: str  # "xml2xml" or "xml2argv"

    def path(self, suffix):
        return self.source[: -len(".xml")] + suffix


@dataclass
class Outcome:
    case: Case
    expected_file: str  # the expectation file that should hold `actual`
    actual: str
    stale_file: str = None  # an expectation of the other outcome kind, now wrong
    note: str = ""
    writable: bool = True  # False when `actual` is a failure that belongs in no expectation file


def cases(directory):
    names = sorted(n[: -len(".xml")] for n in os.listdir(directory)
                   if n.endswith(".xml") and not n.endswith(".out.xml"))
    has = {suffix: any(os.path.exists(os.path.join(directory, n + suffix)) for n in names)
           for suffix in (".out.xml", ".args", ".err")}
    folder_kind = "xml2xml" if has[".out.xml"] and not (has[".args"] or has[".err"]) else "xml2argv"
    found = []
    for name in names:
        source = os.path.join(directory, name + ".xml")
        if os.path.exists(os.path.join(directory, name + ".out.xml")):
            kind = "xml2xml"
        elif any(os.path.exists(os.path.join(directory, name + s)) for s in (".args", ".err")):
            kind = "xml2argv"
        else:
            kind = folder_kind
        found.append(Case(name, source, kind))
    return found


def _run_cli(argv):
    from virtnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except Exception as e:  # a crash is reported as this case's failure, not raised
            return None, out.getvalue(), f"virtnet crashed: {type(e).__name__}: {e}\n"
    return status, out.getvalue(), err.getvalue()


def run_case(case, *, host_caps, runtime_dir):
    """What virtnet prints for CASE, and which expectation file that output belongs in."""
    if case.kind == "xml2xml":
        status, out, err = _run_cli(["xml2xml", case.source])
        if status == 0:
            return Outcome(case, case.path(".out.xml"), out)
        return Outcome(case, case.path(".out.xml"), err, note=f"failed, exit {status}", writable=False)
    argv = ["xml2argv", *pinned_options(host_caps, runtime_dir), *case_options(case.name), case.source]
    status, out, err = _run_cli(argv)
    args_file, err_file = case.path(".args"), case.path(".err")
    if status is None:
        return Outcome(case, args_file, err, note="crashed", writable=False)
    if status == 0:
        stale = err_file if os.path.exists(err_file) else None
        return Outcome(case, args_file, out, stale, "virtnet accepted it" if stale else "")
    stale = args_file if os.path.exists(args_file) else None
    return Outcome(case, err_file, err, stale, f"virtnet rejected it (exit {status})" if stale else "")


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
    label = f"virtnet {outcome.case.kind} {outcome.case.source}"
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


def check(directory, *, host_caps=DEFAULT_HOST_CAPS, runtime_dir=DEFAULT_RUNTIME_DIR, out=None):
    """Compare every case; print diffs and 'N passed, M failed'. Returns the exit status."""
    out = out or sys.stdout
    passed = failed = 0
    for case in cases(directory):
        text = diff(run_case(case, host_caps=host_caps, runtime_dir=runtime_dir))
        if text:
            failed += 1
            out.write(text)
        else:
            passed += 1
    out.write(f"{passed} passed, {failed} failed\n")
    return 1 if failed else 0


def regen(directory, *, host_caps=DEFAULT_HOST_CAPS, runtime_dir=DEFAULT_RUNTIME_DIR, out=None):
    """Rewrite every expectation that differs; print what changed. Returns the exit status."""
    out = out or sys.stdout
    unchanged = rewritten = failed = 0
    for case in cases(directory):
        outcome = run_case(case, host_caps=host_caps, runtime_dir=runtime_dir)
        if not outcome.writable:
            failed += 1
            out.write(diff(outcome))
            continue
        if not diff(outcome):
            unchanged += 1
            continue
        rewritten += 1
        with open(outcome.expected_file, "w", encoding="utf-8") as f:
            f.write(outcome.actual)
        out.write(f"wrote {outcome.expected_file}\n")
        if outcome.stale_file:
            os.unlink(outcome.stale_file)
            out.write(f"removed {outcome.stale_file} ({outcome.note})\n")
    out.write(f"{unchanged} unchanged, {rewritten} rewritten" + (f", {failed} failed" if failed else "") + "\n")
    return 1 if failed else 0


def main(action, directory, *, host_caps=None, runtime_dir=None):
    from virtnet.errors import UsageError

    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: not a directory of golden cases")
    run = check if action == "check" else regen
    return run(directory, host_caps=DEFAULT_HOST_CAPS if host_caps is None else host_caps,
               runtime_dir=runtime_dir or DEFAULT_RUNTIME_DIR)
