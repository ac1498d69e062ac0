"""Adding and removing a domain's NICs, as virsh's attach-device, attach-interface, detach-device
and detach-interface do, without a daemon.

--live changes the running guest: the new interface is checked as a device of the live domain,
stamped with the next alias and a free hot-pluggable PCI address, then set up by the same plan and
executor as at start (taps, bridges, the bridge helper, passt) followed by QMP getfd, netdev_add
and device_add; any failure, QEMU refusing the device included, rolls all of it back. Removing asks
the guest to release the device (device_del, then QEMU's DEVICE_DELETED event), then netdev_del,
then the device's own teardown actions from the runtime record. The live XML and the runtime
record follow each change; no other device is renumbered.

--config changes the stored definition, which is checked and defined again (define's rules: no
MAC or target dev of another domain).
"""

import copy

from virtnet import livestate, runner
from virtnet.conf.xmlmodel import thaw
from virtnet.errors import HostError, StoreError, UsageError, XMLInputError

# libvirt's order of device kinds in <devices>: a new <interface> goes after the last one, else
# before the first device of a kind that comes after interfaces.
AFTER_INTERFACES = ("smartcard", "serial", "parallel", "console", "channel", "input", "tpm", "graphics", "sound",
                    "audio", "video", "hostdev", "redirdev", "redirfilter", "hub", "watchdog", "memballoon", "rng",
                    "panic", "shmem", "memory", "iommu", "vsock")


def scope(store, name, *, live=False, config=False, current=False, persistent=False):
    """(live, config): what a change of domain NAME applies to, by virsh's rules. Neither flag (or
    --current): the running guest when it runs, else the definition; --persistent: the definition,
    and the running guest too when it runs."""
    if current and (live or config or persistent):
        raise UsageError("--current cannot be combined with --live, --config or --persistent")
    running = runner.running_state(store, name) is not None
    if persistent:
        live, config = running, True
    elif not live and not config:
        live, config = running, not running
    if live and not running:
        store.read_domain(name)  # no such domain: that error instead
        raise StoreError(f"domain '{name}' is not running; without --live the change goes to its definition")
    return live, config


# --- attach -------------------------------------------------------------------------------------------


def attach(store, name, element, filename, *, live, config, unprivileged=False, bridge_helper=None):
    """Attach the <interface> ELEMENT (read from FILENAME) to domain NAME. Returns the warnings.
    As libvirt does, the changed definition is checked before the running guest is touched, and
    written once the guest has the device: a refusal of either leaves both as they were."""
    from virtnet import domains
    from virtnet.conf.fragment import checked_interface

    warnings, definition = [], None
    with store.lock():
        macs_in_use = {m for summary in store.summaries().values() for m in summary.get("macs", [])}
        if config:
            defined = domains.load_defined(store, name).domain
            checked, warnings = checked_interface(element, filename, defined, macs_in_use)
            _refuse_duplicates(store, name, defined, checked, filename, others_too=False)  # define checks those
            definition = domains.changed_definition(
                store, name, lambda domain: _insert(domain.devices_node(), copy.deepcopy(checked)))
            element = checked  # the running guest gets the same MAC
        if live:
            state = runner.require_running(store, name, "attach a device to")
            domain = thaw(livestate.live_domain(store, name))
            checked, found = checked_interface(element, filename, domain, macs_in_use)
            _refuse_duplicates(store, name, domain, checked, filename, others_too=True)
            warnings = found + _attach_live(store, name, state, domain, checked, unprivileged=unprivileged,
                                            bridge_helper=bridge_helper)
        if definition is not None:
            domains.define(store, definition)
    return warnings


def _refuse_duplicates(store, name, domain, node, filename, *, others_too):
    """The new interface's MAC, alias and fixed target dev must not be the domain's own already (nor,
    with OTHERS_TOO, another domain's: define's rule, for a change that does not go through define)."""
    from virtnet.conf import mac as macs

    new_mac = macs.normal(node.find("mac").get("address"))
    target = node.find("target")
    dev = target.get("dev") if target is not None else None
    alias = node.find("alias")
    for iface in domain.interfaces:
        if iface.mac and macs.normal(iface.mac) == new_mac:
            raise XMLInputError(f"<mac address='{new_mac}'>: domain '{name}' already has an interface with this MAC "
                                f"({iface.alias or iface.type}); choose another or leave <mac> out",
                                file=filename, line=node.find("mac").sourceline)
        if alias is not None and iface.alias == alias.get("name"):
            raise XMLInputError(f"<alias name='{alias.get('name')}'>: domain '{name}' already has a device with this "
                                "alias; choose another", file=filename, line=alias.sourceline)
        if dev and "%" not in dev and iface.target_dev == dev:
            raise XMLInputError(f"<target dev='{dev}'>: interface {iface.alias or iface.type} of domain '{name}' uses it "
                                "already; choose another", file=filename, line=target.sourceline)
    if others_too:
        for owner in store.owners_of_macs([new_mac]).get(new_mac, []):
            if owner != name:
                raise XMLInputError(f"MAC address {new_mac} is already used by domain '{owner}'; choose another "
                                    "<mac address>", file=filename)
        if dev and "%" not in dev:
            for owner in store.owners_of_targets([dev]).get(dev, []):
                if owner != name:
                    raise XMLInputError(f"target dev '{dev}' is already used by domain '{owner}'; choose another "
                                        "<target dev>", file=filename)


def _attach_live(store, name, state, domain, node, *, unprivileged, bridge_helper):
    """Hot-plug NODE into the running domain (DOMAIN: its live model, thawed); needs the store lock."""
    from virtnet.conf import identity, pci
    from virtnet.conf.domain import Domain
    from virtnet.conf.format import format_domain
    from virtnet.host import bridgehelper, netns
    from virtnet.host.executor import Executor
    from virtnet.host.netlink import Netlink
    from virtnet.host.plan import hotplug_plan, tap_names, teardown_order, teardown_with
    from virtnet.hostcaps import probe
    from virtnet.network import ports
    from virtnet.qemu.hotplug import DeviceMonitor

    node = copy.deepcopy(node)
    if pci.address_in_use(domain, node):
        address = node.find("address")
        raise XMLInputError(f"<address type='pci' bus='{address.get('bus')}' slot='{address.get('slot')}'>: another "
                            f"device of domain '{name}' has this address; leave <address> out for a free one",
                            line=address.sourceline)
    _insert(domain.devices_node(), node)
    domain = identity.prepare(Domain(domain.node))  # fresh wrappers; the new NIC gets the next alias
    iface = next(i for i in domain.interfaces if i.node is node)
    pci.hotplug_address(domain, node)
    paths = state.paths
    helper = bridgehelper.helper_for(domain, unprivileged=unprivileged, override=bridge_helper) \
        if iface.type in ("bridge", "network") else None
    ports.attach(store, domain, [iface])  # type='network': the active network's bridge, or an error naming net-start
    before = list(state.teardown)
    with netns.inside_if_elsewhere(state.netns), Netlink() as nl:
        qmp = runner.monitor(name, state)
        try:
            running = qmp.execute("query-status").get("status") == "running"
            plan = hotplug_plan(domain, iface, names_in_use=nl.link_names() | runner.reserved_tap_names(store),
                                host_caps=probe(tc=True), bridge_helper=helper, paths=paths, vcpus_running=running)

            def journal(inverses):
                state.teardown = teardown_with(before, inverses)
                livestate.save(store, name, state)

            executor = Executor(nl, qemu=DeviceMonitor(qmp, domain, iface, paths), journal=journal)
            try:
                outcome = executor.setup(plan)
            except BaseException:
                if state.teardown != before:
                    state.teardown = before
                    livestate.save(store, name, state)
                raise
            outcome.close_fds()  # QEMU holds its own copies now
            taps = {**tap_names(plan), **outcome.helper_taps}
            if iface.ids.alias in taps:
                iface.target_dev = taps[iface.ids.alias]  # the live XML names the tap in use
            state.taps.update(taps)
            state.teardown = teardown_with(before, outcome.inverses)
            try:
                livestate.save(store, name, state, format_domain(domain, live=True))
            except BaseException:
                executor.teardown(teardown_order(outcome.inverses))
                state.teardown = before
                for alias in taps:
                    state.taps.pop(alias, None)
                raise
        finally:
            qmp.close()
    return plan.warnings + outcome.warnings


def _insert(devices, node):
    """Put NODE among DEVICES where libvirt keeps interfaces."""
    existing = devices.findall("interface")
    if existing:
        existing[-1].addnext(node)
        return
    later = next((child for child in devices if child.tag in AFTER_INTERFACES), None)
    if later is not None:
        later.addprevious(node)
    else:
        devices.append(node)
    node.tail = None


# --- detach -------------------------------------------------------------------------------------------


def detach(store, name, select, *, live, config, timeout):
    """Detach the interface that SELECT(domain) returns (it raises when none or several match) from
    domain NAME. TIMEOUT: seconds the guest gets to release it. The definition's change is checked
    first and written last, as for attach."""
    from virtnet import domains

    definition = None
    with store.lock():
        if config:
            definition = domains.changed_definition(store, name, lambda domain: _remove(select(domain).node))
        if live:
            state = runner.require_running(store, name, "detach a device from")
            domain = thaw(livestate.live_domain(store, name))
            _detach_live(store, name, state, domain, select(domain), timeout)
        if definition is not None:
            domains.define(store, definition)


def _remove(node):
    node.getparent().remove(node)


def _detach_live(store, name, state, domain, iface, timeout):
    from virtnet.conf.format import format_domain
    from virtnet.host.executor import Executor
    from virtnet.host import netns
    from virtnet.host.netlink import Netlink
    from virtnet.qemu import hotplug

    ids = iface.ids
    with runner.monitor(name, state) as qmp:
        try:
            hotplug.unplug_device(qmp, ids.device, timeout)
        except hotplug.UnplugTimeout as e:
            raise HostError(f"domain '{name}': {e.message}; `virtnet domiflist {name}` still lists it — detach it "
                            f"again once the guest runs, or `virtnet destroy {name}`") from None
        hotplug.remove_netdev(qmp, ids.netdev)
        if iface.type == "vhostuser":
            hotplug.remove_chardev(qmp, ids.chardev)
    mine = [a for a in state.teardown if a.device == ids.alias]
    with netns.inside_if_elsewhere(state.netns), Netlink() as nl:
        errors = Executor(nl).teardown(mine)
    state.teardown = [a for a in state.teardown if a.device != ids.alias]
    state.taps.pop(ids.alias, None)
    iface.node.getparent().remove(iface.node)
    livestate.save(store, name, state, format_domain(domain, live=True))
    if errors:
        raise HostError(f"domain '{name}': {ids.alias} was detached, but removing its host side reported: "
                        + "; ".join(errors))


# --- choosing the interface ---------------------------------------------------------------------------


def by_element(element, filename):
    """SELECT for detach: the one interface ELEMENT names (MAC, alias, PCI address: libvirt's rule)."""
    from virtnet.conf.fragment import matching_interfaces

    def select(domain):
        found = matching_interfaces(domain, element)
        if not found:
            raise XMLInputError(f"domain '{domain.name}' has no interface matching this <interface> (matched by "
                                "<mac address>, <alias> and <address>, whichever it has)", file=filename,
                                line=element.sourceline)
        if len(found) > 1:
            raise XMLInputError(f"this <interface> matches {len(found)} interfaces of domain '{domain.name}'; give "
                                "its <mac address> to choose one", file=filename, line=element.sourceline)
        return found[0]
    return select


def by_type(iface_type, mac=None):
    """SELECT for detach-interface: the interface of type IFACE_TYPE (and MAC address MAC)."""
    from virtnet.conf import mac as macs

    def select(domain):
        found = [i for i in domain.interfaces if i.type == iface_type
                 and (mac is None or macs.normal(i.mac or "") == macs.normal(mac))]
        if not found:
            what = f"type '{iface_type}'" + (f" and MAC address {mac}" if mac else "")
            raise StoreError(f"domain '{domain.name}' has no interface of {what} (`virtnet domiflist "
                             f"{domain.name}` lists them)")
        if len(found) > 1:
            listed = ", ".join(i.mac for i in found)
            raise StoreError(f"domain '{domain.name}' has {len(found)} interfaces of type '{iface_type}' ({listed}); "
                             "choose one with --mac")
        return found[0]
    return select
