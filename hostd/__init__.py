"""Host daemon: one per hypervisor, drives libvirt and netlink (grows in the compute issue)."""
