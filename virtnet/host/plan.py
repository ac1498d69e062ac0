"""The host actions `virtnet start` takes for a domain, as a pure list of dataclasses.

Planning touches no host state: what it needs to know about the host (names already in use, host
capabilities) is passed in. The executor (executor.py) carries the actions out and rolls back.
Semantics follow libvirt's QEMU driver: managed taps are created and configured;
managed='no' taps are only checked and opened; sockets/user/vhost-user need nothing on the host.
"""

import shlex
from dataclasses import asdict, dataclass, field

from virtnet.conf.domain import SUPPORTED_TYPES
from virtnet.errors import HostError

GENERATED_PREFIX = "vnet"
MAX_NAME_TRIES = 10000


def host_mac(guest_mac):
    """The tap's own MAC: the guest's with the first octet FE (FA if the guest's already is FE),
    so the host never sees its own address and a bridge never adopts the tap's MAC."""
    first, rest = guest_mac.split(":", 1)
    return ("fa" if first.lower() == "fe" else "fe") + ":" + rest.lower()


@dataclass
class Action:
    index: int  # the interface's position in the domain (hostnetN); -1 for domain-wide actions

    @property
    def kind(self):
        return KIND_OF[type(self)]

    def as_dict(self):
        return {"action": self.kind, **asdict(self)}


@dataclass
class CreateTap(Action):
    ifname: str
    queues: int = 1
    vnet_hdr: bool = False

    def describe(self):
        return f"create tap {self.ifname}{_tap_flags(self)}"


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
        return (f"run {self.helper}{vnet} --br={self.bridge} (checked against its ACL first): "
                f"tap fd for hostnet{self.index}")


@dataclass
class StartPasst(Action):
    """Start passt for a user (or vhost-user) interface before QEMU; QEMU connects to its socket."""

    argv: list
    socket: str
    pidfile: str
    dir: str

    def describe(self):
        return "start " + " ".join(shlex.quote(word) for word in self.argv)


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
    ifname: str
    path: str
    downscript: str = None  # run on rollback, so a failed start undoes what the script did

    def describe(self):
        return f"run script {self.path} {self.ifname}"


@dataclass
class AddAddress(Action):
    ifname: str
    address: str
    prefix: int
    peer: str = None

    def describe(self):
        peer = f" peer {self.peer}" if self.peer else ""
        return f"add address {self.address}/{self.prefix}{peer} to {self.ifname}"


@dataclass
class AddRoute(Action):
    ifname: str
    address: str
    prefix: int
    gateway: str = None
    metric: int = None

    def describe(self):
        via = f" via {self.gateway}" if self.gateway else ""
        metric = f" metric {self.metric}" if self.metric is not None else ""
        return f"add route {self.address}/{self.prefix}{via} dev {self.ifname}{metric}"


@dataclass
class OpenVhost(Action):
    queues: int = 1
    required: bool = False  # driver name='vhost' asked explicitly: failing to open is fatal

    def describe(self):
        return f"open /dev/vhost-net x{self.queues} for hostnet{self.index}" + (" (required)" if self.required else "")


@dataclass
class StartQemu(Action):
    emulator: str = ""

    def describe(self):
        return f"start {self.emulator} paused, wait for QMP"


@dataclass
class SetLinkDown(Action):
    netdev: str = ""

    def describe(self):
        return f"QMP set_link {self.netdev} down"


@dataclass
class Resume(Action):
    def describe(self):
        return "QMP cont (run the vCPUs)"


# Teardown: libvirt stops QEMU first and lets the taps vanish as its fds close, one kernel grace
# period (~20 ms) per tap. virtnet deletes the taps it created first, in one request, then stops
# QEMU, passt, and runs the downscripts (as libvirt: after QEMU, for managed and unmanaged taps).
@dataclass
class StopQemu(Action):
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

    def describe(self):
        return f"stop passt (pid file {self.pidfile}), remove its socket and pid file"


@dataclass
class DeleteTap(Action):
    ifname: str

    def describe(self):
        return f"delete tap {self.ifname} (all in one request)"


KIND_OF = {
    CreateTap: "create-tap", AttachTap: "attach-tap", CheckBridge: "check-bridge", SetMac: "set-mac",
    SetMtu: "set-mtu", Enslave: "enslave", SetUp: "set-up", RunScript: "run-script",
    AddAddress: "add-address", AddRoute: "add-route", OpenVhost: "open-vhost", StartQemu: "start-qemu",
    SetLinkDown: "set-link-down", Resume: "resume", StopQemu: "stop-qemu", RunDownscript: "run-downscript",
    DeleteTap: "delete-tap", RunBridgeHelper: "run-bridge-helper", StartPasst: "start-passt",
    StopPasst: "stop-passt",
}


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
    teardown: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # printed by `virtnet start`

    def as_dicts(self):
        return {"setup": [a.as_dict() for a in self.setup], "teardown": [a.as_dict() for a in self.teardown]}


class TapNamer:
    """virtnet fills 'vnet%d' or a user's '%d' template itself, with the lowest number whose name is
    in use neither on the host nor by another running domain (libvirt keeps a counter in its
    daemon; virtnet has no daemon, so a name freed by a destroy may be used again by the next start)."""

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
            if candidate not in self.taken and len(candidate.encode()) < 16:
                self.counters[template] = counter
                self.taken.add(candidate)
                return candidate
        raise HostError(f"no free interface name for template '{template}' after {MAX_NAME_TRIES} tries")


def _new_tap_name(iface, namer, names_in_use):
    """The name for a tap virtnet creates: the target dev, its '%d' template filled, or vnetN."""
    requested = iface.target_dev or GENERATED_PREFIX + "%d"
    if "%d" not in requested and requested in names_in_use:
        hint = ", or use it as is with <target managed='no'>" if iface.type == "ethernet" else ""
        raise HostError(
            f"<interface type='{iface.type}'>: target dev '{requested}' already exists; a tap virtnet "
            f"creates must be new — delete it or choose another name{hint}",
            line=iface.line_of("target"),
        )
    return namer.name(requested)


def _ethernet(iface, index, namer, names_in_use):
    queues = iface.queue_count
    if iface.unmanaged:
        actions = [AttachTap(index, iface.target_dev, queues, iface.wants_vnet_hdr)]
        ifname = iface.target_dev
    else:
        ifname = _new_tap_name(iface, namer, names_in_use)
        actions = [CreateTap(index, ifname, queues, iface.wants_vnet_hdr), SetMac(index, ifname, host_mac(iface.mac))]
        if iface.mtu:
            actions.append(SetMtu(index, ifname, iface.mtu))
        actions.append(SetUp(index, ifname))
    if iface.script:
        actions.append(RunScript(index, ifname, iface.script, iface.downscript))
    src = iface.source
    if src is not None:
        actions += [AddAddress(index, ifname, ip.address, ip.prefix if ip.prefix is not None else _full(ip.address), ip.peer)
                    for ip in src.host_ips]
        actions += [AddRoute(index, ifname, r.address, r.prefix if r.prefix is not None else _full(r.address), r.gateway, r.metric)
                    for r in src.host_routes]
    return ifname, actions


def _full(address):
    return 128 if ":" in address else 32


def _bridge(iface, index, namer, names_in_use):
    bridge = iface.source.bridge
    ifname = _new_tap_name(iface, namer, names_in_use)
    return ifname, [
        CheckBridge(index, bridge),
        CreateTap(index, ifname, iface.queue_count, iface.wants_vnet_hdr),
        SetMac(index, ifname, host_mac(iface.mac)),
        # MAC and MTU before enslaving, so the bridge neither adopts the tap's MAC nor shrinks its MTU.
        SetMtu(index, ifname, iface.mtu, None if iface.mtu else bridge),
        Enslave(index, ifname, bridge),
        SetUp(index, ifname),
    ]


def _bridge_via_helper(iface, index, helper, warnings):
    """libvirt's unprivileged path: the helper makes the tap; virtnet sets nothing on it."""
    bridge = iface.source.bridge
    where = f"interface {index} (bridge '{bridge}')"
    if iface.queue_count > 1:
        warnings.append(f"{where}: qemu-bridge-helper passes a single tap fd, so <driver queues="
                        f"'{iface.queue_count}'> degrades to one queue")
    if iface.mtu:
        warnings.append(f"{where}: <mtu size='{iface.mtu}'> is not applied to the host tap (qemu-bridge-helper "
                        "gives it the bridge's MTU); the guest is still told the MTU")
    if iface.target_dev:
        warnings.append(f"{where}: <target dev='{iface.target_dev}'> is not used: qemu-bridge-helper names "
                        "the tap itself (tapN)")
    return [CheckBridge(index, bridge), RunBridgeHelper(index, bridge, helper, iface.wants_vnet_hdr)]


def _passt(iface, index, paths):
    from virtnet.host.passt import passt_argv  # pure
    from virtnet.qemu.netprops import interface_ids

    alias = interface_ids(iface, index).device
    sock, pid = str(paths.passt_socket(alias)), str(paths.passt_pid(alias))
    start = StartPasst(index, passt_argv(iface, sock, pid), sock, pid, str(paths.passt_dir))
    return start, StopPasst(index, pid, sock)


def build_plan(domain, *, names_in_use=frozenset(), host_caps=frozenset(), paused=False, bridge_helper=None,
               paths=None):
    """The setup and teardown actions for DOMAIN. Raises HostError for what cannot work on this host.

    bridge_helper: the qemu-bridge-helper to create bridge taps with (no CAP_NET_ADMIN), or None.
    paths: the domain's DomainPaths (passt sockets); default: under the default runtime dir.
    """
    from virtnet.qemu.argv import DEFAULT_EMULATOR, check_shared_memory
    from virtnet.qemu.netprops import interface_ids, unsupported_type, wants_vhost

    check_shared_memory(domain)  # vhost-user: refused before anything is started
    plan = Plan()
    namer = TapNamer(names_in_use)
    created, scripts, passts = [], [], []
    if paths is None and any(iface.uses_passt for iface in domain.interfaces):
        from virtnet.runpaths import DomainPaths
        from virtnet.store import default_runtime_dir

        paths = DomainPaths(default_runtime_dir(), domain.name)
    for index, iface in enumerate(domain.interfaces):
        if iface.type not in SUPPORTED_TYPES:
            raise unsupported_type(iface)
        if iface.uses_passt and iface.type in ("user", "vhostuser"):
            start, stop = _passt(iface, index, paths)
            plan.setup.append(start)
            passts.append(stop)
            continue
        queues = iface.queue_count
        if iface.type == "bridge" and bridge_helper:
            actions = _bridge_via_helper(iface, index, bridge_helper, plan.warnings)
            queues = 1
        elif iface.type == "ethernet":
            ifname, actions = _ethernet(iface, index, namer, names_in_use)
            if not iface.unmanaged:
                created.append((index, ifname))
            if iface.downscript:
                scripts.append(RunDownscript(index, ifname, iface.downscript))
        elif iface.type == "bridge":
            ifname, actions = _bridge(iface, index, namer, names_in_use)
            created.append((index, ifname))
        else:
            continue  # user, sockets, vhost-user: nothing to do on the host
        # vhost-net when the host has it; when <driver name='vhost'> asks for it explicitly, try
        # anyway so that a failure is reported instead of silently running in userspace.
        explicit = iface.driver_name == "vhost" and wants_vhost(domain, iface, {"vhost-net"})
        if explicit or wants_vhost(domain, iface, host_caps):
            actions.append(OpenVhost(index, queues, required=explicit))
        plan.setup += actions
    plan.setup.append(StartQemu(-1, domain.emulator or DEFAULT_EMULATOR))
    for index, iface in enumerate(domain.interfaces):
        if iface.link_state == "down":
            plan.setup.append(SetLinkDown(index, interface_ids(iface, index).netdev))
    if not paused:
        plan.setup.append(Resume(-1))
    # Created taps go before QEMU stops: one batched delete instead of one kernel wait per tap.
    plan.teardown = [DeleteTap(i, name) for i, name in created] + [StopQemu(-1)] + passts + scripts
    return plan


def tap_names(plan):
    """Interface index → tap name for every tap the plan creates or opens."""
    return {a.index: a.ifname for a in plan.setup if isinstance(a, (CreateTap, AttachTap))}
