"""The state directory: domain definitions, their index, runtime records, and the lock around them.

Layout under the state dir:

    domains/NAME.xml    the canonical XML of each defined domain
    index.json          {"version": 1, "domains": {NAME: summary}}, so that `list` and define's
                        conflict checks read one file instead of parsing every definition
    running/NAME.json   the runtime record of a running domain
    pending             the name whose XML and index entry are being changed (see below)
    lock                flock'ed by every writer

Every file is replaced atomically (temporary file, fsync, rename, fsync of the directory), so a
reader needs no lock and sees either the old or the new content, never a part.

The XML and its index entry are two files, and a crash can land between their renames. So a writer
first records the name in `pending` and deletes it once both are in place; whoever next finds
`pending` while holding the lock summarises that one domain again from its XML.

Standard library only: the fast verbs (list, dumpxml) import this module.
"""

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from virtnet.errors import StoreError, VirtnetError

INDEX_VERSION = 1
MAX_NAME_BYTES = 200  # leaves room in a 255-byte file name for ".xml" and temporary-file affixes
SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), including the terminating NUL
_TMP_PREFIX = ".tmp-"  # temporary files never end in ".xml" or ".json", so listings skip them


def default_state_dir() -> Path:
    """$VIRTNET_STATE_DIR; else /var/lib/virtnet for root; else the XDG data home's virtnet."""
    explicit = os.environ.get("VIRTNET_STATE_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/virtnet")
    return _xdg_dir("XDG_DATA_HOME", Path.home() / ".local" / "share") / "virtnet"


def default_runtime_dir() -> Path:
    """$VIRTNET_RUNTIME_DIR; else /run/virtnet for root; else $XDG_RUNTIME_DIR/virtnet; else
    <state dir>/run. Holds sockets, so it should have a short path."""
    explicit = os.environ.get("VIRTNET_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/run/virtnet")
    xdg = _xdg_dir("XDG_RUNTIME_DIR", None)
    if xdg is not None:
        return xdg / "virtnet"
    return default_state_dir() / "run"


def _xdg_dir(variable, fallback):
    # The XDG base directory spec says to ignore empty and relative values.
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else fallback


def check_name(name, what="domain name"):
    """Refuse a name that cannot be used as one file name in a directory."""
    if not isinstance(name, str) or name == "":
        raise StoreError(f"the {what} is empty")
    if name in (".", ".."):
        raise StoreError(f"the {what} cannot be '{name}'")
    if "/" in name or "\0" in name:
        raise StoreError(f"the {what} {name!r} contains '/' or a NUL character, "
                         "which a file name cannot")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise StoreError(f"the {what} {name!r} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise StoreError(f"the {what} is {size} bytes long; at most {MAX_NAME_BYTES} are accepted")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes):
    """Replace path with data so that readers and crashes see the old or the new content only."""
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


class Store:
    """The definitions and runtime records in one state dir. Not shared between threads.

    summarize(xml_text) -> dict rebuilds an index entry from a definition; it is needed only when
    index.json is lost or a writer crashed, and may raise a VirtnetError for a bad file. A function
    that imports the XML code only when called keeps the fast verbs fast.
    """

    def __init__(self, state_dir: Path, runtime_dir: Path | None = None, summarize=None):
        self.state_dir = Path(state_dir).absolute()
        # Absolute, because QEMU and passt get these socket paths and may run elsewhere.
        self.runtime_dir = (Path(runtime_dir).absolute() if runtime_dir is not None
                            else self.state_dir / "run")
        self.summarize = summarize
        self.domains_dir = self.state_dir / "domains"
        self.running_dir = self.state_dir / "running"
        self.index_path = self.state_dir / "index.json"
        self.pending_path = self.state_dir / "pending"
        self.lock_path = self.state_dir / "lock"
        self._lock_depth = 0
        self._index = None  # the index as loaded while the lock is held; nobody else can change it

    @classmethod
    def default(cls, summarize=None):
        """The store at the default state and runtime dirs."""
        return cls(default_state_dir(), default_runtime_dir(), summarize)

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
                self._index = None
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def _require_lock(self, operation):
        if not self._lock_depth:
            raise RuntimeError(f"Store.{operation} must be called inside `with store.lock():`")

    # Definitions

    def summaries(self) -> dict[str, dict]:
        """Name -> summary of every defined domain. Needs no lock; under the lock, the index is
        read once and kept until the lock is released."""
        if self._lock_depth:
            return dict(self._locked_index())
        if self.summarize is not None and self.pending_path.exists():
            self._repair_if_lock_free()
        index = self._read_index_file()
        if index is None:
            if not self._domain_files():
                return {}  # nothing defined yet: create nothing either
            with self.lock():
                return dict(self._locked_index())
        return index

    def names(self) -> list[str]:
        """The defined domain names, sorted."""
        return sorted(self.summaries())

    def read_domain(self, name) -> str:
        """The stored XML of a domain."""
        check_name(name)
        try:
            return (self.domains_dir / f"{name}.xml").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _no_domain(name) from None
        except OSError as e:
            raise StoreError(f"cannot read the definition of '{name}': {e.strerror}") from None

    def write_domain(self, name, xml_text, summary):
        """Define or redefine a domain: its XML and its index entry. Needs the lock."""
        self._require_lock("write_domain")
        check_name(name)
        index = dict(self._locked_index())
        index[name] = summary
        # Encoded first, so that a summary that is not JSON fails before anything changes.
        index_bytes = self._encode_index(index)
        self._change(name, lambda: _write_atomically(self.domains_dir / f"{name}.xml",
                                                     xml_text.encode("utf-8")), index, index_bytes)

    def remove_domain(self, name):
        """Undefine a domain: remove its XML and its index entry. Needs the lock."""
        self._require_lock("remove_domain")
        check_name(name)
        index = dict(self._locked_index())
        if name not in index and not (self.domains_dir / f"{name}.xml").exists():
            raise _no_domain(name)
        index.pop(name, None)
        self._change(name, lambda: _unlink(self.domains_dir / f"{name}.xml"), index,
                     self._encode_index(index))

    def _change(self, name, change_file, index, index_bytes):
        # On failure `pending` stays, so the next lock holder repairs whatever half happened.
        self._index = None
        try:
            _write_atomically(self.pending_path, json.dumps({"name": name}).encode())
            change_file()
            _write_atomically(self.index_path, index_bytes)
            self._index = index
            # Not fsynced: should a crash undo the removal, the repair merely redoes the same entry.
            os.unlink(self.pending_path)
        except OSError as e:
            raise StoreError(f"cannot save the definition of '{name}' in {self.state_dir}: "
                             f"{e.strerror}") from None

    # The index

    def _locked_index(self):
        if self._index is None:
            index = self._read_index_file()
            if index is None:
                index = self._rebuild_index()
                self._save_index(index)
            if self.pending_path.exists():
                self._repair_pending(index)
            self._index = index
        return self._index

    def _read_index_file(self):
        """The index, or None when it is missing or not an index (then it is rebuilt)."""
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {self.index_path}: {e.strerror}") from None
        try:
            content = json.loads(data)
        except ValueError:
            return None
        if not isinstance(content, dict) or content.get("version") != INDEX_VERSION:
            return None
        domains = content.get("domains")
        return domains if isinstance(domains, dict) else None

    @staticmethod
    def _encode_index(index):
        # One compact json.dumps: encoding entry by entry (say, one per line) is 2-3 times slower.
        document = {"version": INDEX_VERSION, "domains": index}
        return json.dumps(document, separators=(",", ":")).encode()

    def _save_index(self, index):
        try:
            _write_atomically(self.index_path, self._encode_index(index))
        except OSError as e:
            raise StoreError(f"cannot save {self.index_path}: {e.strerror}") from None

    def _domain_files(self):
        try:
            return sorted(f for f in os.listdir(self.domains_dir)
                          if f.endswith(".xml") and not f.startswith(_TMP_PREFIX))
        except FileNotFoundError:
            return []

    def _summarize_file(self, name):
        """The summary of one stored definition, or None when it does not exist."""
        path = self.domains_dir / f"{name}.xml"
        try:
            xml_text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None
        if self.summarize is None:
            raise StoreError(f"the index {self.index_path} is missing or out of date, and this "
                             "command cannot rebuild it because it does not parse definitions")
        try:
            return self.summarize(xml_text)
        except VirtnetError as e:
            raise e.located(file=str(path))

    def _rebuild_index(self):
        names = (f.removesuffix(".xml") for f in self._domain_files())
        return {name: self._summarize_file(name) for name in names}

    def _repair_if_lock_free(self):
        """Repair what a crashed writer left, unless a writer is at work right now (then `pending`
        is its own, and the index it will replace is still consistent)."""
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
                self._locked_index()
            finally:
                self._lock_depth = 0
                self._index = None
        finally:
            os.close(fd)

    def _repair_pending(self, index):
        """Redo the index entry of the name a crashed writer left in `pending`."""
        try:
            name = json.loads(self.pending_path.read_bytes())["name"]
            check_name(name)
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, StoreError):
            name = None  # cannot happen with an atomic write, but then trust nothing
        if name is None:
            index.clear()
            index.update(self._rebuild_index())
        else:
            summary = self._summarize_file(name)
            if summary is None:
                index.pop(name, None)
            else:
                index[name] = summary
        self._save_index(index)
        self._remove_leftover_temporaries()
        _unlink(self.pending_path)

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
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {path}: {e.strerror}") from None
        except ValueError:
            raise StoreError(f"the runtime record {path} is not valid JSON; remove it if "
                             f"'{name}' is not running") from None

    def clear_runtime(self, name):
        """Forget the runtime record of a domain (no error when there is none). Needs the lock."""
        self._require_lock("clear_runtime")
        check_name(name)
        _unlink(self.running_dir / f"{name}.json")

    def running_names(self) -> list[str]:
        """Names of the domains with a runtime record, sorted."""
        try:
            entries = os.listdir(self.running_dir)
        except FileNotFoundError:
            return []
        return sorted(e[:-len(".json")] for e in entries
                      if e.endswith(".json") and not e.startswith(_TMP_PREFIX))

    # Runtime files: sockets, logs, pid files

    def runtime_path(self, name, leaf) -> Path:
        """runtime_dir/NAME/leaf, creating runtime_dir/NAME; refused when too long for a socket."""
        check_name(name)
        check_name(leaf, "runtime file name")
        path = self.runtime_dir / name / leaf
        size = len(os.fsencode(path))
        if size >= SUN_PATH_MAX:
            raise StoreError(
                f"the runtime path {path} is {size} bytes long, and a unix socket path must be "
                f"shorter than {SUN_PATH_MAX}; set VIRTNET_RUNTIME_DIR to a shorter directory "
                "or use a shorter domain name")
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create {path.parent}: {e.strerror}") from None
        return path

    def remove_runtime_dir(self, name):
        """Remove runtime_dir/NAME and everything in it (no error when it is gone)."""
        check_name(name)
        try:
            shutil.rmtree(self.runtime_dir / name)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot remove {self.runtime_dir / name}: {e.strerror}") from None
