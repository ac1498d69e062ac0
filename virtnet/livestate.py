"""The live state of a running domain, as libvirt keeps it: the live domain XML (aliases and the
tap names actually used) and one typed runtime record (the QEMU process, where its files are, and
the teardown actions that undo what start did). This module is the only reader and writer of both.

Both live in the state directory's running/ folder (NAME.json, NAME.xml), written atomically under
the store's lock.

A start in progress has a record too, written before the first step that would outlive the start
process (passt, QEMU, an address on a managed='no' tap, a script) and updated as it goes: it names
the starting process (`starter`) and the teardown so far. If that process is killed, the next
command finds the starter gone and runs the teardown (a QEMU whose pid was not yet recorded is
found by its QMP socket path).
"""

from dataclasses import dataclass, field

from virtnet.errors import StoreError
from virtnet.host.process import start_time

RECORD_VERSION = 2


def process_identity(pid):
    """(pid, start time in clock ticks): names one process for good, even once the pid is reused."""
    started = start_time(pid)
    return None if started is None else [pid, started]


@dataclass
class LiveState:
    pid: int | None  # QEMU (None while a start is in progress and QEMU's pid is not known yet)
    qmp: str  # its QMP socket
    runtime_dir: str  # sockets and logs, as start made them (a later command may use another --runtime-dir)
    netns: str | None = None  # the network namespace the domain's devices live in (None: the host's)
    taps: dict = field(default_factory=dict)  # device alias -> tap name (created, opened or the helper's)
    teardown: list = field(default_factory=list)  # plan actions, in the order destroy runs them
    starter: list | None = None  # process_identity() of the start in progress; None once started

    @property
    def paths(self):
        """The DomainPaths start used (a later command may run with another --runtime-dir)."""
        from pathlib import Path

        from virtnet.runpaths import DomainPaths

        folder = Path(self.runtime_dir)
        return DomainPaths(folder.parent, folder.name)

    @property
    def starting(self):
        return self.starter is not None

    def starter_alive(self):
        return self.starting and process_identity(self.starter[0]) == self.starter

    @property
    def created_taps(self):
        return [a.ifname for a in self.teardown if a.kind == "delete-tap"]

    @property
    def passts(self):
        return [a for a in self.teardown if a.kind == "stop-passt"]

    def as_dict(self):
        return {"version": RECORD_VERSION, "pid": self.pid, "qmp": self.qmp, "runtime_dir": self.runtime_dir,
                "netns": self.netns, "taps": self.taps, "teardown": [a.as_dict() for a in self.teardown],
                "starter": self.starter}

    @classmethod
    def from_dict(cls, data):
        from virtnet.host.plan import action_from_dict

        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"record version {data.get('version')!r}, expected {RECORD_VERSION}")
        starter = data.get("starter")
        return cls(pid=None if data["pid"] is None else int(data["pid"]), qmp=str(data["qmp"]),
                   runtime_dir=str(data["runtime_dir"]), netns=data.get("netns"), taps=dict(data.get("taps") or {}),
                   teardown=[action_from_dict(a) for a in data.get("teardown") or []],
                   starter=None if starter is None else [int(starter[0]), int(starter[1])])


def save(store, name, state, live_xml=None):
    """Record a domain's live state (needs the store's lock); LIVE_XML once it has started (it goes
    first: a started domain's record always has its XML)."""
    if live_xml is not None:
        store.write_runtime_file(name, ".xml", live_xml.encode())
    store.write_runtime(name, state.as_dict())


def load(store, name):
    """The LiveState of a domain recorded as running, or None."""
    data = store.read_runtime(name)
    if data is None:
        return None
    try:
        return LiveState.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"the runtime record {store.running_dir / (name + '.json')} is damaged ({e}); "
                         f"remove it if '{name}' is not running") from None


def live_xml(store, name):
    """The live XML text of a running domain, or None when there is none."""
    return store.read_runtime_file(name, ".xml")


def live_domain(store, name, missing_ok=False):
    """The live XML of a running domain as its model (conf.domain.Domain, read-once: thaw it before
    changing it). Without it: None with MISSING_OK, else a StoreError."""
    from virtnet.conf.load import load_live

    text = live_xml(store, name)
    if text is None:
        if missing_ok:
            return None
        raise StoreError(f"domain '{name}' has no live XML in {store.running_dir}; restart it (destroy, then "
                         "start) to change it while it runs")
    return load_live(text, f"{store.running_dir}/{name}.xml").domain


def forget(store, name):
    """Remove the record and the live XML (needs the store's lock)."""
    store.clear_runtime(name)


def load_or_skip(store, name):
    """(LiveState or None, None) as load() gives it; or (None, warning) when the record of NAME is
    damaged (unreadable, not JSON, keys missing or wrong): the warning is one line that names the
    file. Commands that go through every record (reaping, list) skip a damaged one with it instead
    of failing for every domain; the domain itself stays in doubt, so undefine and start still
    refuse it until the record is removed."""
    path = store.running_dir / f"{name}.json"
    try:
        data = store.read_runtime(name)
    except StoreError:
        reason = _unusable(path)
    else:
        if data is None:
            return None, None
        try:
            return LiveState.from_dict(data), None
        except KeyError as e:
            reason = f"missing or unknown key {e}"
        except (AttributeError, TypeError, ValueError) as e:
            reason = str(e)
    reason = reason if reason.isprintable() else repr(reason)[1:-1]
    return None, f"{path}: damaged runtime record ({reason}); skipped — remove it if '{name}' is not running"


def _unusable(path):
    """Why read_runtime refused the record at path."""
    import json

    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        return e.strerror or str(e)
    except ValueError:
        return "not JSON"
    return "no pid and QMP socket" if isinstance(data, dict) else "not a JSON object"


# --- transient domains (`virtnet create`) ----------------------------------------------------------
#
# A domain started with `create` is defined for as long as it runs, so that list, dumpxml, domiflist
# and define's conflict rules see it like any other, and forgotten when it stops. Its marker,
# running/NAME.transient, names the definition file create wrote (inode, size, times) and the
# process creating it. Whoever tears the domain down removes the definition only while it is still
# that file: a `define` of the same name meanwhile (a new file) makes the domain persistent, as in
# libvirt. A marker without a runtime record whose creator is gone (a create killed before its
# start recorded anything) is swept by the next command that reaps dead domains.

TRANSIENT_SUFFIX = ".transient"


def _definition_signature(store, name):
    import os

    try:
        st = os.stat(store.domains_dir / f"{name}.xml")
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def mark_transient(store, name):
    """Record that the definition of NAME, just written by create, goes when the domain stops
    (needs the store's lock)."""
    import json
    import os

    marker = {"definition": _definition_signature(store, name), "creator": process_identity(os.getpid())}
    store.write_runtime_file(name, TRANSIENT_SUFFIX, json.dumps(marker).encode())


def _marker(store, name):
    import json

    try:
        text = store.read_runtime_file(name, TRANSIENT_SUFFIX)
    except StoreError:
        return {}  # unreadable: still a marker, but it matches no definition
    if text is None:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        return {}
    return marker if isinstance(marker, dict) else {}


def is_transient(store, name):
    """True when NAME was started by create and its definition is still the one create wrote."""
    marker = _marker(store, name)
    return bool(marker) and marker.get("definition") is not None and \
        marker.get("definition") == _definition_signature(store, name)


def creator_alive(store, name):
    """True while the create that wrote NAME's marker still runs."""
    marker = _marker(store, name) or {}
    creator = marker.get("creator")
    try:
        return creator is not None and process_identity(int(creator[0])) == [int(creator[0]), int(creator[1])]
    except (TypeError, ValueError, IndexError):
        return False


def unmark_transient(store, name):
    """Remove NAME's marker (needs the store's lock); no error when there is none."""
    store.remove_runtime_file(name, TRANSIENT_SUFFIX)


def transient_names(store):
    """Names with a transient marker, sorted."""
    import os

    try:
        entries = os.listdir(store.running_dir)
    except FileNotFoundError:
        return []
    return sorted(e[:-len(TRANSIENT_SUFFIX)] for e in entries
                  if e.endswith(TRANSIENT_SUFFIX) and not e.startswith("."))
