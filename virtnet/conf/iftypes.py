"""What each <interface type> supports: one table, from which every type list in virtnet derives.

The schema accepts exactly these types (schemas/interface.rng); a rule, the argv builder or the plan
asks this table instead of keeping a list of its own.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class InterfaceType:
    name: str
    tap: bool = False  # the host side is a tap (or macvtap) whose fd QEMU gets
    socket: bool = False  # QEMU's -netdev socket backend (listen/connect/mcast/udp)
    driven: bool = True  # xml2argv and start can run it (network and direct: parsed and formatted only)
    queues: bool = False  # <driver queues='N'> with N > 1
    mtu: bool = False  # <mtu> (user: only with the passt backend, see mtu_allowed)
    script: bool = False  # <script>, <downscript> and <target managed='no'>
    tap_path: bool = False  # <backend tap='/dev/...'>: a custom tun device
    passt: bool = False  # <backend type='passt'/>
    guest_ips: bool = False  # guest-side <ip>/<route> (user-mode networking hands them out)


TYPES = {t.name: t for t in (
    InterfaceType("ethernet", tap=True, queues=True, mtu=True, script=True, tap_path=True),
    InterfaceType("bridge", tap=True, queues=True, mtu=True, tap_path=True),
    InterfaceType("network", tap=True, driven=False, queues=True, mtu=True, tap_path=True),
    InterfaceType("direct", tap=True, driven=False, queues=True),
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
SOCKET_TYPES = names(socket=True)
TAP_TYPES = names(tap=True)
