"""Domain XML built from a DomainSpec: the elements libvirt needs, user text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import msgspec
import pytest

from hostd.domain_xml import (
    METADATA_NS,
    DomainType,
    build_domain_xml,
    domain_name,
    domain_type_for,
)
from schemas.hostd import DomainSpec, Nic

SPEC = DomainSpec(
    uuid="0b5e0c7e-1d8a-4b1e-9a43-6a4f3f0d2c11", name="web-1", vcpus=2, ram_mb=2048,
    disk_gb=20, image_path="/var/lib/orrery/images/cirros.qcow2",
)


def parse(spec: DomainSpec = SPEC, domain_type: DomainType = "kvm") -> ET.Element:
    return ET.fromstring(build_domain_xml(spec, domain_type))


def text(root: ET.Element, path: str) -> str | None:
    element = root.find(path)
    assert element is not None, f"no {path}"
    return element.text


@pytest.mark.parametrize("domain_type", ["test", "qemu", "kvm"])
def test_domain_type_is_the_configured_one(domain_type: DomainType) -> None:
    """<domain type=...> is test, qemu (TCG) or kvm as configured."""
    assert parse(domain_type=domain_type).get("type") == domain_type


def test_unknown_domain_type_is_refused() -> None:
    """A misspelt domain type is a ValueError, not a domain libvirt later rejects."""
    with pytest.raises(ValueError, match="xen"):
        build_domain_xml(SPEC, "xen")  # type: ignore[arg-type]


def test_identity_is_the_instance_uuid() -> None:
    """The uuid is the instance id; the libvirt name is derived from it, not user text."""
    root = parse()
    assert text(root, "uuid") == SPEC.uuid
    assert text(root, "name") == domain_name(SPEC.uuid) == f"orrery-{SPEC.uuid}"
    assert text(root, "title") == "web-1"


def test_memory_and_vcpus_come_from_the_flavor() -> None:
    """memory and currentMemory in MiB, a static vcpu count."""
    root = parse()
    for tag in ("memory", "currentMemory"):
        element = root.find(tag)
        assert element is not None
        assert (element.text, element.get("unit")) == ("2048", "MiB")
    assert text(root, "vcpu") == "2"


def test_os_is_hvm_booting_from_disk_with_acpi() -> None:
    """os type hvm, boot from hd, and ACPI so graceful shutdown can work."""
    root = parse()
    assert text(root, "os/type") == "hvm"
    boot = root.find("os/boot")
    assert boot is not None and boot.get("dev") == "hd"
    assert root.find("features/acpi") is not None


@pytest.mark.parametrize("image_format", ["qcow2", "raw"])
def test_boot_disk_is_virtio_from_the_image_file(image_format: str) -> None:
    """One file-backed virtio disk (vda) with the image's format."""
    spec = DomainSpec(
        uuid=SPEC.uuid, name="x", vcpus=1, ram_mb=64, disk_gb=1, image_path="/images/x.img",
        image_format=image_format,  # type: ignore[arg-type]
    )
    disks = parse(spec).findall("devices/disk")
    assert len(disks) == 1
    disk = disks[0]
    assert (disk.get("type"), disk.get("device")) == ("file", "disk")
    driver, source, target = disk.find("driver"), disk.find("source"), disk.find("target")
    assert driver is not None and driver.get("type") == image_format
    assert source is not None and source.get("file") == "/images/x.img"
    assert target is not None and (target.get("dev"), target.get("bus")) == ("vda", "virtio")


def test_serial_console_and_no_network() -> None:
    """A pty serial port with a console on it; no interface without NICs."""
    devices = parse().find("devices")
    assert devices is not None
    serial, console = devices.find("serial"), devices.find("console")
    assert serial is not None and serial.get("type") == "pty"
    assert console is not None and console.find("target") is not None
    assert devices.find("interface") is None


def test_user_text_is_escaped() -> None:
    """Markup in the display name or image path stays text: the XML parses and round-trips."""
    name = "</title><devices/> & \"quotes\" 'x'"
    spec = DomainSpec(
        uuid=SPEC.uuid, name=name, vcpus=1, ram_mb=64, disk_gb=1,
        image_path="/images/a&b<c>'.qcow2",
    )
    root = parse(spec)
    assert text(root, "title") == name
    assert text(root, f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}name") == name
    source = root.find("devices/disk/source")
    assert source is not None and source.get("file") == "/images/a&b<c>'.qcow2"
    assert len(root.findall("devices")) == 1


def test_title_is_one_line() -> None:
    """libvirt refuses a multi-line title, so whitespace runs collapse to single spaces."""
    spec = DomainSpec(uuid=SPEC.uuid, name="a\nb\t c", vcpus=1, ram_mb=64, disk_gb=1,
                      image_path="/i")
    assert text(parse(spec), "title") == "a b c"


def test_metadata_marks_the_domain_as_orrerys() -> None:
    """Orrery's metadata element carries the instance uuid and disk size (for reconcile)."""
    instance = parse().find(f"metadata/{{{METADATA_NS}}}instance")
    assert instance is not None and instance.get("uuid") == SPEC.uuid
    assert text(instance, f"{{{METADATA_NS}}}disk_gb") == "20"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("test:///default", "test"), ("qemu:///system", "kvm"), ("qemu+ssh://h/system", "kvm")],
)
def test_domain_type_defaults_from_the_uri(uri: str, expected: str) -> None:
    """Without configuration, the test driver gets type test and anything else kvm."""
    assert domain_type_for(uri) == expected


def test_each_nic_is_an_unmanaged_ethernet_tap_with_the_ports_mac() -> None:
    """hostd plugs the tap itself, so libvirt gets ``type=ethernet`` with the tap as an
    unmanaged target, the port's MAC, and virtio, one interface per NIC in order."""
    spec = msgspec.structs.replace(SPEC, nics=(
        Nic(mac="fa:16:3e:00:00:01", device="otp4b2d0e610e6"),
        Nic(mac="fa:16:3e:00:00:02", device="otp77aa0e610e6")))
    interfaces = parse(spec).findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["ethernet", "ethernet"]
    assert [i.find("mac").get("address") for i in interfaces] == [  # type: ignore[union-attr]
        "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"]
    targets = [i.find("target") for i in interfaces]
    assert [(t.get("dev"), t.get("managed")) for t in targets if t is not None] == [
        ("otp4b2d0e610e6", "no"), ("otp77aa0e610e6", "no")]
    assert all(i.find("model").get("type") == "virtio" for i in interfaces)  # type: ignore[union-attr]
