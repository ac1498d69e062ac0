"""<bandwidth>'s rates: the same element on a domain's interface and on a virtual network."""

from virtnet.conf.xmlmodel import Prop, XMLObject


class Rates(XMLObject):
    """<bandwidth><inbound/> or <outbound/>: libvirt's units, kilobytes/s and KiB (burst)."""

    average = Prop("@average", int)
    peak = Prop("@peak", int)
    floor = Prop("@floor", int)
    burst = Prop("@burst", int)
