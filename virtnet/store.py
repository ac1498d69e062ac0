"""The state directory: domain definitions, their index, runtime records, and the lock around them.

Layout under the state dir:

    domains/NAME.xml    the canonical XML of each defined domain
    index.sqlite        an SQLite index of the definitions, so that `list` reads one table and
                        define's conflict checks look keys up, instead of parsing every definition
    running/NAME.json   the runtime record of a running domain
    networks/           virtual networks' definitions, autostart marks and records (NetworkFiles)
    lock                flock'ed by every writer

Definitions and runtime records are replaced atomically (temporary file, fsync, rename, fsync of
the directory), so a reader needs no lock and sees either the old or the new content, never a part.

The index (its schema version is SQLite's user_version):

    domains(name, uuid, summary)   one row per definition
    macs(mac, name)                one row per MAC address of a domain
    targets(dev, name)             one row per fixed target dev of a domain
    pending(name)                  definitions being changed (see below)
    problems(name, line, problem, skipped, signature)
                                   definitions the index could not take as they are (see below)

A summary (what summarize(xml) returns) is split: its keys "uuid", "macs" and "targets" go into
the columns above, the rest is kept as JSON in domains.summary. So define's conflict checks look
keys up by index, and `list` decodes only what it shows (at 10 000 domains, decoding the MACs and
uuids too would cost more than reading the table). uuid, mac and dev are indexed, not unique: the
index mirrors the definitions on disk and must be rebuildable from whatever files are there,
while refusing a duplicate is define's rule (virtnet/domains.py).

The index is in WAL mode: a reader sees the last committed transaction, whole, and neither waits
for a writer nor holds one up (with a rollback journal, `list` and a define's commit would wait for
each other). Commits are synchronous=FULL, as the repair below relies on their order with the XML's
rename.

The XML and its index rows cannot change in one atomic step. So a writer first commits the name
into `pending`, then replaces the XML, then commits the new rows together with the name's removal
from `pending`. Whoever next finds a name in `pending` while holding the lock summarises that one
domain again from its XML. A missing or unreadable index is rebuilt from all the XML files.

One bad file does not stop the others. A definition that cannot be summarised (unreadable, not
UTF-8, not XML, refused by the schema or a rule) gets no row in domains, only one in problems
(skipped), and every `list` warns about it until it is fixed or undefined: remove_domain takes it
away like any other, and write_domain replaces it. A definition whose <name> differs from its file
name is indexed under the file name, which is the key everything else uses (read_domain, the
conflict checks, runtime records), with a problems row too: so its uuid, MACs and target devs keep
counting for define's conflict rules, and neither <name> can be defined as a second domain that
reuses them. A problems row keeps its file's signature (inode, size, times), so a file fixed or
deleted by hand is summarised again by the next access that can take the lock. (Other definitions
edited by hand are not noticed: the index is a cache of what virtnet wrote.) Files whose names no
domain can have (check_name) are not definitions.

Standard library only, and sqlite3 is imported when the index is first used: the fast verbs (list,
dumpxml) import this module.
"""

import contextlib
import fcntl
import json
import os
from pathlib import Path

from virtnet.conf.text import has_control
from virtnet.errors import StoreError, VirtnetError

INDEX_VERSION = 2
# Seconds SQLite waits for one of its own locks. The flock serialises writers and WAL readers take
# no lock a writer waits for, so only rare steps wait (recovering a WAL after a crash, a checkpoint).
INDEX_TIMEOUT = 10.0
MAX_NAME_BYTES = 200  # leaves room in a 255-byte file name for ".xml" and temporary-file affixes
_TMP_PREFIX = ".tmp-"  # temporary files never end in ".xml" or ".json", so listings skip them

_SCHEMA = (
    "CREATE TABLE domains (name TEXT PRIMARY KEY, uuid TEXT, summary TEXT NOT NULL)",
    "CREATE INDEX domains_uuid ON domains (uuid)",
    "CREATE TABLE macs (mac TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (mac, name)) WITHOUT ROWID",
    "CREATE INDEX macs_name ON macs (name)",
    "CREATE TABLE targets (dev TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (dev, name)) WITHOUT ROWID",
    "CREATE INDEX targets_name ON targets (name)",
    "CREATE TABLE pending (name TEXT PRIMARY KEY)",
    "CREATE TABLE problems (name TEXT PRIMARY KEY, line INTEGER, problem TEXT NOT NULL, "
    "skipped INTEGER NOT NULL, signature TEXT NOT NULL)",
)
_TABLES = frozenset(("domains", "macs", "targets", "pending", "problems"))
_KEYS = ("uuid", "macs", "targets")  # the entries of a summary kept in columns, not in its JSON
# What a damaged index raises (primary result codes): SQLITE_CORRUPT, SQLITE_NOTADB.
_DAMAGED = (11, 26)
_SQLITE_CANTOPEN = 14


def check_name(name, what="domain name"):
    """Refuse a name that cannot be used as one file name in a directory."""
    if not isinstance(name, str) or name == "":
        raise StoreError(f"the {what} is empty")
    if name in (".", ".."):
        raise StoreError(f"the {what} cannot be '{name}'")
    if "/" in name or "\0" in name:
        raise StoreError(f"the {what} {name!r} contains '/' or a NUL character, "
                         "which a file name cannot")
    if name.startswith("."):
        # Hidden names are the store's own (its temporary files start with _TMP_PREFIX).
        raise StoreError(f"the {what} {name!r} starts with '.', which a name may not")
    if has_control(name):  # they spoof `list`
        raise StoreError(f"the {what} {name!r} contains a control character; accepted: printable "
                         "characters only")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise StoreError(f"the {what} {name!r} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise StoreError(f"the {what} is {size} bytes long; at most {MAX_NAME_BYTES} are accepted")


def _is_name(name):
    try:
        check_name(name)
    except StoreError:
        return False
    return True


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes):
    """Replace path with data so that readers and crashes see the old or the new content only."""
    import tempfile  # writers only: `list` does without its imports

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _unlink(path: Path):
    """Remove path, if it exists, and persist the removal."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    _fsync_dir(path.parent)


def _no_domain(name):
    return StoreError(f"no domain named '{name}' is defined (see `virtnet list --all`)")


# The index's rows


def _encode(summary):
    """(JSON of the summary without its keys, uuid, MACs, target devs). Raises TypeError for a
    summary that is not JSON or whose keys are not strings, before anything is written."""
    if not isinstance(summary, dict):
        return json.dumps(summary, separators=(",", ":")), None, [], []
    # "name" (the <name> inside) is compared with the file's name, not kept (see _summarize_file).
    rest = {key: value for key, value in summary.items() if key not in _KEYS and key != "name"}
    uuid = summary.get("uuid")
    if uuid is not None and not isinstance(uuid, str):
        raise TypeError(f"the uuid of a summary must be a string, not {uuid!r}")
    return (json.dumps(rest, separators=(",", ":")), uuid,
            _strings(summary, "macs"), _strings(summary, "targets"))


def _strings(summary, key):
    value = summary.get(key, [])
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"the {key} of a summary must be a list of strings, not {value!r}")
    return sorted(set(value))


def _put(db, name, text, uuid, macs, targets):
    _drop(db, name)
    _insert(db, name, text, uuid, macs, targets)


def _insert(db, name, text, uuid, macs, targets):
    db.execute("INSERT INTO domains (name, uuid, summary) VALUES (?, ?, ?)", (name, uuid, text))
    db.executemany("INSERT INTO macs (mac, name) VALUES (?, ?)", [(mac, name) for mac in macs])
    db.executemany("INSERT INTO targets (dev, name) VALUES (?, ?)", [(dev, name) for dev in targets])


def _drop(db, name):
    for table in ("domains", "macs", "targets", "problems"):
        db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))


def _enter(db, name, entry, fresh=False):
    """Index one definition as _summarize_file found it (None: there is no file). fresh: the
    tables are new, so there is nothing of it to drop first."""
    if not fresh:
        _drop(db, name)
    if entry is None:
        return
    row, problem = entry
    if row is not None:
        _insert(db, name, *row)
    if problem is not None:
        db.execute("INSERT INTO problems (name, line, problem, skipped, signature) VALUES (?, ?, ?, ?, ?)",
                   (name, *problem))


def _signature(st):
    """What tells that a file was changed or replaced: inode, size, modification and change times."""
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _one_line(text):
    """text with line breaks and other unprintable characters escaped: a warning stays one line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _all_summaries(db):
    # One json.loads of all the summaries joined: decoding row by row costs half as much again.
    rows = db.execute("SELECT name, summary FROM domains").fetchall()
    if not rows:
        return {}
    values = json.loads("[" + ",".join([row[1] for row in rows]) + "]")
    return dict(zip([row[0] for row in rows], values))


def _problem_rows(db):
    return db.execute("SELECT name, line, problem, skipped FROM problems ORDER BY name").fetchall()


def _one_summary(db, name):
    row = db.execute("SELECT uuid, summary FROM domains WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    uuid, text = row
    summary = json.loads(text)
    if isinstance(summary, dict):
        if uuid is not None:
            summary["uuid"] = uuid
        for table, column, key in (("macs", "mac", "macs"), ("targets", "dev", "targets")):
            values = [r[0] for r in db.execute(
                f"SELECT {column} FROM {table} WHERE name = ? ORDER BY {column}", (name,))]
            if values:
                summary[key] = values
    return summary


def _owners(db, table, column, keys):
    owners = {}
    for key in sorted(set(keys)):
        names = [row[0] for row in db.execute(f"SELECT name FROM {table} WHERE {column} = ?", (key,))]
        if names:
            owners[key] = sorted(names)
    return owners


@contextlib.contextmanager
def _transaction(db):
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(Exception):
                db.execute("ROLLBACK")
        raise


def _damaged(error):
    """Whether an sqlite3 error says the file is not an intact database (then it is rebuilt)."""
    return (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF in _DAMAGED


def _close(db):
    import sqlite3

    with contextlib.suppress(sqlite3.Error):
        db.close()


def _quote_sql(identifier):
    return '"' + identifier.replace('"', '""') + '"'


class Store:
    """The definitions and runtime records in one state dir. Not shared between threads.

    summarize(xml_text) -> dict rebuilds an index entry from a definition; it is needed only when
    the index is lost or a writer crashed, and may raise a VirtnetError for a bad file (which is then
    skipped: see problems()). A function that imports the XML code only when called keeps the fast
    verbs fast. A summary's "uuid" (a string) and "macs" and "targets" (lists of strings), all
    optional, are its keys: looked up by owners_of_*, returned by summary_of() and left out of
    summaries(). Its optional "name" (the <name> inside) is compared with the file's name, not kept.
    """

    def __init__(self, state_dir: Path, runtime_dir: Path | None = None, summarize=None):
        self.state_dir = Path(state_dir).absolute()
        # Absolute, because QEMU and passt get these socket paths and may run elsewhere.
        self.runtime_dir = (Path(runtime_dir).absolute() if runtime_dir is not None
                            else self.state_dir / "run")
        self.summarize = summarize
        self.domains_dir = self.state_dir / "domains"
        self.running_dir = self.state_dir / "running"
        self.index_path = self.state_dir / "index.sqlite"
        self.lock_path = self.state_dir / "lock"
        self._lock_depth = 0
        self._db = None  # the index connection while the lock is held, checked and repaired

    # Locking

    @contextlib.contextmanager
    def lock(self):
        """Hold the exclusive store lock; re-entering it from the same Store is allowed."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        try:
            for directory in (self.state_dir, self.domains_dir, self.running_dir):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # O_CLOEXEC: a QEMU started while the lock is held must not inherit it and keep it.
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"cannot open the store lock {self.lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield self
            finally:
                self._lock_depth = 0
                self._close_db()
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def _require_lock(self, operation):
        if not self._lock_depth:
            raise RuntimeError(f"Store.{operation} must be called inside `with store.lock():`")

    # Definitions

    def summaries(self) -> dict[str, dict]:
        """Name -> summary of every defined domain, from one committed state of the index, without
        the keys (uuid, macs, targets): what `list` shows, decoded in one go. Needs no lock."""
        return self._query(_all_summaries, {})

    def problems(self) -> list[tuple[str, str, bool]]:
        """(name, warning, skipped) for each definition the index could not take as it is, sorted
        by name: warning is one line that starts with the file (and line) and says what to do;
        skipped tells a definition left out of the index (it cannot be summarised) from one
        indexed under its file's name although its <name> differs (see the module docstring)."""
        return self._warnings(self._query(_problem_rows, []))

    def listing(self) -> tuple[dict[str, dict], list[tuple[str, str, bool]]]:
        """(summaries(), problems()) from one committed state of the index: what `list` shows."""
        summaries, rows = self._query(lambda db: (_all_summaries(db), _problem_rows(db)), ({}, []))
        return summaries, self._warnings(rows)

    def _warnings(self, rows):
        problems = []
        for name, line, problem, skipped in rows:
            where = f"{self.domains_dir / (name + '.xml')}" + (f":{line}" if line else "")
            outcome = "skipped" if skipped else f"listed as '{name}', the name of its file"
            problems.append((name, _one_line(f"{where}: {problem}; {outcome} — fix it, or "
                                             f"`virtnet undefine {name}` removes it"), bool(skipped)))
        return problems

    def names(self) -> list[str]:
        """The defined domain names, sorted."""
        return sorted(self._query(lambda db: [row[0] for row in db.execute("SELECT name FROM domains")], []))

    def summary_of(self, name) -> dict | None:
        """The whole summary of one domain, keys included (MACs and target devs sorted, without
        repeats), or None when it is not defined."""
        check_name(name)
        return self._query(lambda db: _one_summary(db, name), None)

    def owners_of_uuid(self, uuid) -> list[str]:
        """The names of the domains whose summary has this uuid, sorted."""
        if not isinstance(uuid, str):
            return []
        return self._query(lambda db: _owners(db, "domains", "uuid", [uuid]), {}).get(uuid, [])

    def owners_of_macs(self, macs) -> dict[str, list[str]]:
        """MAC -> the names of the domains using it (sorted), for each of macs that is in use."""
        macs = list(macs)
        return self._query(lambda db: _owners(db, "macs", "mac", macs), {}) if macs else {}

    def owners_of_targets(self, devs) -> dict[str, list[str]]:
        """Target dev -> the names of the domains using it (sorted), for each of devs in use."""
        devs = list(devs)
        return self._query(lambda db: _owners(db, "targets", "dev", devs), {}) if devs else {}

    def read_domain(self, name) -> str:
        """The stored XML of a domain."""
        check_name(name)
        try:
            return (self.domains_dir / f"{name}.xml").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _no_domain(name) from None
        except OSError as e:
            raise StoreError(f"cannot read the definition of '{name}': {e.strerror}") from None
        except UnicodeDecodeError:
            raise StoreError(f"the definition of '{name}' ({self.domains_dir / (name + '.xml')}) is not "
                             f"UTF-8; fix it, or `virtnet undefine {name}` removes it") from None

    def write_domain(self, name, xml_text, summary):
        """Define or redefine a domain: its XML and its index entry. Needs the lock."""
        self._require_lock("write_domain")
        check_name(name)
        row = _encode(summary)  # first, so that a summary that is not JSON fails before any change
        data = xml_text.encode("utf-8")
        path = self.domains_dir / f"{name}.xml"
        self._change(name, lambda: _write_atomically(path, data), lambda db: _put(db, name, *row))

    def remove_domain(self, name):
        """Undefine a domain: remove its XML and its index entry. Needs the lock. Either is enough:
        an index entry whose file was deleted by hand, or a file the index skipped (see
        problems()), is removed too."""
        self._require_lock("remove_domain")
        check_name(name)
        path = self.domains_dir / f"{name}.xml"
        if self.summary_of(name) is None and not os.path.lexists(path):
            raise _no_domain(name)
        self._change(name, lambda: _unlink(path), lambda db: _drop(db, name))

    def _change(self, name, change_file, change_rows):
        import sqlite3

        file_changed = False
        try:
            for attempt in (1, 2):
                db = self._locked_db()
                try:
                    with _transaction(db):
                        db.execute("INSERT OR IGNORE INTO pending (name) VALUES (?)", (name,))
                    if not file_changed:
                        change_file()
                        file_changed = True
                    with _transaction(db):
                        change_rows(db)
                        db.execute("DELETE FROM pending WHERE name = ?", (name,))
                    return
                except sqlite3.DatabaseError as e:
                    if attempt == 2 or not _damaged(e):
                        raise
                # A damaged page, found only now: a new index from the definitions, which have
                # this change when the file was changed already; else the change is made again.
                self._close_db()
                self._db = self._rebuild(fresh=True)
                if file_changed:
                    return
        except (OSError, sqlite3.Error) as e:
            # The name stays in `pending`: the next access under the lock (this hold's too, with a
            # new connection) summarises the domain again from whatever XML is in place.
            self._close_db()
            reason = (e.strerror or e) if isinstance(e, OSError) else e
            raise StoreError(f"cannot save the definition of '{name}' in {self.state_dir}: "
                             f"{reason}") from None

    # The index

    def _query(self, read, empty):
        """read(db) on the index. Under the lock, on this hold's connection. Otherwise in a read
        transaction of its own, after repairing what a crashed writer left when that can be done
        now; with no index (or a damaged one), `empty` when nothing is defined, else the index is
        rebuilt under the lock."""
        import sqlite3

        if self._lock_depth:
            return self._locked_query(read)
        repaired = False
        while True:
            db = None
            try:
                db = self._connect()
                if db is not None:
                    db.execute("BEGIN")  # the checks and the read see one state of the index
                    if self._valid(db):
                        if (not repaired and self.summarize is not None
                                and (db.execute("SELECT 1 FROM pending LIMIT 1").fetchone()
                                     or self._stale_problems(db))):
                            # Left by a crashed writer, unless one is at work right now (then it is
                            # its own, and the index it will change is still consistent); or a
                            # definition with a problem was changed by hand.
                            _close(db)
                            db = None
                            repaired = True
                            self._repair_if_lock_free()
                            continue
                        return read(db)
            except sqlite3.DatabaseError as e:
                if not _damaged(e):
                    raise self._index_error(e) from None
            finally:
                if db is not None:
                    _close(db)
            break
        if not self._domain_files():
            return empty  # nothing defined yet: create nothing either
        with self.lock():
            return self._locked_query(read)

    def _locked_query(self, read):
        import sqlite3

        try:
            return read(self._locked_db())
        except sqlite3.DatabaseError as e:
            if not _damaged(e):
                raise self._index_error(e) from None
        # Damaged beyond what opening it checks (a page, not the header): rebuild, read again.
        self._close_db()
        self._db = self._rebuild(fresh=True)
        try:
            return read(self._db)
        except sqlite3.Error as e:
            raise self._index_error(e) from None

    def _locked_db(self):
        """The index connection of this lock hold: checked, and repaired or rebuilt as needed."""
        if self._db is None:
            import sqlite3

            db = None
            damaged = False
            try:
                db = self._connect()
                if db is not None and not self._valid(db):
                    _close(db)
                    db = None
                if db is not None:
                    db.execute("PRAGMA synchronous = FULL")
                    self._repair_pending(db)
            except sqlite3.DatabaseError as e:
                if db is not None:
                    _close(db)
                    db = None
                if not _damaged(e):
                    raise self._index_error(e) from None
                damaged = True
            except BaseException:
                if db is not None:
                    _close(db)
                raise
            self._db = db if db is not None else self._rebuild(fresh=damaged)
        return self._db

    def _close_db(self):
        db, self._db = self._db, None
        if db is not None:
            _close(db)

    def _index_error(self, error):
        return StoreError(f"cannot use the index {self.index_path}: {error}")

    def _connect(self):
        """A connection to the index in autocommit mode (transactions are explicit); None when
        there is no index (it is not created)."""
        import sqlite3
        from urllib.parse import quote

        uri = f"file:{quote(os.fsencode(self.index_path))}?mode=rw"
        try:
            return sqlite3.connect(uri, uri=True, timeout=INDEX_TIMEOUT, isolation_level=None)
        except sqlite3.OperationalError as e:
            if getattr(e, "sqlite_errorcode", None) == _SQLITE_CANTOPEN and not self.index_path.exists():
                return None
            raise

    @staticmethod
    def _valid(db):
        """Whether db is an index of this version; False for another version or an empty file.
        Raises sqlite3.DatabaseError for a file that is not a database."""
        if db.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
            return False
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return tables >= _TABLES

    def _repair_pending(self, db):
        """Summarise again the domains a crashed (or failed) writer left in `pending`, and the
        definitions with a problem whose file changed since."""
        names = [row[0] for row in db.execute("SELECT name FROM pending")]
        if self.summarize is not None:
            names += self._stale_problems(db)
        if not names:
            return
        entries = {}
        for name in dict.fromkeys(names):
            try:
                check_name(name)
            except StoreError:
                entries[name] = None  # never written by a writer: no XML can have that name
            else:
                entries[name] = self._summarize_file(name)
        with _transaction(db):
            for name, entry in entries.items():
                _enter(db, name, entry)
            db.execute("DELETE FROM pending")
        self._remove_leftover_temporaries()

    def _stale_problems(self, db):
        """The names in `problems` whose file is not the one summarised (changed, or deleted)."""
        stale = []
        for name, signature in db.execute("SELECT name, signature FROM problems").fetchall():
            try:
                current = _signature(os.stat(self.domains_dir / f"{name}.xml"))
            except FileNotFoundError:
                current = None
            except OSError:
                continue  # cannot tell: as it was
            if current != signature:
                stale.append(name)
        return stale

    def _repair_if_lock_free(self):
        """Repair what a crashed writer left, unless a writer is at work right now."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return  # cannot lock, so cannot repair: the index as it is will do for reading
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            self._lock_depth = 1
            try:
                self._locked_db()
            finally:
                self._lock_depth = 0
                self._close_db()
        finally:
            os.close(fd)

    def _rebuild(self, fresh=False):
        """Write the index anew from every definition and return a connection to it. Needs the
        lock. Every definition is summarised before the index is touched. fresh: the file is
        damaged, so a new one replaces it (otherwise its content is replaced in one transaction)."""
        import sqlite3

        entries = []
        for file in self._domain_files():
            name = file.removesuffix(".xml")
            entry = self._summarize_file(name)
            if entry is not None:
                entries.append((name, entry))
        try:
            db = self._fill(None if fresh else self._connect(), entries)
        except (OSError, sqlite3.Error) as e:
            reason = (e.strerror or e) if isinstance(e, OSError) else e
            raise StoreError(f"cannot rebuild the index {self.index_path}: {reason}") from None
        self._remove_leftover_temporaries()
        return db

    def _fill(self, db, entries):
        """Replace the content of db (in one transaction, so that readers see the old index or the
        new one) with entries, (name, what _summarize_file found); when db is None or not an intact
        database, of a new file instead."""
        import sqlite3

        if db is not None:
            try:
                self._fill_in(db, entries)
                return db
            except sqlite3.DatabaseError as e:
                _close(db)
                if not _damaged(e):
                    raise
            except BaseException:
                _close(db)
                raise
        # The old file's -wal and -shm go with it, and first: a crash in between then leaves no
        # side file next to a file that is rebuilt again, and the new file never meets them.
        for suffix in ("-wal", "-shm", "-journal", ""):
            _unlink(Path(os.fspath(self.index_path) + suffix))
        # Created here for its mode (SQLite would make it 0644; its -wal and -shm copy the mode).
        os.close(os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        db = self._connect()
        try:
            self._fill_in(db, entries)
        except BaseException:
            _close(db)
            raise
        _fsync_dir(self.state_dir)  # the new file's name, before anything relies on it
        return db

    @staticmethod
    def _fill_in(db, entries):
        db.execute("PRAGMA journal_mode = WAL").fetchone()
        db.execute("PRAGMA synchronous = FULL")
        with _transaction(db):
            tables = [row[0] for row in db.execute(
                "SELECT name FROM sqlite_master "
                "WHERE type = 'table' AND name NOT LIKE 'sqlite^_%' ESCAPE '^'")]
            for table in tables:
                db.execute(f"DROP TABLE {_quote_sql(table)}")
            for statement in _SCHEMA:
                db.execute(statement)
            for name, entry in entries:
                _enter(db, name, entry, fresh=True)
            db.execute(f"PRAGMA user_version = {INDEX_VERSION}")

    def _domain_files(self):
        """The definitions' file names, sorted: NAME.xml for each NAME that check_name accepts
        (not the temporary files, nor names no domain can have)."""
        try:
            entries = os.listdir(self.domains_dir)
        except FileNotFoundError:
            return []
        return sorted(f for f in entries if f.endswith(".xml") and not f.startswith(_TMP_PREFIX)
                      and _is_name(f[:-len(".xml")]))

    def _summarize_file(self, name):
        """How one stored definition enters the index: None when its file does not exist; else
        (row, problem). row is the encoded summary, or None when the file cannot be summarised (it
        is skipped); problem is None, or the problems row (line, text, skipped, signature)."""
        import stat

        path = self.domains_dir / f"{name}.xml"
        signature = "unknown"  # looked at again once it can be stat'ed, or is gone
        try:
            # O_NONBLOCK: a FIFO put there must not hang every command (a regular file ignores it).
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            with contextlib.suppress(OSError):
                signature = _signature(os.stat(path))
            return None, (None, f"cannot read it: {e.strerror}", 1, signature)
        try:
            st = os.fstat(fd)
            signature = _signature(st)
            if not stat.S_ISREG(st.st_mode):
                return None, (None, "not a regular file", 1, signature)
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as e:
            return None, (None, f"cannot read it: {e.strerror}", 1, signature)
        finally:
            os.close(fd)
        if self.summarize is None:
            raise StoreError(f"the index {self.index_path} is missing or out of date, and this "
                             "command cannot rebuild it because it does not parse definitions")
        try:
            xml_text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            return None, (line, f"not UTF-8 (byte 0x{data[e.start]:02x})", 1, signature)
        try:
            summary = self.summarize(xml_text)
        except VirtnetError as e:
            return None, (e.line, e.message, 1, signature)
        row = _encode(summary)
        stated = summary.get("name") if isinstance(summary, dict) else None
        if isinstance(stated, str) and stated != name:
            return row, (None, f"its <name> is {stated!r}, not '{name}'", 0, signature)
        return row, None

    def _remove_leftover_temporaries(self):
        for directory in (self.state_dir, self.domains_dir):
            for entry in os.listdir(directory):
                if entry.startswith(_TMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(directory / entry)

    # Runtime records of running domains

    def write_runtime(self, name, record: dict):
        """Save the runtime record of a running domain. Needs the lock."""
        self._require_lock("write_runtime")
        check_name(name)
        data = json.dumps(record, indent=1).encode()
        try:
            _write_atomically(self.running_dir / f"{name}.json", data)
        except OSError as e:
            raise StoreError(f"cannot save the runtime record of '{name}': {e.strerror}") from None

    def read_runtime(self, name) -> dict | None:
        """The runtime record of a domain, or None when it is not recorded as running."""
        check_name(name)
        path = self.running_dir / f"{name}.json"
        try:
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None
        except ValueError:
            record = None
        pid_known = isinstance(record, dict) and (isinstance(record.get("pid"), int) or record.get("starter"))
        if not pid_known or "qmp" not in record:
            raise StoreError(f"the runtime record {path} is damaged (no pid and QMP socket); remove it if "
                             f"'{name}' is not running")
        return record

    def has_runtime_temporaries(self):
        try:
            return any(e.startswith(_TMP_PREFIX) for e in os.listdir(self.running_dir))
        except FileNotFoundError:
            return False

    def remove_runtime_temporaries(self):
        """Remove temporary files a killed writer left in running/ (needs the lock: then no write is
        under way)."""
        self._require_lock("remove_runtime_temporaries")
        try:
            entries = os.listdir(self.running_dir)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.startswith(_TMP_PREFIX):
                _unlink(self.running_dir / entry)

    def clear_runtime(self, name):
        """Forget the runtime record and live XML of a domain (no error when there are none). Needs the lock."""
        self._require_lock("clear_runtime")
        check_name(name)
        _unlink(self.running_dir / f"{name}.json")
        _unlink(self.running_dir / f"{name}.xml")

    def write_runtime_file(self, name, suffix, data: bytes):
        """Save running/NAME+SUFFIX beside the runtime record (the live XML). Needs the lock."""
        self._require_lock("write_runtime_file")
        check_name(name)
        try:
            _write_atomically(self.running_dir / f"{name}{suffix}", data)
        except OSError as e:
            raise StoreError(f"cannot save the live state of '{name}': {e.strerror}") from None

    def read_runtime_file(self, name, suffix) -> str | None:
        check_name(name)
        path = self.running_dir / f"{name}{suffix}"
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None

    def remove_runtime_file(self, name, suffix):
        """Remove running/NAME+SUFFIX (no error when there is none). Needs the lock."""
        self._require_lock("remove_runtime_file")
        check_name(name)
        _unlink(self.running_dir / f"{name}{suffix}")

    def running_names(self) -> list[str]:
        """Names of the domains with a runtime record, sorted."""
        try:
            entries = os.listdir(self.running_dir)
        except FileNotFoundError:
            return []
        return sorted(e[:-len(".json")] for e in entries
                      if e.endswith(".json") and not e.startswith(_TMP_PREFIX))


class NetworkFiles:
    """Virtual network definitions and runtime records, beside a Store's domains and under its lock:

        networks/NAME.xml           the canonical XML of each defined network
        networks/autostart/NAME     present when `net-autostart NAME` is on
        networks/running/NAME.json  the runtime record of an active network (what net-destroy undoes)

    Networks are few, so there is no index: listing reads the folder. Writes are atomic as the
    domains' are, and need the store's lock."""

    def __init__(self, store: Store):
        self.store = store
        self.dir = store.state_dir / "networks"
        self.autostart_dir = self.dir / "autostart"
        self.running_dir = self.dir / "running"

    def _path(self, folder, name, suffix):
        check_name(name, "network name")
        return folder / f"{name}{suffix}"

    def _write(self, path, data: bytes, operation):
        self.store._require_lock(operation)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_atomically(path, data)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror}") from None

    @staticmethod
    def _read(path):
        try:
            return path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise StoreError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None

    @staticmethod
    def _names(folder, suffix):
        try:
            entries = os.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(e[:len(e) - len(suffix)] for e in entries
                      if e.endswith(suffix) and not e.startswith(_TMP_PREFIX) and _is_name(e[:len(e) - len(suffix)]))

    # definitions
    def names(self):
        return self._names(self.dir, ".xml")

    def read(self, name):
        """The stored XML of network NAME; StoreError when there is none."""
        text = self._read(self._path(self.dir, name, ".xml"))
        if text is None:
            raise StoreError(f"no network named '{name}' is defined (see `virtnet net-list --all`)")
        return text

    def exists(self, name):
        return self._path(self.dir, name, ".xml").exists()

    def write(self, name, xml_text):
        self._write(self._path(self.dir, name, ".xml"), xml_text.encode(), "NetworkFiles.write")

    def remove(self, name):
        self.store._require_lock("NetworkFiles.remove")
        if not self.exists(name):
            self.read(name)  # raises "no network named ..."
        _unlink(self._path(self.autostart_dir, name, ""))
        _unlink(self._path(self.dir, name, ".xml"))

    # autostart
    def autostart(self, name):
        return self._path(self.autostart_dir, name, "").exists()

    def set_autostart(self, name, on):
        path = self._path(self.autostart_dir, name, "")
        if on:
            self._write(path, b"", "NetworkFiles.set_autostart")
        else:
            self.store._require_lock("NetworkFiles.set_autostart")
            _unlink(path)

    def autostart_names(self):
        return self._names(self.autostart_dir, "")

    # runtime records
    def running_names(self):
        return self._names(self.running_dir, ".json")

    def read_runtime(self, name):
        """The runtime record of an active network (a dict), or None; StoreError when damaged."""
        path = self._path(self.running_dir, name, ".json")
        text = self._read(path)
        if text is None:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("teardown"), list):
            raise StoreError(f"the runtime record {path} is damaged; remove it once network '{name}' is known "
                             "to be inactive (its bridge, dnsmasq and nftables table removed by hand)")
        return record

    def write_runtime(self, name, record: dict):
        self._write(self._path(self.running_dir, name, ".json"), json.dumps(record, indent=1).encode(),
                    "NetworkFiles.write_runtime")

    def clear_runtime(self, name):
        self.store._require_lock("NetworkFiles.clear_runtime")
        _unlink(self._path(self.running_dir, name, ".json"))

    def remove_temporaries(self):
        """Remove what a writer killed mid-write left (needs the lock: then no write is under way)."""
        self.store._require_lock("NetworkFiles.remove_temporaries")
        for folder in (self.dir, self.autostart_dir, self.running_dir):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.listdir(folder):
                    if entry.startswith(_TMP_PREFIX):
                        _unlink(folder / entry)
