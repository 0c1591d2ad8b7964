"""What Xen accepts, for the checks of every command (Xen 4.17's SUPPORT.md and public
headers): a domain's memory and vCPUs, dom0's included. A value beyond these is refused
before anything is written, naming the limit."""

from __future__ import annotations

from provision.sizes import TiB

# SUPPORT.md, "Guest Limits / Memory" (x86): "Guests with more memory, but less than
# 16 TiB, are supported". dom0 is a guest too.
GUEST_MEMORY = 16 * TiB
# MAX_VIRT_CPUS (xen/arch/x86/include/asm/config.h: the per-domain GDT/LDT area holds 8192
# vCPUs) for PV domains, dom0 included; HVM_MAX_VCPUS (public/hvm/hvm_info_table.h) for
# HVM and PVH ones.
PV_VCPUS = 8192
HVM_VCPUS = 128


def max_vcpus(domain_type: str) -> int:
    return PV_VCPUS if domain_type == "pv" else HVM_VCPUS
