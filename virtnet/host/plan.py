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
class CreateMacvtap(Action):
    """type='direct': a macvtap on LOWER with the guest's own MAC (it shares it), created down, and
    its queues opened for QEMU. It outlives virtnet's process until deleted."""

    ifname: str
    lower: str
    mode: str
    mac: str
    queues: int = 1
    vnet_hdr: bool = False

    def describe(self):
        return f"create macvtap {self.ifname} on {self.lower} (mode {self.mode}, address {self.mac}), down; " \
               f"open its queues{_tap_flags(self)}"

    def inverse(self):
        return DeleteMacvtap(self.device, self.ifname)


@dataclass
class SetLowerMac(Action):
    """Passthrough mode: the lower device takes the guest's MAC, as libvirt sets it (the switch
    beyond sees one MAC); its own MAC is put back at teardown."""

    ifname: str
    mac: str

    def describe(self):
        return f"set {self.ifname} address {self.mac} (passthrough), keeping its own for teardown"

    def inverse(self):
        return RestoreMac(self.device, self.ifname)


@dataclass
class StartMacvtap(Action):
    """As libvirt does when the vCPUs start: the lower device up if it is down, then the macvtap."""

    ifname: str
    lower: str

    def describe(self):
        return f"set {self.lower} up if it is down, then {self.ifname} up"


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
class IsolatePort(Action):
    """A virtual network's <port isolated='yes'>: the tap forwards to the bridge, not to other guests."""

    ifname: str

    def describe(self):
        return f"set bridge port {self.ifname} isolated"


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
class ShapeInbound(Action):
    """<bandwidth><inbound>: traffic to the guest, shaped on the tap's egress (host.shaping)."""

    ifname: str
    average: int  # kilobytes/s, as libvirt
    peak: int = None
    burst: int = None  # KiB
    sfq: bool = False  # an SFQ leaf, where the kernel has it
    unmanaged: bool = False  # on a managed='no' tap: removed again at teardown (else it goes with the tap)

    def describe(self):
        return f"shape {self.ifname} egress (to the guest): {_htb_words(self)}"

    def inverse(self):
        return UnshapeInbound(self.device, self.ifname) if self.unmanaged else None


@dataclass
class ShapeOutbound(Action):
    """<bandwidth><outbound>: traffic from the guest, on the tap's ingress: redirected to an ifb
    device and shaped there where the kernel has ifb (IFB set), else policed as libvirt does."""

    ifname: str
    average: int
    peak: int = None
    burst: int = None
    ifb: str = None
    sfq: bool = False
    unmanaged: bool = False

    def describe(self):
        if self.ifb:
            return f"shape {self.ifname} ingress (from the guest) through ifb {self.ifb}: {_htb_words(self)}"
        from virtnet.host.shaping import police_burst

        return (f"police {self.ifname} ingress (from the guest): rate {self.average}kbps burst "
                f"{police_burst(self.average, self.burst)}kb, the excess dropped (this kernel has no ifb)")

    def inverse(self):
        return UnshapeOutbound(self.device, self.ifname, self.ifb) if self.ifb or self.unmanaged else None


def _htb_words(action):
    from virtnet.host.shaping import quantum

    words = f"htb rate {action.average}kbps"
    words += f" ceil {action.peak}kbps" if action.peak else ""
    words += f" burst {action.burst}kb" if action.burst else ""
    return words + f" quantum {quantum(action.average)}" + (", sfq leaf" if action.sfq else "")


@dataclass
class SetCoalesce(Action):
    """<coalesce><rx><frames max>: the tap's rx-frames coalescing (ethtool ioctl; host.coalesce).
    Nothing to undo: it goes with the tap virtnet created."""

    ifname: str
    frames: int

    def describe(self):
        return f"set {self.ifname} rx-frames coalescing {self.frames} (ethtool)"


@dataclass
class ApplyFilter(Action):
    """<filterref filter='clean-traffic'>: nftables rules on what the guest sends (host.nwfilter)."""

    ifname: str
    family: str  # 'bridge' for a bridge's tap, 'netdev' for a tap of its own
    table: str
    mac: str
    ips: list = field(default_factory=list)

    def describe(self):
        ips = f" and IPv4 from {', '.join(self.ips)}" if self.ips else ""
        return (f"nftables table {self.family} {self.table}: {self.ifname} may send only from MAC {self.mac}{ips}, "
                "ARP not spoofed, IPv4 and ARP only (clean-traffic)")

    def inverse(self):
        return RemoveFilter(self.device, self.family, self.table)


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


# Hot-plug: the QMP half of adding a NIC to a running QEMU (qemu.hotplug carries them out).
@dataclass
class AddChardev(Action):
    chardev: str = ""

    def describe(self):
        return f"QMP chardev-add {self.chardev}"

    def inverse(self):
        return RemoveChardev(self.device, self.chardev)


@dataclass
class AddNetdev(Action):
    netdev: str = ""

    def describe(self):
        return f"QMP getfd (each tap and vhost-net fd), netdev_add {self.netdev}"

    def inverse(self):
        return DeleteNetdev(self.device, self.netdev)


@dataclass
class AddDevice(Action):
    def describe(self):
        return f"QMP device_add {self.device}"

    def inverse(self):
        return DeleteDevice(self.device)


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
class DeleteMacvtap(Action):
    ifname: str
    ifindex: int = None  # at creation: deleted only while the name is still that device

    def describe(self):
        return f"delete macvtap {self.ifname}"


@dataclass
class RestoreMac(Action):
    ifname: str
    mac: str = None  # the lower device's own MAC, read before it was changed

    def describe(self):
        return f"restore the address of {self.ifname}" + (f" ({self.mac})" if self.mac else "")


@dataclass
class DeleteDevice(Action):
    def describe(self):
        return f"QMP device_del {self.device}, wait for the guest to release it"


@dataclass
class DeleteNetdev(Action):
    netdev: str = ""

    def describe(self):
        return f"QMP netdev_del {self.netdev}"


@dataclass
class RemoveChardev(Action):
    chardev: str = ""

    def describe(self):
        return f"QMP chardev-remove {self.chardev}"


@dataclass
class DeleteAddress(Action):
    ifname: str
    address: str
    prefix: int

    def describe(self):
        return f"remove address {self.address}/{self.prefix} from {self.ifname}"


@dataclass
class UnshapeInbound(Action):
    ifname: str

    def describe(self):
        return f"remove the shaping of {self.ifname} egress (its root qdisc)"


@dataclass
class UnshapeOutbound(Action):
    ifname: str
    ifb: str = None

    def describe(self):
        ifb = f" and delete ifb {self.ifb}" if self.ifb else ""
        return f"remove {self.ifname}'s ingress qdisc{ifb}"


@dataclass
class RemoveFilter(Action):
    family: str
    table: str

    def describe(self):
        return f"delete nftables table {self.family} {self.table}"


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
    CheckPath: "check-path", AddChardev: "add-chardev", AddNetdev: "add-netdev", AddDevice: "add-device",
    DeleteDevice: "delete-device", DeleteNetdev: "delete-netdev", RemoveChardev: "remove-chardev",
    ShapeInbound: "shape-inbound", ShapeOutbound: "shape-outbound", UnshapeInbound: "unshape-inbound",
    UnshapeOutbound: "unshape-outbound", SetCoalesce: "set-coalesce", ApplyFilter: "apply-filter",
    RemoveFilter: "remove-filter",
    CreateMacvtap: "create-macvtap", SetLowerMac: "set-lower-mac", StartMacvtap: "start-macvtap",
    DeleteMacvtap: "delete-macvtap", RestoreMac: "restore-mac", IsolatePort: "isolate-port",
}
# Inverses that only undo a hot-plug within the running QEMU: rollback runs them; a domain's
# teardown does not keep them (stopping QEMU removes its devices).
INSIDE_QEMU = ("delete-device", "delete-netdev", "remove-chardev")
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
    """The name for a tap (or macvtap) virtnet creates: the target dev, its '%d' template filled, or
    vnetN (macvtapN)."""
    requested = iface.ids.tap
    if "%d" not in requested and requested in names_in_use:
        hint = ", or use it as is with <target managed='no'>" if iface.kind.script else ""
        what = "macvtap" if iface.type == "direct" else "tap"
        raise HostError(
            f"<interface type='{iface.type}'>: target dev '{requested}' already exists; a {what} virtnet "
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


def _bridge(iface, namer, names_in_use, bridge=None):
    dev, bridge = iface.ids.alias, bridge or iface.source.bridge
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


def _bridge_via_helper(iface, helper, warnings, bridge=None):
    """libvirt's unprivileged path: the helper makes the tap; virtnet sets nothing on it."""
    dev, bridge = iface.ids.alias, bridge or iface.source.bridge
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


def _network(iface, namer, names_in_use, bridge_helper, warnings):
    """type='network': a tap on the network's bridge, as a bridge's (the bridge carries the network's
    MTU, so the tap gets it), isolated when the network says <port isolated='yes'>. The caller has
    resolved the network (virtnet.network.ports.attach: iface.network_port), naming net-start when it
    is not active."""
    port = getattr(iface, "network_port", None)
    if port is None:
        network = iface.source.network if iface.source is not None else None
        raise HostError(f"{iface.ids.alias}: network '{network}' is not active; start it with "
                        f"`virtnet net-start {network}`")
    if bridge_helper:
        if port.isolated:
            warnings.append(f"{iface.ids.alias} (network '{port.network}'): qemu-bridge-helper cannot isolate "
                            "its tap, so <port isolated='yes'> is not applied")
        return _bridge_via_helper(iface, bridge_helper, warnings, port.bridge), 1
    actions = _bridge(iface, namer, names_in_use, port.bridge)
    if port.isolated:
        actions.append(IsolatePort(iface.ids.alias, actions[1].ifname))
    return actions, iface.queue_count


def _direct(iface, namer, names_in_use):
    """libvirt's qemuInterfaceDirectConnect: mode vepa unless given; the macvtap has the guest's MAC."""
    dev, lower, mode = iface.ids.alias, iface.source.dev, iface.source.mode or "vepa"
    ifname = _new_tap_name(iface, namer, names_in_use)
    actions = [SetLowerMac(dev, lower, iface.mac)] if mode == "passthrough" else []
    return actions + [CreateMacvtap(dev, ifname, lower, mode, iface.mac, iface.queue_count, iface.wants_vnet_hdr)]


def _start_macvtaps(actions):
    """Each created macvtap comes up once QEMU holds its fds, right before the vCPUs run."""
    return [StartMacvtap(a.device, a.ifname, a.lower) for a in actions if isinstance(a, CreateMacvtap)]


def _passt(iface, paths):
    from virtnet.host.passt import passt_argv  # pure

    alias = iface.ids.alias
    sock, pid = str(paths.passt_socket(alias)), str(paths.passt_pid(alias))
    return StartPasst(alias, passt_argv(iface, sock, pid), sock, pid, paths.passt_dir_text)


# Interfaces whose tap virtnet shapes and filters (a network's tap is a port of its bridge).
SHAPED_TYPES = ("ethernet", "bridge", "network")


def _tap_of(actions, kinds=None):
    """The tap the ACTIONS create or open (only those of KINDS when given), else None: a macvtap or
    the bridge helper's tap is not one virtnet shapes or filters."""
    kinds = kinds or (CreateTap, AttachTap)
    return next((a.ifname for a in actions if isinstance(a, kinds)), None)


def filter_actions(domain, iface, actions, warnings):
    """<filterref> (clean-traffic, checked by conf.checks) on the tap the ACTIONS create or open."""
    if iface.filter_name is None:
        return []
    tap = _tap_of(actions)
    if tap is None:
        warnings.append(f"{iface.ids.alias}: <filterref> is not applied: virtnet filters only taps it creates or "
                        "opens by name (not qemu-bridge-helper's, nor macvtap)")
        return []
    from virtnet.conf.mac import normal
    from virtnet.host.nwfilter import nameable, table_name

    if not nameable(tap):
        raise HostError(f"<filterref>: the tap name '{tap}' cannot be written into an nftables rule; give the "
                        "interface a <target dev> of letters, digits, '.', '_' and '-'",
                        line=iface.line_of("filterref"))
    family = "netdev" if iface.type == "ethernet" else "bridge"  # a tap of its own, or a bridge's port
    ips = [p.value for p in iface.filter_parameters if p.name == "IP"]
    return [ApplyFilter(iface.ids.alias, tap, family, table_name(domain.name, iface.ids.alias), normal(iface.mac), ips)]


def coalesce_actions(iface, actions, warnings):
    """<coalesce> on a tap virtnet creates (an administrator's is left as it is, as everything else)."""
    frames = iface.coalesce_rx_frames
    if not frames:
        return []
    tap = _tap_of(actions, (CreateTap,))
    if tap is None:
        what = "an administrator's tap (managed='no')" if iface.unmanaged else "this interface's device"
        warnings.append(f"{iface.ids.alias}: <coalesce> is not applied: virtnet sets it only on taps it creates, "
                        f"not on {what}")
        return []
    return [SetCoalesce(iface.ids.alias, tap, frames)]


def shaping_actions(iface, actions, host_caps, warnings):
    """<bandwidth> on the tap the ACTIONS create or open (host.shaping), once it exists."""
    if iface.inbound is None and iface.outbound is None:
        return []
    tap = _tap_of(actions)
    if tap is None:
        warnings.append(f"{iface.ids.alias}: <bandwidth> is not applied: virtnet shapes only taps it creates or "
                        "opens by name (not qemu-bridge-helper's, nor macvtap)")
        return []
    from virtnet.host.shaping import CAP_IFB, CAP_SFQ, ifb_name

    dev, sfq, keep, shaped = iface.ids.alias, CAP_SFQ in host_caps, iface.unmanaged, []
    rates = iface.inbound
    if rates is not None and rates.floor is not None:
        warnings.append(f"{dev}: <inbound floor='{rates.floor}'> is not applied: virtnet's networks guarantee no "
                        "bandwidth; average and peak are")
    if rates is not None and rates.average:
        shaped.append(ShapeInbound(dev, tap, rates.average, rates.peak, rates.burst, sfq, unmanaged=keep))
    rates = iface.outbound
    if rates is not None and rates.average:
        ifb = ifb_name(tap) if CAP_IFB in host_caps else None
        shaped.append(ShapeOutbound(dev, tap, rates.average, rates.peak, rates.burst, ifb, sfq, unmanaged=keep))
    return shaped


def interface_actions(domain, iface, *, namer, names_in_use, host_caps, bridge_helper, paths, warnings):
    """The host actions for one interface, at start or when it is hot-plugged (WARNINGS collects
    what the user should hear)."""
    from virtnet.qemu.netprops import unsupported_type, wants_vhost

    if not iface.kind.driven:
        raise unsupported_type(iface)
    if iface.uses_passt:
        return [_passt(iface, paths)]
    if not iface.kind.tap:
        return []  # user, sockets, vhost-user: nothing to do on the host
    queues = iface.queue_count
    if iface.type == "network":
        actions, queues = _network(iface, namer, names_in_use, bridge_helper, warnings)
    elif iface.type == "bridge" and bridge_helper:
        actions = _bridge_via_helper(iface, bridge_helper, warnings)
        queues = 1
    elif iface.type == "bridge":
        actions = _bridge(iface, namer, names_in_use)
    elif iface.type == "direct":
        actions = _direct(iface, namer, names_in_use)
    else:
        actions = _ethernet(iface, namer, names_in_use)
    actions += coalesce_actions(iface, actions, warnings)
    actions += filter_actions(domain, iface, actions, warnings)
    actions += shaping_actions(iface, actions, host_caps, warnings)
    # vhost-net when the host has it; when <driver name='vhost'> asks for it explicitly, try
    # anyway so that a failure is reported instead of silently running in userspace.
    explicit = iface.driver_name == "vhost" and wants_vhost(domain, iface, {"vhost-net"})
    if explicit or wants_vhost(domain, iface, host_caps):
        actions.append(OpenVhost(iface.ids.alias, queues, required=explicit))
    return actions


def build_plan(domain, *, names_in_use=frozenset(), host_caps=frozenset(), paused=False, bridge_helper=None,
               paths=None):
    """The setup actions for DOMAIN (a prepared domain: conf.identity). Raises HostError for what
    cannot work on this host.

    bridge_helper: the qemu-bridge-helper to create bridge taps with (no CAP_NET_ADMIN), or None.
    paths: the domain's DomainPaths (QMP and passt sockets); default: under the default runtime dir.
    """
    from virtnet.qemu.argv import DEFAULT_EMULATOR, check_shared_memory

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
        plan.setup += interface_actions(domain, iface, namer=namer, names_in_use=names_in_use, host_caps=host_caps,
                                        bridge_helper=bridge_helper, paths=paths, warnings=plan.warnings)
    from virtnet.qemu.storage import disk_sources

    # Disk images first, before anything changes on the host: a missing one fails the start at once.
    plan.setup[0:0] = [CheckPath(alias, path, readonly, disk_type) for alias, path, readonly, disk_type in disk_sources(domain)]
    plan.setup.append(StartQemu("", domain.emulator or DEFAULT_EMULATOR, str(paths.qmp)))
    for iface in domain.interfaces:
        if iface.link_state == "down":
            plan.setup.append(SetLinkDown(iface.ids.alias, iface.ids.netdev))
    if not paused:  # with --paused, `virtnet resume` brings them up, as libvirt does when the vCPUs start
        plan.setup += _start_macvtaps(plan.setup)
        plan.setup.append(Resume(""))
    return plan


def hotplug_plan(domain, iface, *, names_in_use=frozenset(), host_caps=frozenset(), bridge_helper=None,
                 paths=None, vcpus_running=True):
    """The actions that add IFACE (already stamped with its ids and address in DOMAIN, the running
    domain's live model) to the running guest: the same host actions as at start, then QMP. A
    macvtap comes up only when VCPUS_RUNNING (else `virtnet resume` brings it up)."""
    plan = Plan()
    namer = TapNamer(set(names_in_use))
    plan.setup = interface_actions(domain, iface, namer=namer, names_in_use=names_in_use, host_caps=host_caps,
                                   bridge_helper=bridge_helper, paths=paths, warnings=plan.warnings)
    ids = iface.ids
    if iface.type == "vhostuser":
        plan.setup.append(AddChardev(ids.alias, ids.chardev))
    plan.setup += [AddNetdev(ids.alias, ids.netdev), AddDevice(ids.alias)]
    if iface.link_state == "down":
        plan.setup.append(SetLinkDown(ids.alias, ids.netdev))
    if vcpus_running:
        plan.setup += _start_macvtaps(plan.setup)
    return plan


def teardown_with(teardown, added):
    """A running domain's teardown (in teardown_order) with the inverses ADDED (in setup order) by a
    hot-plug: its created taps first with the others', the rest right after stopping QEMU, newest
    first, as if they had been set up last before QEMU."""
    added = [a for a in added if a.kind not in INSIDE_QEMU]
    taps = [a for a in teardown if isinstance(a, DeleteTap)] + [a for a in added if isinstance(a, DeleteTap)]
    rest = [a for a in teardown if not isinstance(a, DeleteTap)]
    new = [a for a in reversed(added) if not isinstance(a, DeleteTap)]
    cut = next((i + 1 for i, a in enumerate(rest) if isinstance(a, StopQemu)), 0)
    return taps + rest[:cut] + new + rest[cut:]


def tap_names(plan):
    """Device alias → tap (or macvtap) name for every one the plan creates or opens."""
    return {a.device: a.ifname for a in plan.setup if isinstance(a, (CreateTap, AttachTap, CreateMacvtap))}
