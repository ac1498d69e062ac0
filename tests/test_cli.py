"""The command line as a user meets it: real subprocesses, exit codes, messages, imports."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "testdata" / "xml2argv" / "net-eth-unmanaged-tap.xml"
BAD = REPO / "testdata" / "xml2argv" / "net-bridge-unmanaged.xml"


def virtnet(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "virtnet", *args], input=stdin, capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_standard_input_is_accepted_as_dash():
    result = virtnet("xml2argv", "--host-caps", "none", "--network-only", "-", stdin=SEED.read_text())
    assert result.returncode == 0, result.stderr
    assert '"driver":"virtio-net-pci"' in result.stdout and '"type":"tap"' in result.stdout


def test_a_refused_file_stops_the_batch_before_standard_input_is_read():
    """Files are loaded a chunk at a time, but standard input only once the files before it are:
    with a refused file first, the verb ends at once, its input still open and unread."""
    process = subprocess.Popen([sys.executable, "-m", "virtnet", "xml2argv", str(BAD), "-"], cwd=REPO,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = process.wait(timeout=30)  # stdin stays open: a read of it would block until the timeout
        stderr = process.stderr.read()
    finally:
        process.kill()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()
    assert status == 1 and "net-bridge-unmanaged.xml:14: " in stderr


def test_rejected_input_exits_1_with_one_line_and_no_traceback():
    result = virtnet("xml2argv", str(BAD.relative_to(REPO)))
    assert result.returncode == 1
    assert result.stderr.startswith("virtnet: error: testdata/xml2argv/net-bridge-unmanaged.xml:14: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_validate_refuses_what_xml2argv_refuses(tmp_path):
    """A rule the command-line builder enforces (here: offset='timezone' needs its timezone) makes
    validate fail too, with xml2argv's message: validate's "valid" means xml2argv and start accept it."""
    text = SEED.read_text()
    assert "<clock offset='utc'/>" in text
    bad = tmp_path / "tz.xml"
    bad.write_text(text.replace("<clock offset='utc'/>", "<clock offset='timezone'/>"))
    refused = virtnet("xml2argv", str(bad))
    assert refused.returncode == 1 and "needs the attribute timezone=" in refused.stderr, refused.stderr
    result = virtnet("validate", str(bad))
    assert (result.returncode, result.stdout, result.stderr) == (1, "", refused.stderr)
    assert virtnet("validate", str(SEED)).returncode == 0


def test_debug_shows_the_traceback():
    result = virtnet("--debug", "validate", str(BAD))
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["xml2argv"], ["xml2argv", "--syntax", "yaml", "x.xml"]])
def test_usage_errors_exit_2(args):
    result = virtnet(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_unknown_host_cap_is_a_usage_error():
    result = virtnet("xml2argv", "--host-caps", "warp-drive", str(SEED))
    assert result.returncode == 2
    assert "unknown capability 'warp-drive'" in result.stderr


def test_missing_file_is_a_clear_error():
    result = virtnet("validate", "/nonexistent/dom.xml")
    assert result.returncode == 1
    assert result.stderr == "virtnet: error: /nonexistent/dom.xml: cannot read the file: No such file or directory\n"


def test_oversized_document_is_refused(tmp_path):
    big = tmp_path / "big.xml"
    big.write_text("<domain type='qemu'><name>x</name><description>" + "a" * (1 << 20) + "</description></domain>")
    result = virtnet("validate", str(big))
    assert result.returncode == 1
    assert "larger than 1048576 bytes" in result.stderr


def test_entity_expansion_is_refused(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>\n'
                    "<domain type='qemu'><name>&b;</name></domain>\n")
    result = virtnet("validate", str(bomb))
    assert result.returncode == 1
    assert f"{bomb}:2: DOCTYPE and entity declarations are not accepted" in result.stderr


def test_every_verb_has_help():
    result = virtnet("--help")
    assert result.returncode == 0
    verbs = ["validate", "xml2xml", "xml2argv", "define", "undefine", "list", "dumpxml", "domiflist",
             "plan", "start", "destroy"]
    for verb in verbs:
        assert verb in result.stdout
        sub = virtnet(verb, "--help")
        assert sub.returncode == 0 and "usage: virtnet " + verb in sub.stdout


@pytest.mark.parametrize("verb", ["validate", "xml2xml", "xml2argv"])
def test_conversion_verbs_import_neither_pyroute2_nor_jinja2(verb):
    """Start-up stays lean: the pure verbs never load the netlink or template libraries."""
    code = ("import sys, contextlib, io\n"
            "from virtnet.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    status = main([{verb!r}, {str(SEED)!r}])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'jinja2'))\n"
            "print(status, heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "0 []", result.stdout + result.stderr


def test_batch_conversion_prefixes_each_file(tmp_path):
    result = virtnet("xml2argv", "--host-caps", "none", "--network-only", str(SEED),
                     str(REPO / "testdata" / "xml2argv" / "net-user.xml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("# ") == 2 and result.stdout.index(str(SEED)) < result.stdout.index("net-user.xml")


def test_a_batch_stops_at_the_first_refused_file_whatever_stage_refuses_it(tmp_path):
    """A batch is loaded stage by stage (all files parsed and validated, then checked, ...), yet
    the error is the first refused file's, as one by one: here the semantic error of b.xml, not
    the schema error of the later c.xml, which an earlier stage finds first."""
    cases = REPO / "testdata" / "xml2argv"
    (tmp_path / "a.xml").write_bytes(SEED.read_bytes())
    (tmp_path / "b.xml").write_bytes((cases / "controller-duplicate.xml").read_bytes())
    (tmp_path / "c.xml").write_bytes((cases / "disk-bad-bus.xml").read_bytes())
    alone = virtnet("xml2argv", str(tmp_path / "b.xml"))
    assert alone.returncode == 1 and "appears twice" in alone.stderr
    batch = virtnet("xml2argv", str(tmp_path))
    assert (batch.returncode, batch.stdout) == (1, "")
    assert batch.stderr.endswith(alone.stderr) and batch.stderr.count("virtnet: error: ") == 1
    (tmp_path / "b.xml").unlink()
    batch = virtnet("xml2argv", str(tmp_path))
    assert batch.returncode == 1 and "bus='nvme' is not valid" in batch.stderr


def test_loading_a_batch_gives_each_file_what_loading_it_alone_gives(monkeypatch):
    """load_files, across chunk boundaries (a chunk of 2 here), against load_file file by file:
    the same domains and warnings, the same errors at every stage."""
    from virtnet.conf import load
    from virtnet.conf.format import format_domain
    from virtnet.errors import VirtnetError

    cases = REPO / "testdata" / "xml2argv"
    paths = [str(cases / f"{name}.xml") for name in ("net-user", "controller-duplicate", "disk-bad-bus",
                                                      "net-eth-unmanaged-tap", "no-such-file")]
    paths.append(str(cases / "net-bridge-e1000-driver.xml"))  # a warning: its <driver> is dropped

    def alone(path):
        try:
            loaded = load.load_file(path)
        except VirtnetError as error:
            return str(error)
        return format_domain(loaded.domain), loaded.warnings

    def batched(outcome):
        if isinstance(outcome, VirtnetError):
            return str(outcome)
        return format_domain(outcome.domain), outcome.warnings

    monkeypatch.setattr(load, "BATCH_CHUNK", 2)
    outcomes = list(load.load_files(paths))
    assert [path for path, _ in outcomes] == paths
    assert [batched(outcome) for _, outcome in outcomes] == [alone(path) for path in paths]
    assert sum(isinstance(outcome, VirtnetError) for _, outcome in outcomes) == 3
    assert outcomes[-1][1].warnings


def test_a_directory_without_domains_is_an_error(tmp_path):
    result = virtnet("xml2argv", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"virtnet: error: {tmp_path}: the directory holds no *.xml domain files\n"


def test_a_state_dir_that_is_a_file_is_one_line_not_a_traceback(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = virtnet("list", "--all", "--state-dir", str(not_a_dir))
    assert result.returncode == 1
    assert result.stderr.startswith("virtnet: error: ") and len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and str(not_a_dir) in result.stderr


@pytest.mark.parametrize("args, hint", [
    (["lst"], "argument VERB: invalid choice: 'lst' (did you mean 'list'?)"),
    (["destory", "web"], "argument VERB: invalid choice: 'destory' (did you mean 'destroy'?)"),
    (["plan", "--format", "jsn", "x.xml"], "argument --format: invalid choice: 'jsn' (did you mean 'json'?)"),
])
def test_a_near_miss_gets_a_did_you_mean(args, hint):
    result = virtnet(*args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(hint), result.stderr


def test_a_far_miss_lists_the_verbs():
    result = virtnet("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate' (choose from 'validate', " in result.stderr, result.stderr


def test_start_of_a_file_suggests_define_or_create(tmp_path):
    result = virtnet("--state-dir", str(tmp_path), "start", str(SEED))
    assert result.returncode == 2
    assert result.stderr == (f"virtnet: error: start takes a defined domain's name, and '{SEED}' is a file: "
                             f"`virtnet define {SEED}` keeps it and `virtnet start NAME` then starts it, or "
                             f"`virtnet create {SEED}` starts it without keeping it\n")
    result = virtnet("--state-dir", str(tmp_path), "start", "base.xml")
    assert result.returncode == 2 and "'base.xml' looks like a file name: `virtnet define base.xml`" in result.stderr


def test_a_domain_named_like_a_file_is_started_by_that_name(tmp_path):
    from virtnet import domains

    named = tmp_path / "web.xml"
    named.write_text(SEED.read_text().replace("<name>QEMUGuest1</name>", "<name>web.xml</name>"))
    state = tmp_path / "state"
    assert virtnet("--state-dir", str(state), "define", str(named)).returncode == 0
    domains.refuse_file_as_name(domains.open_store(state, tmp_path / "run"), "start", "web.xml")  # no error
    with pytest.raises(Exception, match="looks like a file name"):
        domains.refuse_file_as_name(domains.open_store(state, tmp_path / "run"), "start", "other.xml")


def test_every_verb_help_ends_with_an_example():
    """`virtnet VERB --help` ends with an example that runs VERB (setup.py also makes the man page's
    EXAMPLES section of them)."""
    from virtnet import cli

    parser = cli.build_parser()
    (verbs,) = [action for action in parser._actions if action.dest == "verb"]
    assert sorted(verbs.choices) == sorted(cli.COMMANDS)
    for verb, sub in verbs.choices.items():
        help_text = sub.format_help()
        examples = help_text[help_text.rfind("\nexample"):]
        assert examples.startswith(("\nexample:\n  virtnet ", "\nexamples:\n  virtnet ")), (verb, help_text)
        assert f"virtnet {verb} " in examples, (verb, examples)


@pytest.mark.parametrize("args", [["xml2argv", str(SEED)], ["xml2argv", str(BAD)], ["xml2xml", str(SEED)],
                                  ["validate", str(SEED)]])
def test_a_conversion_verb_run_in_process_leaves_the_cycle_collector_as_it_found_it(args):
    """The conversion verbs run without the cycle collector; main(ARGV) turns it back on, and a
    process that ends with the verb (main() reads its command line) freezes instead."""
    code = ("import gc, sys, contextlib, io\n"
            "from virtnet.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    status = main({args!r})\n"
            "    enabled_after_main = gc.isenabled()\n"
            f"    sys.argv = ['virtnet', *{args!r}]\n"
            "    main()\n"
            "print(enabled_after_main, gc.isenabled(), gc.get_freeze_count() > 0)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "True False True", result.stdout + result.stderr


def test_a_conversion_leaves_no_cycles_behind():
    """What a conversion verb makes is freed without the cycle collector (which it runs without).
    A refused file may leave some (an error's traceback), but it also ends the verb."""
    code = ("import gc, contextlib, io, pathlib\n"
            "from virtnet.cli import main\n"
            "files = [str(p) for p in sorted(pathlib.Path('testdata/xml2argv').glob('*.xml'))]\n"
            "left, converted = {}, 0\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    main(['xml2argv', '--host-caps', 'none', files[0]])  # the first conversion's one-time state\n"
            "    gc.collect()\n"
            "    gc.disable()\n"
            "    for f in files:\n"
            "        for verb in (['xml2argv', '--host-caps', 'none'], ['xml2argv', '--standalone'], ['xml2xml']):\n"
            "            if main([*verb, f]) == 0:\n"
            "                converted += 1\n"
            "                left[f] = gc.collect()\n"
            "            gc.collect()\n"
            "print(converted > 100, {f: n for f, n in left.items() if n})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "True {}", result.stdout + result.stderr
