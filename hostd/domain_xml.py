"""Libvirt domain XML for an instance: CPU, memory, a virtio boot disk and a serial console;
volume disks as devices to attach, and the volume disks a definition holds."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Literal

from schemas.hostd import DomainSpec, VolumeDisk

#: The libvirt domain type: ``test`` for the test:///default driver, ``qemu`` for
#: emulation (TCG, no KVM needed), ``kvm`` for hardware virtualisation.
DomainType = Literal["test", "qemu", "kvm"]
DOMAIN_TYPES: tuple[DomainType, ...] = ("test", "qemu", "kvm")

#: The XML namespace of Orrery's metadata element inside a domain.
METADATA_NS = "https://orrery.dev/xmlns/libvirt/instance/1"
NAME_PREFIX = "orrery-"
ET.register_namespace("orrery", METADATA_NS)


def domain_name(uuid: str) -> str:
    """The libvirt name of an instance's domain: unique per host, free of user text."""
    return NAME_PREFIX + uuid


def domain_type_for(uri: str) -> DomainType:
    """The domain type that suits a connection URI when none is configured."""
    if uri.startswith("test:"):
        return "test"
    return "kvm"


def build_domain_xml(spec: DomainSpec, domain_type: DomainType = "kvm") -> str:
    """The ``<domain>`` document defining ``spec``."""
    if domain_type not in DOMAIN_TYPES:
        raise ValueError(f"unknown domain type {domain_type!r}; expected one of {DOMAIN_TYPES}")
    domain = ET.Element("domain", type=domain_type)
    _text(domain, "name", domain_name(spec.uuid))
    _text(domain, "uuid", spec.uuid)
    _text(domain, "title", _one_line(spec.name))
    _metadata(domain, spec)
    _text(domain, "memory", str(spec.ram_mb), unit="MiB")
    _text(domain, "currentMemory", str(spec.ram_mb), unit="MiB")
    _text(domain, "vcpu", str(spec.vcpus), placement="static")
    _os(domain)
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if domain_type == "kvm":
        ET.SubElement(domain, "cpu", mode="host-model")
    _text(domain, "on_poweroff", "destroy")
    _text(domain, "on_reboot", "restart")
    _text(domain, "on_crash", "destroy")
    _devices(domain, spec)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _one_line(text: str) -> str:
    """Libvirt refuses a title with a newline in it."""
    return " ".join(text.split())


def _metadata(domain: ET.Element, spec: DomainSpec) -> None:
    metadata = ET.SubElement(domain, "metadata")
    instance = ET.SubElement(metadata, f"{{{METADATA_NS}}}instance", uuid=spec.uuid)
    _text(instance, f"{{{METADATA_NS}}}name", spec.name)
    _text(instance, f"{{{METADATA_NS}}}disk_gb", str(spec.disk_gb))


def _os(domain: ET.Element) -> None:
    os_element = ET.SubElement(domain, "os")
    _text(os_element, "type", "hvm", arch="x86_64")
    ET.SubElement(os_element, "boot", dev="hd")


def _devices(domain: ET.Element, spec: DomainSpec) -> None:
    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=spec.image_format)
    ET.SubElement(disk, "source", file=spec.image_path)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    for nic in spec.nics:  # a tap hostd made and plugged: libvirt only uses it
        interface = ET.SubElement(devices, "interface", type="ethernet")
        ET.SubElement(interface, "mac", address=nic.mac)
        ET.SubElement(interface, "target", dev=nic.device, managed="no")
        ET.SubElement(interface, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")


#: the boot disk's target; volumes take the next ones (vdb, vdc, ...)
ROOT_DEVICE = "vda"


def volume_disk_xml(disk: VolumeDisk) -> str:
    """The ``<disk>`` device of a volume (what ``attachDeviceFlags`` is given)."""
    element = ET.Element("disk", type="file", device="disk")
    ET.SubElement(element, "driver", name="qemu", type=disk.format, cache="none")
    ET.SubElement(element, "source", file=disk.path)
    ET.SubElement(element, "target", dev=disk.device, bus="virtio")
    if disk.serial:
        _text(element, "serial", disk.serial)
    return ET.tostring(element, encoding="unicode")


def volume_disks(domain_xml: str) -> dict[str, str]:
    """The file disks of a definition other than the boot disk: target device -> file."""
    found: dict[str, str] = {}
    for disk in ET.fromstring(domain_xml).iterfind("./devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is None or source is None:
            continue
        dev, path = target.get("dev"), source.get("file")
        if dev and path is not None and dev != ROOT_DEVICE:
            found[dev] = path
    return found


def with_disk(domain_xml: str, disk: VolumeDisk) -> str:
    """The definition with ``disk`` added (for a driver that cannot attach devices)."""
    domain = ET.fromstring(domain_xml)
    devices = domain.find("devices")
    if devices is None:
        devices = ET.SubElement(domain, "devices")
    devices.append(ET.fromstring(volume_disk_xml(disk)))
    return ET.tostring(domain, encoding="unicode")


def without_disk(domain_xml: str, device: str) -> str:
    """The definition without the disk on ``device``."""
    domain = ET.fromstring(domain_xml)
    devices = domain.find("devices")
    for disk in [] if devices is None else list(devices.iterfind("disk")):
        target = disk.find("target")
        if target is not None and target.get("dev") == device:
            assert devices is not None
            devices.remove(disk)
    return ET.tostring(domain, encoding="unicode")


def disk_element(domain_xml: str, device: str) -> str | None:
    """The ``<disk>`` on ``device`` as the definition has it (None: no such disk)."""
    for disk in ET.fromstring(domain_xml).iterfind("./devices/disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == device:
            return ET.tostring(disk, encoding="unicode")
    return None
