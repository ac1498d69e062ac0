"""The state directory store, on real files with real processes competing for its lock."""

import contextlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtnet.errors import StoreError, XMLInputError
from virtnet.runpaths import default_runtime_dir, default_state_dir
from virtnet.store import INDEX_VERSION, Store

REPO = Path(__file__).resolve().parent.parent


def domain_xml(name, version=1):
    return f"<domain type='kvm'><name>{name}</name><version>{version}</version></domain>\n"


def summarize(xml_text):
    root = ET.fromstring(xml_text)
    return {"version": int(root.findtext("version")), "size": len(xml_text)}


def run_python(code, *args):
    """Start a Python process that imports virtnet from this checkout."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def define(store, name, version=1):
    xml = domain_xml(name, version)
    with store.lock():
        store.write_domain(name, xml, summarize(xml))
    return xml


def all_files(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def index_rows(store, query):
    """Rows of the index file as SQLite itself reads them, bypassing the Store."""
    with contextlib.closing(sqlite3.connect(store.index_path)) as db:
        return db.execute(query).fetchall()


def pending(store):
    return [name for (name,) in index_rows(store, "SELECT name FROM pending")]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "state", tmp_path / "run", summarize=summarize)


# Definitions


def test_definition_round_trip(store):
    xml = define(store, "web")
    define(store, "db", version=3)

    assert store.read_domain("web") == xml
    assert store.names() == ["db", "web"]
    assert store.summaries() == {"web": summarize(xml), "db": summarize(domain_xml("db", 3))}
    assert (store.state_dir / "domains" / "web.xml").read_text() == xml


def test_redefinition_replaces_xml_and_summary(store):
    define(store, "web", version=1)
    xml = define(store, "web", version=2)

    assert store.read_domain("web") == xml
    assert store.summaries() == {"web": {"version": 2, "size": len(xml)}}


def test_writes_leave_only_the_expected_files(store):
    for version in (1, 2):
        define(store, "web", version)
        define(store, "db", version)
    with store.lock():
        store.remove_domain("db")
        store.write_runtime("web", {"pid": 1})

    # No -wal or -shm either: the last connection to close checkpoints and removes them.
    assert all_files(store.state_dir) == [
        "domains", "domains/web.xml", "index.sqlite", "lock", "running", "running/web.json"]


def test_failed_write_removes_its_temporary_file_and_keeps_the_old_content(store, monkeypatch):
    old = define(store, "web", version=1)
    fsync = os.fsync
    domains_dir = str(store.state_dir / "domains")

    def disk_full_for_definitions(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(domains_dir + "/"):
            raise OSError(28, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_for_definitions)
    with store.lock(), pytest.raises(StoreError, match="cannot save .*No space left on device"):
        store.write_domain("web", domain_xml("web", 2), {"version": 2})
    monkeypatch.undo()

    assert not [f for f in all_files(store.state_dir) if ".tmp-" in f]
    assert store.read_domain("web") == old
    assert pending(store) == ["web"]  # the failed writer could not tell how far it got
    assert store.summaries() == {"web": summarize(old)}
    assert pending(store) == []


def test_a_summary_that_is_not_json_changes_nothing(store):
    define(store, "web")
    with store.lock(), pytest.raises(TypeError):
        store.write_domain("db", domain_xml("db"), {"when": object()})
    assert store.names() == ["web"]
    assert not (store.state_dir / "domains" / "db.xml").exists()


def test_reading_a_missing_domain_names_it(store):
    define(store, "web")
    with pytest.raises(StoreError) as error:
        store.read_domain("nope")
    assert str(error.value) == "no domain named 'nope' is defined (see `virtnet list --all`)"


def test_remove_domain(store):
    define(store, "web")
    define(store, "db")
    with store.lock():
        store.remove_domain("web")
        with pytest.raises(StoreError, match="no domain named 'web'"):
            store.remove_domain("web")

    assert store.names() == ["db"]
    assert not (store.state_dir / "domains" / "web.xml").exists()
    with pytest.raises(StoreError, match="no domain named 'web'"):
        store.read_domain("web")


def test_an_empty_store_reads_as_empty_and_creates_nothing(tmp_path):
    store = Store(tmp_path / "state")
    assert store.summaries() == {}
    assert store.names() == []
    assert store.running_names() == []
    assert store.read_runtime("web") is None
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("call", [
    lambda s: s.write_domain("web", domain_xml("web"), {}),
    lambda s: s.remove_domain("web"),
    lambda s: s.write_runtime("web", {}),
    lambda s: s.clear_runtime("web"),
])
def test_mutations_need_the_lock(store, call):
    with pytest.raises(RuntimeError, match="inside `with store.lock"):
        call(store)
    assert not store.state_dir.exists()


@pytest.mark.parametrize("name, complaint", [
    ("", "is empty"),
    (".", "cannot be '.'"),
    ("..", "cannot be '..'"),
    ("a/b", "contains '/'"),
    ("../etc", "contains '/'"),
    ("a\0b", "NUL"),
    ("x" * 201, "201 bytes long; at most 200"),
    ("é" * 101, "202 bytes long; at most 200"),
    ("bad\udcff", "not valid UTF-8"),
])
def test_bad_names_are_refused(store, name, complaint):
    def write():
        with store.lock():
            store.write_domain(name, "<domain/>", {})

    for call in (write, lambda: store.read_domain(name), lambda: store.read_runtime(name)):
        with pytest.raises(StoreError, match=complaint):
            call()
    assert store.names() == []
    assert not store.runtime_dir.exists()


@pytest.mark.parametrize("name", ["x" * 200, "é" * 100, "web.xml", "名前", "a b"])
def test_unusual_but_valid_names_are_stored(store, name):
    xml = define(store, name)
    assert store.names() == [name]
    assert store.read_domain(name) == xml
    # The index survives a rebuild: the file names map back to the same domain names.
    store.index_path.unlink()
    assert Store(store.state_dir, summarize=summarize).names() == [name]


# The index


def test_index_is_rebuilt_from_the_definitions_when_deleted(store):
    for name in ("a", "b", "c"):
        define(store, name, version=len(name) + 1)
    expected = store.summaries()
    store.index_path.unlink()

    assert Store(store.state_dir, summarize=summarize).summaries() == expected
    rows = index_rows(store, "SELECT name, summary FROM domains ORDER BY name")
    assert [(name, json.loads(text)) for name, text in rows] == sorted(expected.items())
    assert index_rows(store, "PRAGMA user_version") == [(INDEX_VERSION,)]
    assert index_rows(store, "PRAGMA journal_mode") == [("wal",)]
    assert stat.S_IMODE(store.index_path.stat().st_mode) == 0o600


def not_a_database(path):
    path.write_bytes(b'{"version": 1, "domains": {"a": {}}}')


def empty_file(path):
    path.write_bytes(b"")  # SQLite reads this as an empty database: no tables, user_version 0


def other_version(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
        db.commit()


def table_missing(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE macs")
        db.commit()


def pages_lost(path):
    data = path.read_bytes()
    assert len(data) > 4 * 4096  # page 1 (header, schema) survives; the tables' pages do not
    path.write_bytes(data[:4096])


def page_overwritten(path):
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 4096 * 3)


@pytest.mark.parametrize("damage", [not_a_database, empty_file, other_version, table_missing,
                                    pages_lost, page_overwritten])
def test_index_is_rebuilt_when_damaged(store, damage):
    define(store, "a")
    define(store, "b")
    expected = store.summaries()
    damage(store.index_path)

    assert Store(store.state_dir, summarize=summarize).summaries() == expected
    assert index_rows(store, "PRAGMA integrity_check") == [("ok",)]
    # And a writer rebuilds it too, instead of writing an index with only its own domain.
    damage(store.index_path)
    define(store, "c")
    assert store.names() == ["a", "b", "c"]
    assert index_rows(store, "PRAGMA integrity_check") == [("ok",)]


def test_a_damaged_index_cannot_be_read_without_summarize(store):
    define(store, "a")
    not_a_database(store.index_path)
    with pytest.raises(StoreError, match="index .* is missing or out of date"):
        Store(store.state_dir).summaries()


def test_index_cannot_be_rebuilt_without_summarize(store):
    define(store, "a")
    store.index_path.unlink()

    with pytest.raises(StoreError, match="index .* is missing or out of date"):
        Store(store.state_dir).summaries()
    assert not store.index_path.exists()


# Definitions the index cannot take as they are: one bad file must not stop the others.


def checked_summarize(xml_text):
    """What a real summarize does with a bad file: a VirtnetError with the line. The summary has
    the <name> inside, which the store compares with the file's name."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise XMLInputError(f"malformed XML: {e}", line=e.position[0]) from None
    if root.findtext("version") is None:
        raise XMLInputError("the element <version> is missing", line=1)
    return {"name": root.findtext("name"), "version": int(root.findtext("version")), "size": len(xml_text)}


@pytest.fixture
def checked(tmp_path):
    return Store(tmp_path / "state", tmp_path / "run", summarize=checked_summarize)


def definition_path(store, name):
    return store.state_dir / "domains" / f"{name}.xml"


def rebuilt(store):
    """The same store as the next command sees it after the index was lost."""
    store.index_path.unlink()
    return Store(store.state_dir, store.runtime_dir, summarize=store.summarize)


BAD_DEFINITIONS = {
    "not-xml": (b"<domain><version>oops", r":1: malformed XML: "),
    "refused": (b"<domain><name>db</name></domain>", r":1: the element <version> is missing"),
    "not-utf8": (b"<domain><name>db\xff</name></domain>", r":1: not UTF-8 \(byte 0xff\)"),
}


@pytest.mark.parametrize("bad", sorted(BAD_DEFINITIONS))
def test_an_unusable_definition_is_skipped_with_a_warning_and_can_be_removed(checked, bad):
    define(checked, "web")
    define(checked, "db")
    data, reason = BAD_DEFINITIONS[bad]
    definition_path(checked, "db").write_bytes(data)
    store = rebuilt(checked)

    assert store.names() == ["web"]
    assert store.summaries() == {"web": summarize(domain_xml("web"))}
    [(name, warning, skipped)] = store.problems()
    assert (name, skipped) == ("db", True)
    path = str(definition_path(store, "db"))
    assert re.fullmatch(re.escape(path) + reason + r".*; skipped — fix it, or `virtnet undefine db` removes it",
                        warning), warning
    assert "\n" not in warning
    # The others can still be defined and removed; then the bad one goes too, with its row.
    define(store, "new")
    with store.lock():
        store.remove_domain("web")
        store.remove_domain("db")
    assert store.names() == ["new"]
    assert store.problems() == []
    assert not definition_path(store, "db").exists()
    assert index_rows(store, "SELECT count(*) FROM problems") == [(0,)]


def test_what_is_not_a_file_is_skipped(checked):
    define(checked, "web")
    definition_path(checked, "dir").mkdir()  # a directory named like a definition
    os.mkfifo(definition_path(checked, "fifo"))  # opening it for reading must not wait for a writer
    definition_path(checked, "loop").symlink_to("loop.xml")
    store = rebuilt(checked)
    assert store.names() == ["web"]
    assert [(name, warning.split("; skipped")[0], skipped) for name, warning, skipped in store.problems()] == [
        ("dir", f"{definition_path(store, 'dir')}: not a regular file", True),
        ("fifo", f"{definition_path(store, 'fifo')}: not a regular file", True),
        ("loop", f"{definition_path(store, 'loop')}: cannot read it: Too many levels of symbolic links", True),
    ]
    with store.lock():
        for name in ("dir", "fifo", "loop"):
            if name == "dir":
                definition_path(store, name).rmdir()  # remove_domain removes files only
            else:
                store.remove_domain(name)
    assert store.listing() == ({"web": summarize(domain_xml("web"))}, [])


def test_a_definition_that_breaks_while_pending_is_skipped(checked):
    """A writer that crashed leaves its name pending; if that file no longer parses, the repair
    skips it instead of failing every access."""
    define(checked, "web")
    define(checked, "db")
    definition_path(checked, "db").write_text("garbage")
    with contextlib.closing(sqlite3.connect(checked.index_path)) as db:
        db.execute("INSERT INTO pending (name) VALUES ('db')")
        db.commit()

    assert checked.summaries() == {"web": summarize(domain_xml("web"))}
    assert [(name, skipped) for name, _, skipped in checked.problems()] == [("db", True)]
    assert pending(checked) == []
    define(checked, "other")
    assert checked.names() == ["other", "web"]


def test_a_skipped_definition_fixed_or_deleted_by_hand_is_looked_at_again(checked):
    define(checked, "web")
    definition_path(checked, "db").write_text("garbage")
    definition_path(checked, "gone").write_text("garbage")
    store = rebuilt(checked)
    assert [name for name, _, _ in store.problems()] == ["db", "gone"]

    fixed = domain_xml("db", version=7)
    definition_path(store, "db").write_text(fixed)
    definition_path(store, "gone").unlink()
    # A reader notices the changed files and repairs the index under the lock.
    assert store.summaries() == {"db": summarize(fixed), "web": summarize(domain_xml("web"))}
    assert store.problems() == []
    assert index_rows(store, "SELECT name FROM problems") == []


def test_a_definition_whose_name_differs_is_indexed_under_its_file_name(checked):
    """The file name is the key: the definition is listed (with a warning) and its keys stay in
    the index under the file's name."""
    define(checked, "web")
    other = domain_xml("db", version=5)
    definition_path(checked, "other").write_text(other)
    store = rebuilt(checked)

    assert store.summaries() == {"other": summarize(other), "web": summarize(domain_xml("web"))}
    assert store.summary_of("other") == summarize(other)  # the <name> is checked, not kept
    [(name, warning, skipped)] = store.problems()
    assert (name, skipped) == ("other", False)
    assert warning == (f"{definition_path(store, 'other')}: its <name> is 'db', not 'other'; listed as "
                       "'other', the name of its file — fix it, or `virtnet undefine other` removes it")
    assert store.listing() == (store.summaries(), store.problems())  # what `list` reads, at once
    # Redefining it under the file's name makes the file and its name agree again.
    define(store, "other", version=6)
    assert store.problems() == []


def test_a_name_fixed_by_hand_is_noticed(checked):
    define(checked, "web")
    definition_path(checked, "other").write_text(domain_xml("db", version=5))
    store = rebuilt(checked)
    assert [(name, skipped) for name, _, skipped in store.problems()] == [("other", False)]

    fixed = domain_xml("other", version=8)
    definition_path(store, "other").write_text(fixed)
    assert store.listing() == ({"other": summarize(fixed), "web": summarize(domain_xml("web"))}, [])


def test_a_strange_name_inside_a_definition_stays_on_one_line(checked):
    define(checked, "web")
    definition_path(checked, "x").write_text("<domain><name>a\nb\u202e</name><version>1</version></domain>")
    [(_, warning, _)] = rebuilt(checked).problems()
    assert warning.isprintable(), warning
    assert "its <name> is 'a\\nb\\u202e', not 'x'" in warning


def test_files_whose_name_no_domain_can_have_are_not_definitions(checked):
    define(checked, "web")
    for leaf in (".hidden.xml", "bell\a.xml"):
        definition_path(checked, "web").with_name(leaf).write_text(domain_xml("x"))
    (checked.state_dir / "domains").joinpath(os.fsdecode(b"bad\xff.xml")).write_text(domain_xml("x"))
    assert rebuilt(checked).names() == ["web"]


def test_a_domain_whose_file_was_deleted_can_be_removed(checked):
    define(checked, "web")
    define(checked, "db")
    definition_path(checked, "db").unlink()
    assert checked.names() == ["db", "web"]  # the index does not look at every file
    with checked.lock():
        checked.remove_domain("db")
        with pytest.raises(StoreError, match="no domain named 'db'"):
            checked.remove_domain("db")
    assert checked.names() == ["web"]


def test_reading_a_definition_that_is_not_utf8_is_an_error(checked):
    define(checked, "web")
    definition_path(checked, "web").write_bytes(b"\xff")
    with pytest.raises(StoreError, match=r"the definition of 'web' \(.*/web.xml\) is not UTF-8; fix it"):
        checked.read_domain("web")


CRASHING_WRITER = """
    import os, signal, sys
    from pathlib import Path
    import virtnet.store as store_module

    state_dir, verb, when, xml = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    store = store_module.Store(state_dir)
    definition = state_dir / "domains" / "web.xml"

    def die():
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as in a power cut

    def killing(function, point, is_the_definition):
        def wrapper(*args):
            if when == "before-file" and point == "file" and is_the_definition(*args):
                die()
            result = function(*args)
            if when == point and is_the_definition(*args):
                die()
            return result
        return wrapper

    # file: the XML is replaced (or removed) and its directory fsynced; rows: the index rows are
    # changed inside the transaction that would also clear `pending`, before its COMMIT.
    store_module._write_atomically = killing(store_module._write_atomically, "file",
                                             lambda path, data: path == definition)
    store_module._unlink = killing(store_module._unlink, "file", lambda path: path == definition)
    store_module._put = killing(store_module._put, "rows", lambda db, name, *row: name == "web")
    store_module._drop = killing(store_module._drop, "rows", lambda db, name: name == "web")
    if when == "mid-file":  # the temporary file is written, not yet renamed
        replace = os.replace
        os.replace = lambda source, target: die() if Path(target) == definition else replace(source, target)
    with store.lock():
        if verb == "define":
            store.write_domain("web", xml, {"version": "never written"})
        else:
            store.remove_domain("web")
    sys.exit("not killed")
"""


@pytest.mark.parametrize("verb, when", [
    ("define", "before-file"), ("define", "mid-file"), ("define", "file"), ("define", "rows"),
    ("remove", "before-file"), ("remove", "file"), ("remove", "rows"),
])
@pytest.mark.parametrize("next_user", ["reader", "writer"])
def test_a_writer_killed_between_xml_and_index_is_repaired(store, verb, when, next_user):
    old_xml = define(store, "web", version=1)
    define(store, "db")
    new_xml = domain_xml("web", version=2)

    before = store.summaries()
    code, _, err = finish(run_python(CRASHING_WRITER, store.state_dir, verb, when, new_xml))
    assert code == -signal.SIGKILL, err
    assert pending(store) == ["web"]
    file_changed = when in ("file", "rows")
    if verb == "define":
        assert store.read_domain("web") == (new_xml if file_changed else old_xml)
        assert bool([f for f in all_files(store.state_dir) if ".tmp-" in f]) == (when == "mid-file")
    else:
        assert (store.state_dir / "domains" / "web.xml").exists() == (not file_changed)
    # A reader that cannot summarize gets the index as last committed, rather than an error (and
    # nothing of the killed transaction).
    assert Store(store.state_dir).summaries() == before

    after = Store(store.state_dir, summarize=summarize)
    if next_user == "writer":
        define(after, "other")
    summaries = after.summaries()

    if verb == "define":
        assert summaries["web"] == summarize(new_xml if file_changed else old_xml)
    elif file_changed:
        assert "web" not in summaries
    else:
        assert summaries["web"] == summarize(old_xml)
    expected_names = {"db", "web"} - ({"web"} if verb == "remove" and file_changed else set())
    assert set(summaries) == expected_names | ({"other"} if next_user == "writer" else set())
    assert summaries["db"] == before["db"]
    assert pending(store) == []
    assert not [f for f in all_files(store.state_dir) if ".tmp-" in f]
    assert index_rows(store, "PRAGMA integrity_check") == [("ok",)]


def keyed_xml(name, uuid, macs=(), targets=()):
    nics = "".join(f"<interface><mac address='{mac}'/></interface>" for mac in macs)
    nics += "".join(f"<interface><target dev='{dev}'/></interface>" for dev in targets)
    return f"<domain><name>{name}</name><uuid>{uuid}</uuid><devices>{nics}</devices></domain>"


def keyed_summarize(xml_text):
    """What virtnet.domains.summarize keeps, from the small documents of keyed_xml."""
    root = ET.fromstring(xml_text)
    return {"uuid": root.findtext("uuid"),
            "macs": [e.get("address") for e in root.iter("mac")],
            "targets": [e.get("dev") for e in root.iter("target")],
            "interfaces": ["ethernet"] * len(root.findall("devices/interface"))}


def keyed_define(store, name, uuid, macs=(), targets=()):
    xml = keyed_xml(name, uuid, macs, targets)
    with store.lock():
        store.write_domain(name, xml, keyed_summarize(xml))


@pytest.fixture
def keyed(tmp_path):
    return Store(tmp_path / "state", tmp_path / "run", summarize=keyed_summarize)


def test_keys_are_looked_up_in_the_index(keyed):
    keyed_define(keyed, "web", "u-web", ["52:54:00:00:00:01", "52:54:00:00:00:02"], ["tap-web"])
    keyed_define(keyed, "db", "u-db", ["52:54:00:00:00:03"], ["tap-db", "tap-shared"])
    keyed_define(keyed, "copy", "u-web", ["52:54:00:00:00:02"], ["tap-shared"])  # the index keeps
    # duplicates (as files copied in by hand can have them); refusing them is define's rule.

    assert keyed.summary_of("web") == keyed_summarize(keyed.read_domain("web"))
    assert keyed.summary_of("nope") is None
    assert keyed.owners_of_uuid("u-web") == ["copy", "web"]
    assert keyed.owners_of_uuid("u-none") == []
    assert keyed.owners_of_macs(["52:54:00:00:00:02", "52:54:00:00:00:03", "52:54:00:00:00:09"]) == {
        "52:54:00:00:00:02": ["copy", "web"], "52:54:00:00:00:03": ["db"]}
    assert keyed.owners_of_targets(["tap-shared", "tap-web", "tap-none"]) == {
        "tap-shared": ["copy", "db"], "tap-web": ["web"]}
    assert keyed.owners_of_macs([]) == {} and keyed.owners_of_targets([]) == {}

    # A redefinition replaces the keys of its domain; a removal drops them.
    keyed_define(keyed, "web", "u-web2", ["52:54:00:00:00:04"], [])
    with keyed.lock():
        keyed.remove_domain("copy")
        # Under the lock the same lookups read this hold's connection.
        assert keyed.owners_of_uuid("u-web2") == ["web"]
    assert keyed.owners_of_uuid("u-web") == []
    assert keyed.owners_of_macs(["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:04"]) == {
        "52:54:00:00:00:04": ["web"]}
    assert keyed.owners_of_targets(["tap-web", "tap-shared"]) == {"tap-shared": ["db"]}
    assert sorted(index_rows(keyed, "SELECT mac, name FROM macs")) == [
        ("52:54:00:00:00:03", "db"), ("52:54:00:00:00:04", "web")]
    # And so does a rebuild from the definitions.
    keyed.index_path.unlink()
    assert keyed.owners_of_targets(["tap-db", "tap-shared"]) == {"tap-db": ["db"], "tap-shared": ["db"]}
    assert keyed.owners_of_uuid("u-web2") == ["web"]


def test_summaries_leave_the_keys_to_the_index(keyed):
    keyed_define(keyed, "web", "u-web", ["52:54:00:00:00:02", "52:54:00:00:00:01"], ["tap-web"])
    keyed_define(keyed, "bare", "u-bare")

    # What list shows, without the keys: they are columns, looked up or reassembled when asked.
    assert keyed.summaries() == {"web": {"interfaces": ["ethernet"] * 3}, "bare": {"interfaces": []}}
    assert index_rows(keyed, "SELECT name, uuid, summary FROM domains ORDER BY name") == [
        ("bare", "u-bare", '{"interfaces":[]}'),
        ("web", "u-web", '{"interfaces":["ethernet","ethernet","ethernet"]}')]
    assert keyed.summary_of("bare") == {"uuid": "u-bare", "interfaces": []}
    assert keyed.summary_of("web") == {
        "uuid": "u-web", "macs": ["52:54:00:00:00:01", "52:54:00:00:00:02"], "targets": ["tap-web"],
        "interfaces": ["ethernet"] * 3}


@pytest.mark.parametrize("keys", [{"uuid": 5}, {"macs": "52:54:00:00:00:01"}, {"macs": [1]},
                                  {"targets": [None]}])
def test_keys_of_the_wrong_type_change_nothing(keyed, keys):
    keyed_define(keyed, "web", "u-web")
    with keyed.lock(), pytest.raises(TypeError, match="of a summary must be"):
        keyed.write_domain("db", keyed_xml("db", "u-db"), {"interfaces": [], **keys})
    assert keyed.names() == ["web"]
    assert not (keyed.state_dir / "domains" / "db.xml").exists()
    assert pending(keyed) == []


def test_lookups_in_an_empty_store_create_nothing(tmp_path):
    store = Store(tmp_path / "state")
    assert store.summary_of("web") is None
    assert store.owners_of_uuid("u") == []
    assert store.owners_of_macs(["52:54:00:00:00:01"]) == {}
    assert store.owners_of_targets(["tap0"]) == {}
    assert not (tmp_path / "state").exists()


PAUSED_WRITER = """
    import sys, time
    from pathlib import Path
    import virtnet.store as store_module

    state_dir, inside, go, xml = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    put = store_module._put

    def put_then_wait(db, name, *row):
        put(db, name, *row)  # the rows are changed, the transaction is not committed
        inside.touch()
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.005)

    store_module._put = put_then_wait
    store = store_module.Store(state_dir)
    with store.lock():
        store.write_domain("web", xml, {"uuid": "u-new", "macs": ["52:54:00:00:00:02"], "targets": []})
"""


def test_readers_see_the_last_commit_while_a_writer_is_inside_its_transaction(tmp_path):
    store = Store(tmp_path / "state")
    old = keyed_xml("web", "u-old", ["52:54:00:00:00:01"])
    with store.lock():
        store.write_domain("web", old, keyed_summarize(old))
    before = store.summaries()
    inside, go = tmp_path / "inside", tmp_path / "go"
    writer = run_python(PAUSED_WRITER, store.state_dir, inside, go, keyed_xml("web", "u-new"))
    try:
        deadline = time.monotonic() + 60
        while not inside.exists():
            assert writer.poll() is None and time.monotonic() < deadline, finish(writer)
            time.sleep(0.005)
        # The writer holds the flock and an open write transaction on the index; a reader is not
        # held up (it would fail with "database is locked" after INDEX_TIMEOUT) and sees none of it.
        assert not lock_is_free(store)
        assert store.summaries() == before
        assert store.owners_of_uuid("u-old") == ["web"]
        assert store.owners_of_uuid("u-new") == []
        assert store.owners_of_macs(["52:54:00:00:00:01", "52:54:00:00:00:02"]) == {
            "52:54:00:00:00:01": ["web"]}
        go.touch()
        code, _, err = finish(writer)
    finally:
        go.touch()
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert code == 0, err
    assert store.owners_of_uuid("u-new") == ["web"]
    assert store.owners_of_macs(["52:54:00:00:00:01", "52:54:00:00:00:02"]) == {
        "52:54:00:00:00:02": ["web"]}


IMPORTS = """
    import sys
    from pathlib import Path
    import virtnet.store
    lazy = "sqlite3" not in sys.modules
    store = virtnet.store.Store(Path(sys.argv[1]))
    print(len(store.summaries()), store.owners_of_uuid("u-web"), lazy,
          any(m == "lxml" or m.startswith("lxml.") for m in sys.modules))
"""


def test_reading_the_index_imports_sqlite3_only_when_used_and_never_lxml(keyed):
    keyed_define(keyed, "web", "u-web")
    code, out, err = finish(run_python(IMPORTS, keyed.state_dir))
    assert code == 0, err
    assert out.split() == ["1", "['web']", "True", "False"]


# define's conflict rules, looked up by key


def conflict(store, name, uuid, macs=(), targets=()):
    """The message define gives for this domain, or None when it has no conflict."""
    from virtnet import domains

    summary = {"uuid": uuid, "macs": list(macs), "targets": list(targets), "interfaces": []}
    with store.lock():
        try:
            domains._conflicts(store, name, summary)
        except StoreError as e:
            return e.message
    return None


def test_define_conflicts_are_found_by_key(keyed):
    keyed_define(keyed, "web", "u-web", ["52:54:00:00:00:01"], ["tap-web"])
    keyed_define(keyed, "db", "u-db", ["52:54:00:00:00:02"], ["tap-db"])

    assert conflict(keyed, "web", "u-web", ["52:54:00:00:00:01"], ["tap-web"]) is None  # an update
    assert conflict(keyed, "new", "u-new", ["52:54:00:00:00:03"], ["tap-new"]) is None
    assert conflict(keyed, "web", "u-other") == (
        "domain 'web' is already defined with uuid u-web; to update it, keep that uuid (or omit "
        "<uuid>), or `virtnet undefine web` first")
    assert conflict(keyed, "new", "u-db") == (
        "uuid u-db is already used by domain 'db'; give this domain its own <uuid>")
    assert conflict(keyed, "web", "u-web", ["52:54:00:00:00:02"]) == (
        "MAC address 52:54:00:00:00:02 is already used by domain 'db'; choose another <mac address>")
    assert conflict(keyed, "new", "u-new", [], ["tap-web"]) == (
        "target dev 'tap-web' is already used by domain 'web'; choose another <target dev>")
    # Several conflicts: the first other domain by name, and in one domain uuid, MAC, target dev.
    assert conflict(keyed, "new", "u-web", ["52:54:00:00:00:02"], ["tap-web"]).startswith(
        "MAC address 52:54:00:00:00:02 is already used by domain 'db'")
    assert conflict(keyed, "new", "u-web", ["52:54:00:00:00:01"], ["tap-web"]).startswith(
        "uuid u-web is already used by domain 'web'")
    assert conflict(keyed, "new", "u-new", ["52:54:00:00:00:01"], ["tap-web"]).startswith(
        "MAC address 52:54:00:00:00:01 is already used by domain 'web'")
    assert conflict(keyed, "zzz", "u-zzz", [], ["tap-web", "tap-db"]).startswith(
        "target dev 'tap-db' is already used by domain 'db'")
    assert conflict(keyed, "web", "u-other", ["52:54:00:00:00:02"]).startswith(
        "MAC address 52:54:00:00:00:02 is already used by domain 'db'")


# The lock


LOCK_PROBE = """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(1)
"""


def lock_is_free(store):
    code, _, err = finish(run_python(LOCK_PROBE, store.state_dir / "lock"))
    assert code in (0, 1), err
    return code == 0


def test_lock_excludes_other_processes(store):
    with store.lock():
        assert not lock_is_free(store)
        with store.lock():  # re-entering from the same Store does not deadlock
            assert not lock_is_free(store)
        assert not lock_is_free(store)
    assert lock_is_free(store)


def test_lock_is_not_inherited_by_a_started_program(store):
    with store.lock():
        child = subprocess.Popen(["sleep", "60"], close_fds=False)
    try:
        assert child.poll() is None
        assert lock_is_free(store)
    finally:
        child.kill()
        child.wait()


def test_lock_creates_private_directories(tmp_path):
    store = Store(tmp_path / "a" / "state")
    with store.lock():
        pass
    for directory in (store.state_dir, store.state_dir / "domains", store.state_dir / "running"):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0


CONCURRENT_WRITER = """
    import sys, time
    from pathlib import Path
    from virtnet.store import Store

    state_dir, go = Path(sys.argv[1]), Path(sys.argv[3])
    worker, padding = int(sys.argv[2]), int(sys.argv[4])
    store = Store(state_dir)
    while not go.exists():
        time.sleep(0.001)
    for i in range(50):
        name = f"w{worker}-d{i:02}"
        xml = f"<domain><name>{name}</name><description>{name * padding}</description></domain>"
        with store.lock():  # read, check, write: the way define uses it
            summaries = store.summaries()
            if name in summaries:
                sys.exit(f"{name} already defined")
            store.write_domain(name, xml, {"seen": len(summaries), "size": len(xml)})
"""


def check_complete(xml, name, padding):
    root = ET.fromstring(xml)  # raises on a partial file
    assert root.findtext("name") == name
    assert root.findtext("description") == name * padding


def test_concurrent_writers_lose_nothing_and_readers_see_whole_files(tmp_path):
    store = Store(tmp_path / "state")
    go = tmp_path / "go"
    padding = 1000  # 5 to 7 KB per definition: big enough that a write in place is seen half done
    writers = [run_python(CONCURRENT_WRITER, store.state_dir, worker, go, padding)
               for worker in range(8)]
    try:
        go.touch()
        counts_seen = set()
        files_checked = set()
        while any(w.poll() is None for w in writers):
            time.sleep(0.001)  # leave the writers most of the CPU
            if not store.index_path.exists():
                continue  # the first writer has not started yet
            summaries = store.summaries()
            counts_seen.add(len(summaries))
            for name in set(summaries) - files_checked:  # an indexed definition is complete
                check_complete(store.read_domain(name), name, padding)
            # So is any definition that is visible at all, indexed yet or not.
            for entry in os.listdir(store.state_dir / "domains"):
                name = entry.removesuffix(".xml")
                if entry.endswith(".xml") and name not in files_checked:
                    check_complete((store.state_dir / "domains" / entry).read_text(), name, padding)
                    files_checked.add(name)
        results = [finish(w) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()

    assert [code for code, _, _ in results] == [0] * 8, [err for _, _, err in results]
    summaries = store.summaries()
    expected = {f"w{w}-d{i:02}" for w in range(8) for i in range(50)}
    assert set(summaries) == expected
    # Each define saw all the ones before it and none in progress: no two saw the same count.
    assert sorted(summary["seen"] for summary in summaries.values()) == list(range(400))
    files = {p.name for p in (store.state_dir / "domains").iterdir()}
    assert files == {f"{name}.xml" for name in expected}
    for name, summary in summaries.items():
        xml = store.read_domain(name)
        check_complete(xml, name, padding)
        assert summary["size"] == len(xml)
    # The reader really ran during the writes, not only before or after them.
    assert files_checked
    assert any(0 < count < len(expected) for count in counts_seen)


# Runtime records and files


def test_runtime_record_round_trip(store):
    record = {"pid": 4242, "qmp": "/run/virtnet/web/qmp.sock", "taps": ["vnet0", "vnet1"]}
    with store.lock():
        store.write_runtime("web", record)
        store.write_runtime("db", {"pid": 1})
    assert store.read_runtime("web") == record
    assert store.running_names() == ["db", "web"]

    with store.lock():
        store.clear_runtime("web")
        store.clear_runtime("web")  # already gone: no error
    assert store.read_runtime("web") is None
    assert store.running_names() == ["db"]


def test_a_damaged_runtime_record_is_reported(store):
    with store.lock():
        store.write_runtime("web", {"pid": 1})
    (store.state_dir / "running" / "web.json").write_text('{"pid": ')
    with pytest.raises(StoreError, match="runtime record .*web.json is damaged"):
        store.read_runtime("web")


def test_state_and_runtime_dirs_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store(Path("state"), Path("run"))
    assert (store.state_dir, store.runtime_dir) == (tmp_path / "state", tmp_path / "run")


# Where the directories are


@pytest.fixture
def clean_env(monkeypatch):
    variables = ("VIRTNET_STATE_DIR", "VIRTNET_RUNTIME_DIR", "XDG_DATA_HOME", "XDG_RUNTIME_DIR")
    for variable in variables:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", "/home/alice")
    return monkeypatch


def as_user(monkeypatch, uid):
    monkeypatch.setattr(os, "geteuid", lambda: uid)


@pytest.mark.parametrize("uid", [0, 1000])
def test_state_dir_from_virtnet_state_dir(clean_env, uid):
    as_user(clean_env, uid)
    clean_env.setenv("VIRTNET_STATE_DIR", "/srv/vn")
    clean_env.setenv("XDG_DATA_HOME", "/data")
    assert default_state_dir() == Path("/srv/vn")


def test_state_dir_for_root(clean_env):
    as_user(clean_env, 0)
    clean_env.setenv("XDG_DATA_HOME", "/data")
    assert default_state_dir() == Path("/var/lib/virtnet")


def test_state_dir_from_xdg_data_home(clean_env):
    as_user(clean_env, 1000)
    clean_env.setenv("XDG_DATA_HOME", "/data")
    assert default_state_dir() == Path("/data/virtnet")


@pytest.mark.parametrize("xdg_data_home", [None, "", "relative/dir"])
def test_state_dir_in_home_without_a_usable_xdg_data_home(clean_env, xdg_data_home):
    as_user(clean_env, 1000)
    if xdg_data_home is not None:
        clean_env.setenv("XDG_DATA_HOME", xdg_data_home)
    assert default_state_dir() == Path("/home/alice/.local/share/virtnet")


@pytest.mark.parametrize("uid, environment, expected", [
    (0, {"VIRTNET_RUNTIME_DIR": "/r"}, "/r"),
    (1000, {"VIRTNET_RUNTIME_DIR": "/r", "XDG_RUNTIME_DIR": "/run/user/1000"}, "/r"),
    (0, {"XDG_RUNTIME_DIR": "/run/user/0"}, "/run/virtnet"),
    (1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000/virtnet"),
    (1000, {"XDG_DATA_HOME": "/data"}, "/data/virtnet/run"),
    (1000, {"VIRTNET_STATE_DIR": "/srv/vn"}, "/srv/vn/run"),
])
def test_runtime_dir(clean_env, uid, environment, expected):
    as_user(clean_env, uid)
    for variable, value in environment.items():
        clean_env.setenv(variable, value)
    assert default_runtime_dir() == Path(expected)

