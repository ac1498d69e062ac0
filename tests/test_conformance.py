"""libvirt's own net-* test corpus as a judge: no regression from tests/conformance_baseline.tsv.

The corpus is reference data outside the repository (../shared/conformance/libvirt); the tests
that need it skip, saying so, when it is absent. The comparison rules and the one list of
out-of-scope cases live in tools/conformance.py (`make conformance` prints the same table); the
tests below also check that those rules can tell a difference when there is one.
"""

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TOOLS, load_tool

REPO = Path(__file__).resolve().parents[1]
TOOL = TOOLS / "conformance.py"
conf = load_tool(TOOL.name)
main = conf.main
CORPUS = REPO / conf.DEFAULT_CORPUS
BASELINE = REPO / "tests" / "conformance_baseline.tsv"


@pytest.fixture(scope="module")
def corpus():
    if not (CORPUS / "xml2argv").is_dir():
        pytest.skip(f"libvirt's corpus is not at {CORPUS} (reference data kept outside the repository)")
    return CORPUS


@pytest.fixture(scope="module")
def results(corpus):
    return conf.run_corpus(corpus)


def run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


# -- the corpus against the baseline ------------------------------------------------------------------

def test_no_regression_from_the_recorded_baseline(results):
    problems = conf.regressions(results, conf.read_baseline(BASELINE))
    assert not problems, ("conformance regressed (if intended, re-record: python tools/conformance.py --tsv > "
                          "tests/conformance_baseline.tsv):\n" + "\n".join(problems))


def test_every_case_of_the_corpus_is_judged(corpus, results):
    # INDEX.md: 36 cases run by libvirt's xml2argv test, 34 by its xml2xml test.
    assert len(conf.argv_cases(corpus)) == 36
    assert len(conf.xml_cases(corpus)) == 34
    assert {r.status for r in results} <= set(conf.STATUSES)
    assert not [r for r in results if r.status == "virtnet-crashes"], "virtnet crashed on a corpus input"


def test_out_of_scope_and_stricter_lists_name_real_cases_with_reasons(corpus):
    names = set(conf.argv_cases(corpus)) | set(conf.xml_cases(corpus))
    for table in (conf.OUT_OF_SCOPE, conf.STRICTER):
        assert set(table) <= names, f"not corpus cases: {sorted(set(table) - names)}"
        assert all(len(reason) > 20 for reason in table.values())
    assert not set(conf.OUT_OF_SCOPE) & set(conf.STRICTER)


def test_in_scope_cases_that_agree_today(results):
    """A sample the baseline must never lose, spelled out so the table cannot drift silently."""
    status = {(r.kind, r.case): r.status for r in results}
    for case in ("net-eth", "net-eth-ifname", "net-eth-unmanaged-tap", "net-user-addr", "net-user-passt",
                 "net-vhostuser", "net-vhostuser-multiq", "net-server", "net-udp", "net-virtio-device"):
        assert status[("argv", case)] == "match", case
    for case in ("net-user-slirp-portforward", "net-virtio-rxqueuesize-invalid-size", "vhost_queues-invalid"):
        assert status[("argv", case)] == "both-reject", case
    assert status[("xml", "net-user-passt")] == "match"


def test_stricter_mcast_case_is_refused_by_qemu_with_libvirts_own_options(corpus):
    """Where virtnet is stricter because QEMU would refuse, QEMU must really refuse libvirt's line."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("needs qemu-system-x86_64")
    for case in ("net-mcast",):
        assert case in conf.STRICTER
        path, kind = conf.argv_expectation(corpus, case)
        assert kind == "args"
        argv = [qemu, "-S", "-machine", "pc", "-accel", "tcg", "-display", "none", "-nodefaults",
                "-no-user-config", "-m", "64"]
        for option, value in conf.network_option_words(conf.args_file_tokens(path.read_text())):
            argv += [option, value]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        assert proc.returncode != 0, f"{case}: QEMU accepted libvirt's options"
        assert "does not contain a multicast address" in proc.stderr, proc.stderr


# -- the command line -----------------------------------------------------------------------------------------

def test_tool_prints_the_table_and_totals(corpus):
    status, out, _ = run([str(corpus)])
    assert status == 0
    assert out.splitlines()[0].split() == ["kind", "case", "status", "detail"]
    assert "argv  net-eth " in out and "xml   net-eth " in out
    assert out.rstrip().splitlines()[-2].startswith("xml2argv: 36 cases: ")
    assert out.rstrip().splitlines()[-1].startswith("xml2xml: 34 cases: ")


def test_tool_with_baseline_exits_1_on_a_regression(corpus, tmp_path):
    status, out, _ = run([str(corpus), "--baseline", str(BASELINE)])
    assert (status, out.splitlines()[-1]) == (0, f"no regressions from {BASELINE}")
    # Pretend a case that does not match today (but is in scope) used to match.
    line = next(line for line in BASELINE.read_text().splitlines() if not line.startswith("#")
                and line.split("\t")[-1] not in ("match", "both-reject", "out-of-scope"))
    kind, case, status_now = line.split("\t")
    doctored = tmp_path / "baseline.tsv"
    doctored.write_text(BASELINE.read_text().replace(line, f"{kind}\t{case}\tmatch"))
    status, out, _ = run([str(corpus), "--baseline", str(doctored)])
    assert status == 1
    assert f"{kind} {case}: match -> {status_now}" in out


def test_tool_tsv_output_is_a_readable_baseline(corpus, tmp_path):
    status, out, _ = run([str(corpus), "--tsv"])
    assert status == 0
    path = tmp_path / "b.tsv"
    path.write_text(out)
    # The same cases as the committed baseline: the tool still finds every case it found then.
    assert set(conf.read_baseline(path)) == set(conf.read_baseline(BASELINE))


def test_tool_refuses_a_folder_that_is_no_corpus(tmp_path):
    status, _, err = run([str(tmp_path)])
    assert status == 2
    assert "not a libvirt corpus" in err


def test_tool_runs_as_a_script_from_anywhere(tmp_path):
    proc = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"conformance.py: error: {tmp_path}: not a libvirt corpus (no xml2argv/ folder inside)\n"


def test_conformance_is_not_a_virtnet_verb():
    from virtnet.cli import COMMANDS

    assert "conformance" not in COMMANDS


def test_make_target_runs_the_tool_against_the_baseline():
    if shutil.which("make") is None:
        pytest.skip("needs make")
    proc = subprocess.run(["make", "-n", "conformance"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "tools/conformance.py --baseline tests/conformance_baseline.tsv" in proc.stdout


# -- the comparison machinery can see differences -------------------------------------------------------

def test_keyval_and_json_spellings_parse_to_the_same_properties():
    json_value = '{"type":"stream","addr":{"type":"unix","path":"/a,b"},"server":false,"id":"hostnet0"}'
    keyval = "stream,addr.type=unix,addr.path=/a,,b,server=off,id=hostnet0"
    assert conf.parse_option("-netdev", json_value) == conf.parse_option("-netdev", keyval) == {
        "type": "stream", "addr.type": "unix", "addr.path": "/a,b", "server": "off", "id": "hostnet0"}
    assert conf.split_keyval("a,,b,c") == ["a,b", "c"]


def _opts(*pairs):
    return [(option, conf.parse_option(option, value)) for option, value in pairs]


def test_fd_numbers_are_ignored_but_their_count_is_not():
    libvirt = _opts(("-netdev", '{"type":"tap","fds":"102:103","id":"hostnet0"}'))
    same = _opts(("-netdev", '{"type":"tap","fds":"3:4","id":"hostnet0"}'))
    fewer = _opts(("-netdev", '{"type":"tap","fd":"3","id":"hostnet0"}'))
    kw = dict(kvm=True, notes=[])
    norm = conf.normalise
    assert conf.compare_options(norm(libvirt, libvirt_side=True, **kw), norm(same, libvirt_side=False, **kw)) == []
    libvirt = _opts(("-netdev", '{"type":"tap","fds":"102:103","id":"hostnet0"}'))
    diffs = conf.compare_options(norm(libvirt, libvirt_side=True, **kw), norm(fewer, libvirt_side=False, **kw))
    assert diffs == ["-netdev hostnet0: lacks fds=<fd>:<fd>, adds fd=<fd>"]


def test_a_changed_missing_or_extra_property_or_option_is_a_difference():
    libvirt = _opts(("-device", '{"driver":"virtio-net-pci","rss":true,"netdev":"hostnet0","id":"net0","mac":"52:54:00:00:00:01"}'))
    ours = _opts(("-device", '{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:00:00:02","x":1}'),
                 ("-netdev", '{"type":"user","id":"hostnet0"}'))
    assert conf.compare_options(libvirt, ours) == [
        "virtnet adds -netdev hostnet0",
        "-device net0: lacks rss=on, mac=52:54:00:00:00:02 (libvirt 52:54:00:00:00:01), adds x=1"]


def test_vhost_of_libvirts_test_mock_is_dropped_only_for_non_kvm_domains():
    line = '{"type":"tap","fd":"3","vhost":true,"vhostfd":"44","id":"hostnet0"}'
    notes = []
    tcg = conf.normalise(_opts(("-netdev", line)), libvirt_side=True, kvm=False, notes=notes)
    assert tcg[0][1] == {"type": "tap", "fd": "<fd>", "id": "hostnet0"} and notes
    kvm = conf.normalise(_opts(("-netdev", line)), libvirt_side=True, kvm=True, notes=[])
    assert kvm[0][1]["vhost"] == "on"
    ours = conf.normalise(_opts(("-netdev", line)), libvirt_side=False, kvm=False, notes=[])
    assert ours[0][1]["vhost"] == "on", "virtnet's own vhost must never be dropped"


def test_reconnect_ms_reads_as_reconnect_seconds():
    opts = conf.normalise(_opts(("-chardev", "socket,id=charnet0,path=/s,reconnect-ms=10000")),
                          libvirt_side=True, kvm=False, notes=[])
    assert opts[0][1] == {"backend": "socket", "id": "charnet0", "path": "/s", "reconnect": "10"}


def test_network_options_keep_nics_netdevs_and_their_chardevs_only():
    tokens = ["qemu", "-chardev", "socket,id=charmonitor,fd=1729,server=on,wait=off",
              "-device", '{"driver":"piix3-usb-uhci","id":"usb"}',
              "-chardev", "socket,id=charnet0,path=/tmp/v.sock",
              "-netdev", '{"type":"vhost-user","chardev":"charnet0","id":"hostnet0"}',
              "-device", '{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0"}']
    kept = conf.network_options(tokens)
    assert [(o, p["id"]) for o, p in kept] == [("-chardev", "charnet0"), ("-netdev", "hostnet0"), ("-device", "net0")]


def _xml(body):
    return conf._parse(f"<domain><devices>{body}</devices></domain>".encode())


def test_interface_comparison_ignores_attribute_order_and_whitespace_but_not_content():
    source = _xml("<interface type='user'><mac address='52:54:00:00:00:01'/></interface>")
    libvirt = _xml("<interface type='user'>\n  <mac address='52:54:00:00:00:01'/>\n"
                   "  <model type='rtl8139'/>\n  <address type='pci' domain='0x0000' bus='0x00' slot='0x03'/>\n</interface>")
    same = _xml("<interface type='user'><mac address='52:54:00:00:00:01'/><model type='rtl8139'/>"
                "<address slot='0x02' bus='0x00' domain='0x0000' type='pci'/></interface>")
    diffs, notes = conf.compare_interfaces(source, libvirt, same)
    assert diffs == []
    assert notes == ["interface 0: generated address type=pci,bus=0x00,slot=0x02 (libvirt type=pci,bus=0x00,slot=0x03)"]
    libvirt = _xml("<interface type='user'><mac address='52:54:00:00:00:01'/><model type='rtl8139'/></interface>")
    other = _xml("<interface type='user'><mac address='52:54:00:00:00:01'/><model type='e1000'/></interface>")
    diffs, _ = conf.compare_interfaces(source, libvirt, other)
    assert diffs == ["interface 0: libvirt has <model type='rtl8139'/>, virtnet has <model type='e1000'/>"]


def test_an_address_written_in_the_input_is_compared():
    source = _xml("<interface type='user'><address type='pci' bus='0' slot='5'/></interface>")
    libvirt = _xml("<interface type='user'><address type='pci' bus='0x00' slot='0x05'/></interface>")
    ours = _xml("<interface type='user'><address type='pci' bus='0x00' slot='0x06'/></interface>")
    diffs, _ = conf.compare_interfaces(source, libvirt, ours)
    assert diffs == ["interface 0: libvirt has <address bus='0x00' slot='0x05' type='pci'/>, "
                     "virtnet has <address bus='0x00' slot='0x06' type='pci'/>"]


def test_regressions_allow_improvements_only():
    base = {("argv", "a"): "differs", ("argv", "b"): "match", ("xml", "gone"): "match"}
    results = [conf.Result("argv", "a", "match"), conf.Result("argv", "b", "virtnet-rejects", "boom"),
               conf.Result("xml", "new", "match")]
    assert conf.regressions(results, base) == [
        "argv b: match -> virtnet-rejects: boom",
        "xml new: not in the baseline (now match)",
        "xml gone: in the baseline but no longer in the corpus"]
