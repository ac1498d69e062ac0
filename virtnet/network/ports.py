"""A domain's <interface type='network'>s resolved to their active networks: the bridge a tap joins
and whether the port is isolated, as net-start recorded them (the definition may have changed since:
libvirt too applies a changed network at its next start)."""

from dataclasses import dataclass

from virtnet.errors import HostError


@dataclass(frozen=True)
class NetworkPort:
    network: str
    bridge: str
    isolated: bool


def resolve(store, name):
    """The NetworkPort of active network NAME; HostError naming net-start (or net-define) otherwise."""
    from virtnet.errors import StoreError
    from virtnet.network import defs

    nets = defs.files(store)
    try:
        exists = nets.exists(name)
        record = nets.read_runtime(name) if exists else None
    except StoreError as e:
        raise HostError(e.message) from None
    if not exists:
        raise HostError(f"network '{name}' is not defined (see `virtnet net-list --all`); define it with "
                        "`virtnet net-define FILE`, then `virtnet net-start NAME`")
    if record is None or record.get("starting"):
        raise HostError(f"network '{name}' is not active; start it with `virtnet net-start {name}`")
    return NetworkPort(name, record["bridge"], bool(record.get("port_isolated")))


def attach(store, domain, interfaces=None):
    """Give each type='network' interface of DOMAIN (or of INTERFACES) its network_port, for the plan."""
    wanted = [i for i in (interfaces if interfaces is not None else domain.interfaces) if i.type == "network"]
    if not wanted:
        return  # nothing to resolve: no network module, no reaping
    from virtnet.network import runner

    with store.lock():
        runner.reap(store)
    for iface in wanted:
        iface.network_port = resolve(store, iface.source.network)
