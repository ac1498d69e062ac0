"""What each <interface type> supports: one table, from which every type list in virtnet derives.

The schema accepts exactly these types (virtnet/schemas/interface.rng); a rule, the argv builder or the plan
asks this table instead of keeping a list of its own.
"""

from virtnet.record import Record

DEFAULT_TYPE = "user"  # what an <interface> without a type is (libvirt's rule)


class InterfaceType(Record):
    __slots__ = ("name", "tap", "socket", "driven", "queues", "mtu", "script", "tap_path", "passt", "guest_ips")

    def __init__(self, name, *, tap=False, socket=False, driven=True, queues=False, mtu=False, script=False,
                 tap_path=False, passt=False, guest_ips=False):
        self.name = name
        self.tap = tap  # the host side is a tap (or macvtap) whose fd QEMU gets
        self.socket = socket  # QEMU's -netdev socket backend (listen/connect/mcast/udp)
        self.driven = driven  # xml2argv and start can run it (network: a tap on the network's bridge)
        self.queues = queues  # <driver queues='N'> with N > 1
        self.mtu = mtu  # <mtu> (user: only with the passt backend, see mtu_allowed)
        self.script = script  # <script>, <downscript> and <target managed='no'>
        self.tap_path = tap_path  # <backend tap='/dev/...'>: a custom tun device
        self.passt = passt  # <backend type='passt'/>
        self.guest_ips = guest_ips  # guest-side <ip>/<route> (user-mode networking hands them out)


TYPES = {t.name: t for t in (
    InterfaceType("ethernet", tap=True, queues=True, mtu=True, script=True, tap_path=True),
    InterfaceType("bridge", tap=True, queues=True, mtu=True, tap_path=True),
    InterfaceType("network", tap=True, queues=True, mtu=True, tap_path=True),
    InterfaceType("direct", tap=True, queues=True),
    InterfaceType("user", passt=True, guest_ips=True),
    InterfaceType("server", socket=True),
    InterfaceType("client", socket=True),
    InterfaceType("mcast", socket=True),
    InterfaceType("udp", socket=True),
    InterfaceType("vhostuser", queues=True, mtu=True, passt=True),
)}


def kind(name):
    """The table row of a type name (schema-valid documents only name types of the table)."""
    return TYPES.get(name) or InterfaceType(name, driven=False)


def names(**wanted):
    """Type names whose row has every given field, e.g. names(tap=True, driven=True)."""
    return tuple(n for n, t in TYPES.items() if all(getattr(t, k) == v for k, v in wanted.items()))


def phrase(type_names):
    """'ethernet, bridge and vhostuser' for messages."""
    type_names = list(type_names)
    return type_names[0] if len(type_names) == 1 else ", ".join(type_names[:-1]) + " and " + type_names[-1]


DRIVEN = names(driven=True)
TAP_TYPES = frozenset(names(tap=True))
SOCKET_TYPES = frozenset(names(socket=True))
