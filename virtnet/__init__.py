"""virtnet: libvirt-style guest networking for QEMU without libvirtd."""

__version__ = "0.1.0"
