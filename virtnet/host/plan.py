"""The host actions `virtnet start` takes for a domain, as a pure list of dataclasses.

Planning touches no host state: what it needs to know about the host (names already in use, host
capabilities) is passed in. The executor (executor.py) carries the actions out and rolls back.
Semantics follow libvirt's QEMU driver: managed taps are created and configured;
managed='no' taps are only checked and opened; sockets/user/vhost-user need nothing on the host.

Every action names the device it belongs to by its alias (conf.identity), never by position. An
action that leaves something on the host says how to undo it (`inverse`): the executor records
those inverses as it goes, rollback runs them, and the runtime record keeps them for `destroy`.
So the teardown `plan` prints is the one destroy runs.
"""

import shlex
from dataclasses import asdict, dataclass, field

from virtnet.conf.ifname import fits
from virtnet.errors import HostError

MAX_NAME_TRIES = 10000


@dataclass
class Action:
    device: str  # the device's alias ('net0', 'ua-web'); '' for domain-wide actions

    @property
    def kind(self):
        return KIND_OF[type(self)]

    def as_dict(self):
        return {"action": self.kind, **asdict(self)}

    def inverse(self):
        """The action that undoes this one on the host, or None when nothing of it outlives virtnet's
        process or the tap it was applied to (a managed tap's MAC, MTU and addresses go with it)."""
        return None

    def line(self):
        return (f"{self.device}: " if self.device else "") + self.describe()


def action_from_dict(data):
    """An action back from as_dict() (runtime records keep teardown actions this way)."""
    data = dict(data)
    return CLASS_OF[data.pop("action")](**data)


@dataclass
class CreateTap(Action):
    ifname: str
    queues: int = 1
    vnet_hdr: bool = False

    def describe(self):
        return f"create tap {self.ifname}{_tap_flags(self)}"

    def inverse(self):
        return DeleteTap(self.device, self.ifname)


@dataclass
class AttachTap(Action):
    """managed='no': the device must exist and be a tap with matching multi_queue; nothing changes."""

    ifname: str
    queues: int = 1
    vnet_hdr: bool = False

    def describe(self):
        return f"open existing tap {self.ifname}{_tap_flags(self)} (managed='no': left untouched)"


@dataclass
class CheckBridge(Action):
    bridge: str

    def describe(self):
        return f"check bridge {self.bridge} exists"


@dataclass
class RunBridgeHelper(Action):
    """Without CAP_NET_ADMIN: qemu-bridge-helper creates the tap, enslaves it and passes its fd back
    (one fd: no multiqueue). Its ACL is checked first. The tap goes away with QEMU."""

    bridge: str
    helper: str
    vnet_hdr: bool = False

    def describe(self):
        vnet = " --use-vnet" if self.vnet_hdr else ""
        return f"run {self.helper}{vnet} --br={self.bridge} (checked against its ACL first) for the tap fd"


@dataclass
class StartPasst(Action):
    """Start passt for a user (or vhost-user) interface before QEMU; QEMU connects to its socket."""

    argv: list
    socket: str
    pidfile: str
    dir: str

    def describe(self):
        return "start " + " ".join(shlex.quote(word) for word in self.argv)

    def inverse(self):
        return StopPasst(self.device, self.pidfile, self.socket, self.dir)


@dataclass
class SetMac(Action):
    ifname: str
    mac: str

    def describe(self):
        return f"set {self.ifname} address {self.mac}"


@dataclass
class SetMtu(Action):
    ifname: str
    mtu: int = None  # None: copy the bridge's MTU
    bridge: str = None

    def describe(self):
        return f"set {self.ifname} mtu {self.mtu if self.mtu else 'of bridge ' + self.bridge}"


@dataclass
class Enslave(Action):
    ifname: str
    bridge: str

    def describe(self):
        return f"set {self.ifname} master {self.bridge}"


@dataclass
class SetUp(Action):
    ifname: str

    def describe(self):
        return f"set {self.ifname} up"


@dataclass
class RunScript(Action):
    """<script> now and <downscript> at teardown (and on rollback, to undo what the script did).
    Either may be absent."""

    ifname: str
    path: str = None
    downscript: str = None

    def describe(self):
        if self.path is None:
            return f"no script; downscript {self.downscript} {self.ifname} at teardown"
        later = f"; downscript {self.downscript} at teardown" if self.downscript else ""
        return f"run script {self.path} {self.ifname}{later}"

    def inverse(self):
        return RunDownscript(self.device, self.ifname, self.downscript) if self.downscript else None


@dataclass
class AddAddress(Action):
    ifname: str
    address: str
    prefix: int
    peer: str = None
    unmanaged: bool = False  # on a managed='no' tap: removed again at teardown (else it goes with the tap)

    def describe(self):
        peer = f" peer {self.peer}" if self.peer else ""
        return f"add address {self.address}/{self.prefix}{peer} to {self.ifname}"

    def inverse(self):
        return DeleteAddress(self.device, self.ifname, self.address, self.prefix) if self.unmanaged else None


@dataclass
class AddRoute(Action):
    ifname: str
    address: str
    prefix: int
    gateway: str = None
    metric: int = None
    unmanaged: bool = False

    def describe(self):
        via = f" via {self.gateway}" if self.gateway else ""
        metric = f" metric {self.metric}" if self.metric is not None else ""
        return f"add route {self.address}/{self.prefix}{via} dev {self.ifname}{metric}"

    def inverse(self):
        if not self.unmanaged:
            return None
        return DeleteRoute(self.device, self.ifname, self.address, self.prefix, self.gateway)


@dataclass
class OpenVhost(Action):
    queues: int = 1
    required: bool = False  # driver name='vhost' asked explicitly: failing to open is fatal

    def describe(self):
        return f"open /dev/vhost-net x{self.queues}" + (" (required)" if self.required else "")


@dataclass
class CheckPath(Action):
    """A disk's image file or block device must exist, be of its kind and be readable (writable
    too unless read-only) before QEMU starts: libvirt fails early the same way, naming the disk."""

    path: str
    readonly: bool = False
    disk_type: str = "file"  # <disk type>: 'file' (an image file) or 'block' (a block device)

    def describe(self):
        what = "block device" if self.disk_type == "block" else "disk image"
        access = "readable" if self.readonly else "readable and writable"
        return f"check {what} {self.path} exists and is {access}"


@dataclass
class StartQemu(Action):
    emulator: str = ""
    qmp: str = ""

    def describe(self):
        return f"start {self.emulator} paused, wait for QMP"

    def inverse(self):
        return StopQemu(self.device, self.qmp)


@dataclass
class SetLinkDown(Action):
    netdev: str = ""

    def describe(self):
        return f"QMP set_link {self.netdev} down"


@dataclass
class Resume(Action):
    def describe(self):
        return "QMP cont (run the vCPUs)"


# Teardown actions: the inverses. The executor fills in what only setup learns (pids, ifindexes).
@dataclass
class StopQemu(Action):
    qmp: str = ""
    pid: int = None

    def describe(self):
        return "stop QEMU (QMP quit, then SIGTERM, then SIGKILL)"


@dataclass
class RunDownscript(Action):
    ifname: str
    path: str

    def describe(self):
        return f"run downscript {self.path} {self.ifname}"


@dataclass
class StopPasst(Action):
    pidfile: str
    socket: str
    dir: str
    pid: int = None

    def describe(self):
        return f"stop passt (pid file {self.pidfile}), remove its socket and pid file"


@dataclass
class DeleteTap(Action):
    ifname: str
    ifindex: int = None  # at creation: deleted only while the name is still that device

    def describe(self):
        return f"delete tap {self.ifname} (all in one request)"


@dataclass
class DeleteAddress(Action):
    ifname: str
    address: str
    prefix: int

    def describe(self):
        return f"remove address {self.address}/{self.prefix} from {self.ifname}"


@dataclass
class DeleteRoute(Action):
    ifname: str
    address: str
    prefix: int
    gateway: str = None

    def describe(self):
        via = f" via {self.gateway}" if self.gateway else ""
        return f"remove route {self.address}/{self.prefix}{via} dev {self.ifname}"


KIND_OF = {
    CreateTap: "create-tap", AttachTap: "attach-tap", CheckBridge: "check-bridge", SetMac: "set-mac",
    SetMtu: "set-mtu", Enslave: "enslave", SetUp: "set-up", RunScript: "run-script",
    AddAddress: "add-address", AddRoute: "add-route", OpenVhost: "open-vhost", StartQemu: "start-qemu",
    SetLinkDown: "set-link-down", Resume: "resume", StopQemu: "stop-qemu", RunDownscript: "run-downscript",
    DeleteTap: "delete-tap", RunBridgeHelper: "run-bridge-helper", StartPasst: "start-passt",
    StopPasst: "stop-passt", DeleteAddress: "delete-address", DeleteRoute: "delete-route",
    CheckPath: "check-path",
}
CLASS_OF = {kind: cls for cls, kind in KIND_OF.items()}


def teardown_order(inverses):
    """The order in which recorded inverses run: the created taps first, then the rest newest first.

    libvirt stops QEMU first and lets each tap vanish as its fd closes, one kernel grace period
    (~20 ms) per tap. virtnet deletes the taps it created first, in one request (the executor
    batches them), so the grace period is paid once; QEMU's writes to a deleted tap just fail, and
    it is being stopped anyway. Downscripts then run after QEMU has stopped, as in libvirt."""
    taps = [a for a in inverses if isinstance(a, DeleteTap)]
    return taps + [a for a in reversed(inverses) if not isinstance(a, DeleteTap)]


def _tap_flags(action):
    flags = []
    if action.vnet_hdr:
        flags.append("vnet_hdr")
    if action.queues > 1:
        flags.append(f"multi_queue x{action.queues}")
    return f" ({', '.join(flags)})" if flags else ""


@dataclass
class Plan:
    setup: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # printed by `virtnet start`

    @property
    def teardown(self):
        """What destroy would run after this setup (the executor records the same inverses)."""
        return teardown_order([inv for inv in (a.inverse() for a in self.setup) if inv is not None])

    def as_dicts(self):
        return {"setup": [a.as_dict() for a in self.setup], "teardown": [a.as_dict() for a in self.teardown]}


class TapNamer:
    """virtnet fills 'vnet%d' or a user's '%d' template itself, with the lowest number whose name is
    in use neither on the host, nor by another running domain, nor as a fixed name in this domain
    (libvirt keeps a counter in its daemon; virtnet has no daemon, so a name freed by a destroy may
    be used again by the next start)."""

    def __init__(self, names_in_use):
        self.taken = set(names_in_use)
        self.counters = {}

    def name(self, template):
        if "%d" not in template:
            return template
        counter = self.counters.get(template, 0)
        for _ in range(MAX_NAME_TRIES):
            candidate = template.replace("%d", str(counter))
            counter += 1
            if candidate not in self.taken and fits(candidate):
                self.counters[template] = counter
                self.taken.add(candidate)
                return candidate
        raise HostError(f"no free interface name for template '{template}' after {MAX_NAME_TRIES} tries")


def _new_tap_name(iface, namer, names_in_use):
    """The name for a tap virtnet creates: the target dev, its '%d' template filled, or vnetN."""
    requested = iface.ids.tap
    if "%d" not in requested and requested in names_in_use:
        hint = ", or use it as is with <target managed='no'>" if iface.kind.script else ""
        raise HostError(
            f"<interface type='{iface.type}'>: target dev '{requested}' already exists; a tap virtnet "
            f"creates must be new — delete it or choose another name{hint}",
            line=iface.line_of("target"),
        )
    return namer.name(requested)


def _full(address):
    return 128 if ":" in address else 32


def _host_side_addresses(iface, ifname):
    """<source><ip>/<route> of an ethernet tap; on a managed='no' tap they are removed at teardown."""
    src, dev, keep = iface.source, iface.ids.alias, iface.unmanaged
    if src is None:
        return []
    actions = [AddAddress(dev, ifname, ip.address, ip.prefix if ip.prefix is not None else _full(ip.address),
                          ip.peer, unmanaged=keep) for ip in src.host_ips]
    actions += [AddRoute(dev, ifname, r.address, r.prefix if r.prefix is not None else _full(r.address),
                         r.gateway, r.metric, unmanaged=keep) for r in src.host_routes]
    return actions


def _ethernet(iface, namer, names_in_use):
    dev, ids, queues = iface.ids.alias, iface.ids, iface.queue_count
    if iface.unmanaged:
        ifname = iface.target_dev
        actions = [AttachTap(dev, ifname, queues, iface.wants_vnet_hdr)]
    else:
        ifname = _new_tap_name(iface, namer, names_in_use)
        actions = [CreateTap(dev, ifname, queues, iface.wants_vnet_hdr), SetMac(dev, ifname, ids.host_mac)]
        if iface.mtu:
            actions.append(SetMtu(dev, ifname, iface.mtu))
        actions.append(SetUp(dev, ifname))
    if iface.script or iface.downscript:
        actions.append(RunScript(dev, ifname, iface.script, iface.downscript))
    return actions + _host_side_addresses(iface, ifname)


def _bridge(iface, namer, names_in_use):
    dev, bridge = iface.ids.alias, iface.source.bridge
    ifname = _new_tap_name(iface, namer, names_in_use)
    return [
        CheckBridge(dev, bridge),
        CreateTap(dev, ifname, iface.queue_count, iface.wants_vnet_hdr),
        SetMac(dev, ifname, iface.ids.host_mac),
        # MAC and MTU before enslaving, so the bridge neither adopts the tap's MAC nor shrinks its MTU.
        SetMtu(dev, ifname, iface.mtu, None if iface.mtu else bridge),
        Enslave(dev, ifname, bridge),
        SetUp(dev, ifname),
    ]


def _bridge_via_helper(iface, helper, warnings):
    """libvirt's unprivileged path: the helper makes the tap; virtnet sets nothing on it."""
    dev, bridge = iface.ids.alias, iface.source.bridge
    where = f"{dev} (bridge '{bridge}')"
    if iface.queue_count > 1:
        warnings.append(f"{where}: qemu-bridge-helper passes a single tap fd, so <driver queues="
                        f"'{iface.queue_count}'> degrades to one queue")
    if iface.mtu:
        warnings.append(f"{where}: <mtu size='{iface.mtu}'> is not applied to the host tap (qemu-bridge-helper "
                        "gives it the bridge's MTU); the guest is still told the MTU")
    if iface.target_dev:
        warnings.append(f"{where}: <target dev='{iface.target_dev}'> is not used: qemu-bridge-helper names "
                        "the tap itself (tapN)")
    return [CheckBridge(dev, bridge), RunBridgeHelper(dev, bridge, helper, iface.wants_vnet_hdr)]


def _passt(iface, paths):
    from virtnet.host.passt import passt_argv  # pure

    alias = iface.ids.alias
    sock, pid = str(paths.passt_socket(alias)), str(paths.passt_pid(alias))
    return StartPasst(alias, passt_argv(iface, sock, pid), sock, pid, str(paths.passt_dir))


def build_plan(domain, *, names_in_use=frozenset(), host_caps=frozenset(), paused=False, bridge_helper=None,
               paths=None):
    """The setup actions for DOMAIN (a prepared domain: conf.identity). Raises HostError for what
    cannot work on this host.

    bridge_helper: the qemu-bridge-helper to create bridge taps with (no CAP_NET_ADMIN), or None.
    paths: the domain's DomainPaths (QMP and passt sockets); default: under the default runtime dir.
    """
    from virtnet.qemu.argv import DEFAULT_EMULATOR, check_shared_memory
    from virtnet.qemu.netprops import unsupported_type, wants_vhost

    check_shared_memory(domain)  # vhost-user: refused before anything is started
    if paths is None:
        from virtnet.runpaths import DomainPaths
        from virtnet.runpaths import default_runtime_dir

        paths = DomainPaths(default_runtime_dir(), domain.name)
    plan = Plan()
    # Fixed names of this domain are reserved first, so that 'mng%d' never becomes its 'mng0'.
    fixed = {i.ids.tap for i in domain.interfaces if i.ids.tap and "%d" not in i.ids.tap}
    namer = TapNamer(set(names_in_use) | fixed)
    for iface in domain.interfaces:
        if not iface.kind.driven:
            raise unsupported_type(iface)
        if iface.uses_passt:
            plan.setup.append(_passt(iface, paths))
            continue
        if not iface.kind.tap:
            continue  # user, sockets, vhost-user: nothing to do on the host
        queues = iface.queue_count
        if iface.type == "bridge" and bridge_helper:
            actions = _bridge_via_helper(iface, bridge_helper, plan.warnings)
            queues = 1
        elif iface.type == "bridge":
            actions = _bridge(iface, namer, names_in_use)
        else:
            actions = _ethernet(iface, namer, names_in_use)
        # vhost-net when the host has it; when <driver name='vhost'> asks for it explicitly, try
        # anyway so that a failure is reported instead of silently running in userspace.
        explicit = iface.driver_name == "vhost" and wants_vhost(domain, iface, {"vhost-net"})
        if explicit or wants_vhost(domain, iface, host_caps):
            actions.append(OpenVhost(iface.ids.alias, queues, required=explicit))
        plan.setup += actions
    from virtnet.qemu.storage import disk_sources

    # Disk images first, before anything changes on the host: a missing one fails the start at once.
    plan.setup[0:0] = [CheckPath(alias, path, readonly, disk_type) for alias, path, readonly, disk_type in disk_sources(domain)]
    plan.setup.append(StartQemu("", domain.emulator or DEFAULT_EMULATOR, str(paths.qmp)))
    for iface in domain.interfaces:
        if iface.link_state == "down":
            plan.setup.append(SetLinkDown(iface.ids.alias, iface.ids.netdev))
    if not paused:
        plan.setup.append(Resume(""))
    return plan


def tap_names(plan):
    """Device alias → tap name for every tap the plan creates or opens."""
    return {a.device: a.ifname for a in plan.setup if isinstance(a, (CreateTap, AttachTap))}
