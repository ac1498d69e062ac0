"""The definition store through the command line, as a user drives it: define, list, dumpxml,
domiflist, undefine, libvirt's conflict rules, concurrent writers, exit codes and error lines.

Every command runs as its own `python -m virtnet` process with a per-test state dir. The tests
with a running domain need root and QEMU (they skip with a reason otherwise) and use a fresh
network namespace.
"""

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess

import pytest
from lxml import etree

from hostcases import (
    alive,
    assert_clean,
    cli_argv,
    cli_env,
    domain_xml,
    fails,
    ip,
    links,
    ok,
    snapshot,
    virtnet,
    wait_dead,
    write,
)

# Fixtures (a fresh namespace, the state and runtime dirs).


UUID_A = "5d1c0b2e-7f3a-4c61-9e8d-2b4a6c8e0f11"
UUID_B = "8e2f4a6c-1b3d-4e5f-a7b9-c0d1e2f3a4b5"


def two_nics(name, *, uuid_=UUID_A, mac=None, target="atap0", model="virtio"):
    mac_line = f"\n      <mac address='{mac}'/>" if mac else ""
    return domain_xml(name, f"""\
    <interface type='ethernet'>{mac_line}
      <target dev='{target}'/>
      <model type='{model}'/>
    </interface>
    <interface type='user'/>
""", uuid_=uuid_)


def define(d, tmp_path, xml, filename="dom.xml"):
    path = write(tmp_path / filename, xml)
    return path, virtnet(d, "define", path)


def parse(xml_text):
    return etree.fromstring(xml_text.encode())


def table_rows(text):
    """A table printed by list/domiflist: header, dashes, then one row per line (split on 2+ spaces)."""
    lines = text.splitlines()
    assert re.fullmatch(r"[- ]+", lines[1]), text
    return [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]


# --- define, list, dumpxml, domiflist, undefine ---------------------------------------------------


def test_define_list_dumpxml_domiflist_undefine(dirs, tmp_path):
    d = dirs
    path, result = define(d, tmp_path, two_nics("web"))
    assert ok(result) == f"Domain 'web' defined from {path}\n"

    assert table_rows(ok(virtnet(d, "list"))) == []  # shut off domains only with --all
    assert table_rows(ok(virtnet(d, "list", "--all"))) == [["web", "shut off", "2: ethernet, user"]]

    # define stores the canonical form: what xml2xml prints, with MACs and PCI addresses filled in.
    stored = ok(virtnet(d, "dumpxml", "--inactive", "web"))
    assert stored == ok(virtnet(d, "xml2xml", path))
    assert ok(virtnet(d, "dumpxml", "web")) == stored  # not running: the live view is the same
    root = parse(stored)
    assert root.findtext("uuid") == UUID_A
    macs = [i.find("mac").get("address") for i in root.iter("interface")]
    assert len(macs) == 2 and len(set(macs)) == 2
    assert all(re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", m) for m in macs), macs
    addresses = [i.find("address") for i in root.iter("interface")]
    assert all(a is not None and a.get("type") == "pci" for a in addresses)
    assert len({a.get("slot") for a in addresses}) == 2
    assert [i.find("model").get("type") for i in root.iter("interface")] == ["virtio", "rtl8139"]

    assert table_rows(ok(virtnet(d, "domiflist", "web"))) == [
        ["atap0", "ethernet", "-", "virtio", macs[0]],
        ["-", "user", "slirp", "rtl8139", macs[1]],
    ]

    assert ok(virtnet(d, "undefine", "web")) == "Domain 'web' has been undefined\n"
    assert table_rows(ok(virtnet(d, "list", "--all"))) == []
    assert "no domain named 'web'" in fails(virtnet(d, "dumpxml", "web"))
    assert "no domain named 'web'" in fails(virtnet(d, "undefine", "web"))


def test_generated_macs_and_addresses_are_kept_on_redefine_from_the_dump(dirs, tmp_path):
    d = dirs
    ok(define(d, tmp_path, two_nics("web"))[1])
    first = ok(virtnet(d, "dumpxml", "--inactive", "web"))
    path = write(tmp_path / "dump.xml", first)
    assert ok(virtnet(d, "define", path)) == f"Domain 'web' updated from {path}\n"
    assert ok(virtnet(d, "dumpxml", "--inactive", "web")) == first


def test_redefining_with_the_same_name_and_uuid_updates(dirs, tmp_path):
    d = dirs
    ok(define(d, tmp_path, two_nics("web", model="virtio"))[1])
    path, result = define(d, tmp_path, two_nics("web", model="e1000e"), "v2.xml")
    assert ok(result) == f"Domain 'web' updated from {path}\n"
    root = parse(ok(virtnet(d, "dumpxml", "--inactive", "web")))
    assert root.find("devices/interface/model").get("type") == "e1000e"
    assert table_rows(ok(virtnet(d, "list", "--all"))) == [["web", "shut off", "2: ethernet, user"]]


def test_redefining_without_a_uuid_updates_too(dirs, tmp_path):
    """Without <uuid> virtnet derives one from the name, so the same file defines the same domain."""
    d = dirs
    xml = two_nics("web", uuid_=None)
    ok(define(d, tmp_path, xml)[1])
    path, result = define(d, tmp_path, xml, "again.xml")
    assert ok(result) == f"Domain 'web' updated from {path}\n"


def test_same_name_different_uuid_is_refused(dirs, tmp_path):
    d = dirs
    ok(define(d, tmp_path, two_nics("web", uuid_=UUID_A))[1])
    stored = ok(virtnet(d, "dumpxml", "--inactive", "web"))
    path, result = define(d, tmp_path, two_nics("web", uuid_=UUID_B), "other.xml")
    error = fails(result)
    assert str(path) in error
    assert f"domain 'web' is already defined with uuid {UUID_A}" in error
    assert ok(virtnet(d, "dumpxml", "--inactive", "web")) == stored


def test_same_uuid_different_name_is_refused(dirs, tmp_path):
    d = dirs
    ok(define(d, tmp_path, two_nics("web", uuid_=UUID_A))[1])
    _, result = define(d, tmp_path, two_nics("db", uuid_=UUID_A, target="dbtap0"), "db.xml")
    error = fails(result)
    assert f"uuid {UUID_A} is already used by domain 'web'" in error
    assert table_rows(ok(virtnet(d, "list", "--all"))) == [["web", "shut off", "2: ethernet, user"]]


@pytest.mark.parametrize("clash", ["mac", "mac-spelled-differently", "target", "unmanaged-target"])
def test_a_mac_or_target_dev_of_another_domain_is_refused(dirs, tmp_path, clash):
    d = dirs
    ok(define(d, tmp_path, two_nics("web", mac="52:54:00:1a:22:33", target="shared0"))[1])
    if clash.startswith("mac"):
        mac = "52:54:00:1a:22:33" if clash == "mac" else "52:54:0:1A:22:33"
        other = two_nics("db", uuid_=UUID_B, mac=mac, target="dbtap0")
        expected = "MAC address 52:54:00:1a:22:33 is already used by domain 'web'"
    else:
        other = two_nics("db", uuid_=UUID_B, target="shared0")
        if clash == "unmanaged-target":
            other = other.replace("<target dev='shared0'/>", "<target dev='shared0' managed='no'/>")
        expected = "target dev 'shared0' is already used by domain 'web'"
    _, result = define(d, tmp_path, other, "db.xml")
    assert expected in fails(result)
    assert table_rows(ok(virtnet(d, "list", "--all"))) == [["web", "shut off", "2: ethernet, user"]]


def test_concurrent_defines_lose_nothing(dirs, tmp_path):
    d = dirs
    names = [f"dom{i}" for i in range(8)]
    paths = [write(tmp_path / f"{n}.xml", two_nics(n, uuid_=None, target=f"t{n}")) for n in names]
    processes = [subprocess.Popen(cli_argv(d, "define", p), env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for p in paths]
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "defined from" in out

    assert [r[0] for r in table_rows(ok(virtnet(d, "list", "--all")))] == names
    for name in names:
        xml = (d.state / "domains" / f"{name}.xml").read_text()
        assert parse(xml).findtext("name") == name
    with contextlib.closing(sqlite3.connect(d.state / "index.sqlite")) as index:
        assert sorted(row[0] for row in index.execute("SELECT name FROM domains")) == names
        # Each domain's MACs and target dev are indexed under its name, for define's checks.
        assert sorted(index.execute("SELECT dev, name FROM targets")) == [(f"t{n}", n) for n in names]
        assert sorted(row[0] for row in index.execute("SELECT DISTINCT name FROM macs")) == names
        assert index.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    leftovers = [p.name for p in d.state.rglob("*") if p.name.startswith(".tmp")]
    assert leftovers == []


# --- exit codes and error lines -------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["undefine", "ghost"], "no domain named 'ghost' is defined"),
    (["dumpxml", "ghost"], "no domain named 'ghost' is defined"),
    (["dumpxml", "--inactive", "ghost"], "no domain named 'ghost' is defined"),
    (["domiflist", "ghost"], "no domain named 'ghost' is defined"),
    (["start", "ghost"], "no domain named 'ghost' is defined"),
    (["destroy", "ghost"], "no domain named 'ghost' is defined"),
    (["destroy", "web"], "domain 'web' is not running"),
    (["define", "/nonexistent/dom.xml"], "/nonexistent/dom.xml"),
    (["plan", "ghost"], "no domain named 'ghost' is defined"),
])
def test_failures_exit_1_with_one_error_line(dirs, tmp_path, argv, message):
    d = dirs
    ok(define(d, tmp_path, two_nics("web"))[1])
    assert message in fails(virtnet(d, *argv))


def test_a_rejected_file_names_file_and_line(dirs, tmp_path):
    d = dirs
    bad = two_nics("web").replace("<model type='virtio'/>", "<model type='virtio'/>\n      <link state='sideways'/>")
    path, result = define(d, tmp_path, bad)
    error = fails(result)
    assert re.match(rf"virtnet: error: {re.escape(str(path))}:\d+: ", error), error
    assert table_rows(ok(virtnet(d, "list", "--all"))) == []


@pytest.mark.parametrize("argv", [[], ["nosuchverb"], ["define"], ["list", "--bogus"],
                                  ["plan", "x.xml", "--format", "yaml"], ["undefine"]])
def test_usage_errors_exit_2(dirs, argv):
    result = virtnet(dirs, *argv)
    fails(result, code=2)
    assert result.stderr.startswith("usage: virtnet")


# --- running domains ------------------------------------------------------------------------------


def running_domain_xml(name):
    return domain_xml(name, """\
    <interface type='ethernet'>
      <model type='virtio'/>
    </interface>
    <interface type='ethernet'>
      <target dev='pre0' managed='no'/>
      <model type='e1000'/>
    </interface>
""")


def test_a_running_domain_in_list_dumpxml_domiflist_and_undefine(ns, dirs, tmp_path):
    d = dirs
    ip("-n", ns, "tuntap", "add", "dev", "pre0", "mode", "tap")
    ok(define(d, tmp_path, running_domain_xml("run"))[1])
    inactive = ok(virtnet(d, "dumpxml", "--inactive", "run"))
    before = snapshot(ns)
    ok(virtnet(d, "start", "run", "--paused", netns=ns))
    pid = d.live("run").pid

    assert table_rows(ok(virtnet(d, "list"))) == [["run", "running", "2: ethernet, ethernet"]]
    # Live XML names the tap virtnet generated; the stored definition does not keep it.
    live = parse(ok(virtnet(d, "dumpxml", "run")))
    assert [i.find("target").get("dev") for i in live.iter("interface")] == ["vnet0", "pre0"]
    assert ok(virtnet(d, "dumpxml", "--inactive", "run")) == inactive
    targets = [i.find("target") for i in parse(inactive).iter("interface")]
    assert targets[0] is None and targets[1].get("dev") == "pre0"
    assert [r[0] for r in table_rows(ok(virtnet(d, "domiflist", "run")))] == ["vnet0", "pre0"]

    assert "domain 'run' is already running" in fails(virtnet(d, "start", "run", netns=ns))
    error = fails(virtnet(d, "undefine", "run"))
    assert "domain 'run' is running" in error and "virtnet destroy run" in error
    assert alive(pid)

    ok(virtnet(d, "destroy", "run"))
    assert_clean(ns, d, "run", before, pid)
    ok(virtnet(d, "undefine", "run"))
    assert table_rows(ok(virtnet(d, "list", "--all"))) == []


def test_a_killed_qemu_is_reported_by_list_and_cleaned_up(ns, dirs, tmp_path):
    """The managed tap goes with QEMU's fds; what virtnet added to the managed='no' tap (a host
    address) stays until virtnet notices the death and cleans up."""
    d = dirs
    ip("-n", ns, "tuntap", "add", "dev", "pre0", "mode", "tap")
    ip("-n", ns, "link", "set", "pre0", "up")
    xml = running_domain_xml("victim").replace(
        "<target dev='pre0' managed='no'/>",
        "<source><ip address='203.0.113.1' family='ipv4' prefix='24'/></source>\n"
        "      <target dev='pre0' managed='no'/>")
    ok(define(d, tmp_path, xml)[1])
    before = snapshot(ns)
    ok(virtnet(d, "start", "victim", "--paused", netns=ns))
    state = d.live("victim")
    assert "vnet0" in links(ns)

    os.kill(state.pid, signal.SIGKILL)
    wait_dead(state.pid)
    assert ("pre0", "203.0.113.1", 24) in snapshot(ns)["addrs"]  # nobody has cleaned up yet

    result = virtnet(d, "list")  # no --netns: the record says where the taps are
    assert table_rows(ok(result)) == []
    warning = result.stderr.strip()
    assert warning.startswith("virtnet: warning: domain 'victim': QEMU (pid ")
    assert "no longer running" in warning and "cleaned up" in warning
    assert_clean(ns, d, "victim", before)
    assert "pre0" in links(ns)
    assert table_rows(ok(virtnet(d, "list", "--all"))) == [["victim", "shut off", "2: ethernet, ethernet"]]
    # Reported once: the next list has nothing more to say.
    assert virtnet(d, "list").stderr == ""
    ok(virtnet(d, "start", "victim", "--paused", netns=ns))
    ok(virtnet(d, "destroy", "victim"))
    assert_clean(ns, d, "victim", before)


def test_undefine_after_qemu_was_killed_is_not_refused_as_running(ns, dirs, tmp_path):
    """The record of a domain whose QEMU died is stale: undefine must not call it running (start
    and list notice the death; undefine should too)."""
    d = dirs
    ok(define(d, tmp_path, running_domain_xml("gone").replace(
        "<target dev='pre0' managed='no'/>", "<target dev='gone0'/>"))[1])
    before = snapshot(ns)
    ok(virtnet(d, "start", "gone", "--paused", netns=ns))
    pid = d.live("gone").pid
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)

    result = virtnet(d, "undefine", "gone")
    assert ok(result) == "Domain 'gone' has been undefined\n"
    assert "no longer running" in result.stderr
    assert_clean(ns, d, "gone", before)


def test_list_after_a_killed_qemu_whose_namespace_name_was_removed(ns, dirs, tmp_path):
    """QEMU died and the namespace it ran in is gone too (with every device in it): there is
    nothing left to clean but the record, and list must not fail on it from then on."""
    d = dirs
    ok(define(d, tmp_path, running_domain_xml("orphan").replace(
        "<target dev='pre0' managed='no'/>", "<target dev='orph0'/>"))[1])
    ok(virtnet(d, "start", "orphan", "--paused", netns=ns))
    pid = d.live("orphan").pid
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    ip("netns", "del", ns)

    result = virtnet(d, "list")
    assert table_rows(ok(result)) == []
    assert "domain 'orphan'" in result.stderr and "no longer running" in result.stderr
    assert d.record("orphan") is None and d.runtime_entries() == []
    assert table_rows(ok(virtnet(d, "list", "--all"))) == [["orphan", "shut off", "2: ethernet, ethernet"]]


# --- a damaged file does not stop the others -------------------------------------------------------


def warnings_of(result):
    """The stderr lines of a command that succeeded: each one a one-line warning."""
    lines = result.stderr.splitlines()
    assert all(line.startswith("virtnet: warning: ") for line in lines), result.stderr
    return lines


def define_three(d, tmp_path):
    for name, uuid_, target in (("web", UUID_A, "webtap0"), ("db", UUID_B, "dbtap0"),
                                ("app", "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "apptap0")):
        ok(define(d, tmp_path, two_nics(name, uuid_=uuid_, target=target), f"{name}.xml")[1])


@pytest.mark.parametrize("damage, reason", [
    (b"this is not XML", ":1: malformed XML: Start tag expected"),
    (b"<domain type='kvm'><name>db</name></domain>", ":1: <domain>: the element <"),
    (b"<domain type='kvm'><name>d\xffb</name></domain>", ":1: not UTF-8 (byte 0xff)"),
], ids=["not-xml", "refused-by-the-schema", "not-utf8"])
def test_an_unusable_stored_definition_is_skipped_by_list_define_and_undefine(dirs, tmp_path, damage, reason):
    """The index is rebuilt from the files (here: it was lost) and one of them no longer loads."""
    d = dirs
    define_three(d, tmp_path)
    bad = d.state / "domains" / "db.xml"
    bad.write_bytes(damage)
    (d.state / "index.sqlite").unlink()
    expected = (f"virtnet: warning: {bad}{reason}")
    advice = "; skipped — fix it, or `virtnet undefine db` removes it"

    result = virtnet(d, "list", "--all")
    assert table_rows(ok(result)) == [["app", "shut off", "2: ethernet, user"],
                                      ["web", "shut off", "2: ethernet, user"]]
    [warning] = warnings_of(result)
    assert warning.startswith(expected) and warning.endswith(advice), warning
    [warning] = warnings_of(virtnet(d, "list"))  # and every time, until it is dealt with
    assert warning.startswith(expected)

    # define: its conflict checks cannot see the skipped file's keys, so it says so too.
    path, result = define(d, tmp_path, two_nics("new", uuid_=None, target="newtap0"), "new.xml")
    assert ok(result) == f"Domain 'new' defined from {path}\n"
    assert [w.startswith(expected) for w in warnings_of(result)] == [True]
    result = virtnet(d, "undefine", "app")
    assert ok(result) == "Domain 'app' has been undefined\n"

    # undefine removes the broken definition, its file and what the index knew of it.
    result = virtnet(d, "undefine", "db")
    assert ok(result) == "Domain 'db' has been undefined\n"
    assert not bad.exists()
    result = virtnet(d, "list", "--all")
    assert [r[0] for r in table_rows(ok(result))] == ["new", "web"]
    assert result.stderr == ""
    with contextlib.closing(sqlite3.connect(d.state / "index.sqlite")) as index:
        for table in ("domains", "macs", "targets", "problems"):
            assert index.execute(f"SELECT count(*) FROM {table} WHERE name = 'db'").fetchone() == (0,)


def test_a_definition_broken_and_fixed_by_hand_is_listed_again(dirs, tmp_path):
    d = dirs
    define_three(d, tmp_path)
    good = (d.state / "domains" / "db.xml").read_text()
    (d.state / "domains" / "db.xml").write_text("<domain")
    (d.state / "index.sqlite").unlink()
    assert len(warnings_of(virtnet(d, "list", "--all"))) == 1

    (d.state / "domains" / "db.xml").write_text(good)
    result = virtnet(d, "list", "--all")
    assert [r[0] for r in table_rows(ok(result))] == ["app", "db", "web"]
    assert result.stderr == ""


def damaged_records(d):
    """Runtime records that cannot be used, each as (file content, what the warning says)."""
    valid = {"version": 2, "pid": 1, "qmp": str(d.runtime / "db" / "qmp.sock"), "runtime_dir": str(d.runtime / "db")}
    return {
        "not-json": ('{"pid": ', "not JSON"),
        "not-an-object": ("[1, 2]", "not a JSON object"),
        "no-qmp": ('{"pid": 1}', "no pid and QMP socket"),
        "no-runtime-dir": (json.dumps({k: v for k, v in valid.items() if k != "runtime_dir"}), "runtime_dir"),
        "other-version": (json.dumps({**valid, "version": 1}), "record version 1, expected 2"),
        "bad-teardown": (json.dumps({**valid, "teardown": [{"action": "no-such-action"}]}), "no-such-action"),
    }


@pytest.mark.parametrize("damage", ["not-json", "not-an-object", "no-qmp", "no-runtime-dir", "other-version",
                                    "bad-teardown"])
def test_a_damaged_runtime_record_is_skipped_by_list_define_and_undefine(dirs, tmp_path, damage):
    d = dirs
    define_three(d, tmp_path)
    record = d.state / "running" / "db.json"
    record.parent.mkdir(exist_ok=True)
    content, reason = damaged_records(d)[damage]
    record.write_text(content)
    prefix = f"virtnet: warning: {record}: damaged runtime record ("
    advice = "); skipped — remove it if 'db' is not running"

    result = virtnet(d, "list", "--all")
    # Skipped: the domain is shown from its definition alone, as libvirt does with a status file
    # it cannot read.
    assert table_rows(ok(result)) == [["app", "shut off", "2: ethernet, user"],
                                      ["db", "shut off", "2: ethernet, user"],
                                      ["web", "shut off", "2: ethernet, user"]]
    [warning] = warnings_of(result)
    assert warning.startswith(prefix) and warning.endswith(advice) and reason in warning, warning
    assert table_rows(ok(virtnet(d, "list"))) == []

    result = virtnet(d, "undefine", "app")
    assert ok(result) == "Domain 'app' has been undefined\n"
    assert [w.startswith(prefix) for w in warnings_of(result)] == [True]
    path, result = define(d, tmp_path, two_nics("new", uuid_=None, target="newtap0"), "new.xml")
    assert ok(result) == f"Domain 'new' defined from {path}\n"
    # The domain itself is not taken for stopped: virtnet cannot tell, so the user decides.
    error = fails(virtnet(d, "undefine", "db"))
    assert str(record) in error and "remove it if 'db' is not running" in error
    assert record.read_text() == content

    record.unlink()
    ok(virtnet(d, "undefine", "db"))
    result = virtnet(d, "list", "--all")
    assert [r[0] for r in table_rows(ok(result))] == ["new", "web"]
    assert result.stderr == ""


def test_a_domain_whose_definition_was_deleted_by_hand_can_be_undefined(dirs, tmp_path):
    d = dirs
    ok(define(d, tmp_path, two_nics("web", mac="52:54:00:1a:22:33", target="shared0"))[1])
    ok(define(d, tmp_path, two_nics("db", uuid_=UUID_B, target="dbtap0"), "db.xml")[1])
    (d.state / "domains" / "web.xml").unlink()

    assert ok(virtnet(d, "undefine", "web")) == "Domain 'web' has been undefined\n"
    assert [r[0] for r in table_rows(ok(virtnet(d, "list", "--all")))] == ["db"]
    assert "no domain named 'web'" in fails(virtnet(d, "undefine", "web"))
    # Its keys went with its index rows: another domain may now use them.
    ok(define(d, tmp_path, two_nics("new", uuid_=UUID_A, mac="52:54:00:1a:22:33", target="shared0"),
              "new.xml")[1])


def test_a_definition_whose_name_differs_from_its_file_is_listed_under_the_file_name(dirs, tmp_path):
    """The file name is the key, as for every domain virtnet defines: the file is listed under it
    with a warning, and its uuid, MACs and target devs keep counting for define's conflict rules."""
    d = dirs
    define_three(d, tmp_path)
    moved = d.state / "domains" / "web.xml"
    (d.state / "domains" / "renamed.xml").write_text(moved.read_text())
    moved.unlink()
    (d.state / "index.sqlite").unlink()
    warning = (f"virtnet: warning: {d.state}/domains/renamed.xml: its <name> is 'web', not 'renamed'; "
               "listed as 'renamed', the name of its file — fix it, or `virtnet undefine renamed` removes it")

    result = virtnet(d, "list", "--all")
    assert [r[0] for r in table_rows(ok(result))] == ["app", "db", "renamed"]
    assert warnings_of(result) == [warning]
    stored = ok(virtnet(d, "dumpxml", "renamed"))
    assert parse(stored).findtext("name") == "web"

    # Its keys are still taken: a domain named after its <name> is refused for its uuid, MAC and dev.
    path = write(tmp_path / "web-again.xml", stored)
    assert f"uuid {UUID_A} is already used by domain 'renamed'" in fails(virtnet(d, "define", path))
    mac = parse(stored).find("devices/interface/mac").get("address")
    _, result = define(d, tmp_path, two_nics("web", uuid_=None, mac=mac, target="other0"), "web2.xml")
    assert f"MAC address {mac} is already used by domain 'renamed'" in fails(result)

    # Defining it under the file's name (same uuid) is an update, and file and <name> agree again.
    path = write(tmp_path / "renamed.xml", stored.replace("<name>web</name>", "<name>renamed</name>"))
    result = virtnet(d, "define", path)
    assert ok(result) == f"Domain 'renamed' updated from {path}\n"
    result = virtnet(d, "list", "--all")
    assert [r[0] for r in table_rows(ok(result))] == ["app", "db", "renamed"]
    assert result.stderr == ""
