"""xen-provision: build, install and provision Xen hosts."""

__version__ = "0.1.0"
