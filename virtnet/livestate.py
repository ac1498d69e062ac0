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

RECORD_VERSION = 2


def process_identity(pid):
    """(pid, start time in clock ticks): names one process for good, even once the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return [pid, int(fields[19])]
    except (OSError, IndexError, ValueError):
        return None


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


def forget(store, name):
    """Remove the record and the live XML (needs the store's lock)."""
    store.clear_runtime(name)
