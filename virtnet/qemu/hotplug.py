"""The QMP half of changing a running guest's NICs: the same -chardev/-netdev/-device properties
as on the command line (qemu.netprops), sent as chardev-add, netdev_add and device_add.

Tap and vhost-net descriptors go over the monitor socket first (`getfd`, SCM_RIGHTS), each under a
name that netdev_add then gives instead of a number. Unplugging asks the guest (`device_del`) and
waits for QEMU's DEVICE_DELETED event: a PCI device goes only once the guest has let it go.
"""

from virtnet.errors import HostError
from virtnet.qemu import netprops
from virtnet.qemu.netprops import HostFds

DEFAULT_UNPLUG_TIMEOUT = 10.0  # seconds the guest gets to release a device (libvirt waits 5 s)


class DeviceMonitor:
    """Adds or removes one interface of a running QEMU over QMP (an open qmp.QMPClient). The
    executor calls the add_* methods for the plan's AddChardev/AddNetdev/AddDevice actions, and
    the remove_* ones for their inverses (rollback)."""

    def __init__(self, qmp, domain, iface, paths, unplug_timeout=DEFAULT_UNPLUG_TIMEOUT):
        self.qmp, self.domain, self.iface, self.paths = qmp, domain, iface, paths
        self.unplug_timeout = unplug_timeout
        self.opened_taps = 0  # tap fds handed over (the bridge helper passes one whatever the queues)

    # --- plugging --------------------------------------------------------------------------------
    def add_chardev(self, action, outcome):
        self.qmp.execute("chardev-add", chardev_add_arguments(netprops.chardev_props(self.iface, self.paths)))

    def add_netdev(self, action, outcome):
        fds = outcome.fds.get(action.device, HostFds())
        named = HostFds(taps=self._pass(fds.taps, "tap"), vhosts=self._pass(fds.vhosts, "vhost"))
        self.opened_taps = len(fds.taps)
        props = netprops.netdev_props(self.domain, self.iface, fds=named, paths=self.paths)
        try:
            self.qmp.execute("netdev_add", props)
        except BaseException:
            self._close_names(named.taps + named.vhosts)
            raise

    def add_device(self, action, outcome):
        props = netprops.device_props(self.domain, self.iface, queues=self.opened_taps or None)
        try:
            self.qmp.execute("device_add", props)
        except HostError as e:
            if "does not support hotplugging" in e.message and not self.domain.is_q35:
                e.message += ("; a pc machine hot-plugs PCI devices through ACPI: the domain needs "
                              "<features><acpi/></features> (then restart it)")
            raise

    def _pass(self, fds, what):
        """Hand FDS to QEMU by name; the names, in order."""
        names = []
        try:
            for number, fd in enumerate(fds):
                name = f"{self.iface.ids.netdev}-{what}{number}"
                self.qmp.execute("getfd", {"fdname": name}, fds=[fd])
                names.append(name)
        except BaseException:
            self._close_names(names)
            raise
        return names

    def _close_names(self, names):
        for name in names:  # netdev_add consumes the ones it used; the rest would stay open in QEMU
            try:
                self.qmp.execute("closefd", {"fdname": name})
            except HostError:
                pass

    # --- unplugging ------------------------------------------------------------------------------
    def remove_device(self, action=None):
        unplug_device(self.qmp, self.iface.ids.device, self.unplug_timeout)

    def remove_netdev(self, action=None):
        remove_netdev(self.qmp, self.iface.ids.netdev)

    def remove_chardev(self, action=None):
        remove_chardev(self.qmp, self.iface.ids.chardev)


class UnplugTimeout(HostError):
    """The guest did not release the device in time: it is still plugged (QEMU keeps the request)."""


def unplug_device(qmp, device_id, timeout):
    """device_del, then wait for the guest to release DEVICE_ID. A device QEMU no longer has (a
    guest that released it after an earlier request timed out) counts as released."""
    try:
        qmp.execute("device_del", {"id": device_id})
    except HostError as e:
        if getattr(e, "qmp_class", None) == "DeviceNotFound":
            return
        if "already in the process of unplug" not in e.message:
            raise
    if qmp.wait_event("DEVICE_DELETED", lambda data: data.get("device") == device_id, timeout) is None:
        if not device_present(qmp, device_id):
            return  # the event went to nobody (released between two connections)
        raise UnplugTimeout(f"the guest did not release {device_id} within {timeout:g} s: it needs an operating "
                            "system that handles PCI hot-unplug, with its vCPUs running; the device is still "
                            "attached, and QEMU keeps the request")


def device_present(qmp, device_id):
    return any(p.get("name") == device_id for p in qmp.execute("qom-list", {"path": "/machine/peripheral"}))


def remove_netdev(qmp, netdev_id):
    try:
        qmp.execute("netdev_del", {"id": netdev_id})
    except HostError as e:
        if getattr(e, "qmp_class", None) != "DeviceNotFound" and "not found" not in e.message:
            raise


def remove_chardev(qmp, chardev_id):
    try:
        qmp.execute("chardev-remove", {"id": chardev_id})
    except HostError as e:
        if "not found" not in e.message:
            raise


def chardev_add_arguments(props):
    """chardev-add's arguments for a unix socket chardev given as -chardev properties (chardev_props)."""
    data = {"addr": {"type": "unix", "data": {"path": props["path"]}}}
    if props.get("server"):
        data["server"] = True
        data["wait"] = False  # a monitor command must not block until the peer connects
    else:
        data["server"] = False
        if props.get("reconnect") is not None:
            data["reconnect"] = props["reconnect"]
    return {"id": props["id"], "backend": {"type": "socket", "data": data}}
