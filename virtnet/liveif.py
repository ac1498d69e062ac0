"""The interfaces of a running guest: link state (QMP set_link) and the tap's counters, as virsh's
domif-setlink, domif-getlink and domifstat. As in virsh, the link state of a domain that is not
running (or with --config) is that of its stored definition.

An interface is named as virsh names it: by its MAC address, or by its target dev (the tap in use,
as the live XML shows it). The link state lives in the live XML, written under the store's lock, so
that dumpxml and domif-getlink follow; libvirt's live XML keeps `<link state='up'/>` once the link
has been set up again, and so does virtnet's.
"""

from virtnet import livestate, runner
from virtnet.conf.mac import is_mac, normal
from virtnet.errors import HostError

# virsh domifstat's lines, in its order: (the name it prints, the guest's view of the tap's counter).
# The tap's receive side is what the guest sends, so each counter is read from the other direction.
STAT_FIELDS = (("rx_bytes", "tx_bytes"), ("rx_packets", "tx_packets"), ("rx_errs", "tx_errors"),
               ("rx_drop", "tx_dropped"), ("tx_bytes", "rx_bytes"), ("tx_packets", "rx_packets"),
               ("tx_errs", "rx_errors"), ("tx_drop", "rx_dropped"))


def shown(text):
    """TEXT as an error message may quote it: on one line, control characters escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


def find_interface(domain, spec):
    """The <interface> of DOMAIN whose MAC address (any spelling of it) or target dev is SPEC."""
    mac = normal(spec) if is_mac(spec) else None
    found = [i for i in domain.interfaces if (mac is not None and i.mac and normal(i.mac) == mac)
             or i.target_dev == spec]
    if len(found) > 1:
        raise HostError(f"domain '{domain.name}': several interfaces match '{shown(spec)}'; name one by its target dev")
    if not found:
        what = f"with MAC address {mac}" if mac else f"'{shown(spec)}' (give its target dev or MAC address)"
        raise HostError(f"domain '{domain.name}' has no interface {what}; `virtnet domiflist {domain.name}` lists "
                        "them")
    return found[0]


def set_link(store, name, spec, up, *, config=False):
    """Set the link of interface SPEC of domain NAME up or down. While it runs: QMP set_link on the
    interface's netdev, recorded in the live XML. With CONFIG, or when it does not run, the stored
    definition instead (virsh's rule). Returns True when the running guest was changed."""
    from virtnet.conf.format import format_domain

    with store.lock():  # the XML is read, changed and written back by one command at a time
        runner.reap_dead(store)
        if config or livestate.load(store, name) is None:
            _set_link_in_definition(store, name, spec, up)
            return False
        state = runner.require_running(store, name, "change the link of")
        domain = livestate.live_domain(store, name)
        iface = find_interface(domain, spec)
        with runner.monitor(name, state) as qmp:
            qmp.execute("set_link", {"name": iface.ids.netdev, "up": bool(up)})
        iface.link_state = "up" if up else "down"
        livestate.save(store, name, state, format_domain(domain, live=True))
    return True


def _set_link_in_definition(store, name, spec, up):
    from virtnet import domains

    def change(domain):
        find_interface(domain, spec).link_state = "up" if up else "down"
    domains.define(store, domains.changed_definition(store, name, change))


def get_link(store, name, spec, *, config=False):
    """'up' or 'down': the link state of interface SPEC of domain NAME, from its live XML while it
    runs, else (or with CONFIG) from its definition, as virsh reads the XML either way."""
    from virtnet import domains

    domain = None
    if not config and runner.running_state(store, name) is not None:
        domain = livestate.live_domain(store, name, missing_ok=True)
    if domain is None:
        domain = domains.load_defined(store, name).domain
    return find_interface(domain, spec).link_state or "up"


def interface_stats(store, name, spec):
    """[(virsh's field name, value)] of interface SPEC of running domain NAME: its tap's counters,
    swapped to the guest's view as libvirt does (what the tap receives, the guest sent)."""
    from virtnet.host import netns
    from virtnet.host.netlink import Netlink

    with store.lock():
        state = runner.require_running(store, name, "read the counters of")
        domain = livestate.live_domain(store, name)
    iface = find_interface(domain, spec)
    tap = state.taps.get(iface.ids.alias)
    if tap is None:
        raise HostError(f"domain '{name}': interface '{shown(spec)}' is <interface type='{iface.type}'>, which has "
                        "no tap on the host, so there are no counters to read")
    with netns.inside_if_elsewhere(state.netns), Netlink() as nl:
        stats = nl.link_stats(tap)
    if stats is None:
        where = f" in network namespace '{state.netns}'" if state.netns else ""
        raise HostError(f"domain '{name}': the tap '{tap}' of interface '{shown(spec)}' is gone{where}")
    return [(field, int(stats[source])) for field, source in STAT_FIELDS]
