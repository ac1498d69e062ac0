"""The prepare phase: after the checks and libvirt's defaults, each device is stamped once with its
identity, which argv, plan, executor, live state and (later) hot-plug all read.

A NIC's alias is its name everywhere: QEMU's ids (hostnet0/net0/charnet0 or a user alias's), the
plan's actions, the runtime record, QMP. It is written into the XML, so the live XML keeps it for
the device's lifetime: a device added or removed later renumbers nothing else. Inactive XML leaves
generated aliases out, as libvirt does (conf.format).
"""

import re
from dataclasses import dataclass

from virtnet.conf import mac
from virtnet.conf.ifname import GENERATED_PREFIX

NET_ALIAS = re.compile(r"net(\d+)")


@dataclass(frozen=True)
class NicIds:
    alias: str  # 'net0', or the user's 'ua-…'
    host_mac: str  # the MAC of the host side of a tap (see mac.host_side)
    tap: str | None  # tap-backed types: the name or '%d' template of the tap (managed='no': as given)

    @property
    def netdev(self):
        return "host" + self.alias

    @property
    def device(self):
        return self.alias

    @property
    def chardev(self):
        return "char" + self.alias


def _next_net_alias(taken):
    """libvirt's rule: one past the highest netN in use (so a removed device's id is not reused)."""
    numbers = [int(m.group(1)) for m in map(NET_ALIAS.fullmatch, taken) if m]
    return f"net{max(numbers) + 1 if numbers else 0}"


def _tap_name(iface):
    if not iface.kind.tap:
        return None
    return iface.target_dev or GENERATED_PREFIX + "%d"


def prepare(domain):
    """Stamp every interface with its NicIds (alias written into the XML when it has none)."""
    taken = {i.alias for i in domain.interfaces if i.alias}
    for iface in domain.interfaces:
        if iface.alias is None:
            iface.alias = _next_net_alias(taken)
            taken.add(iface.alias)
        iface.ids = NicIds(alias=iface.alias, host_mac=mac.host_side(iface.mac), tap=_tap_name(iface))
    return domain


def is_generated_alias(alias):
    return NET_ALIAS.fullmatch(alias) is not None
