"""One dnsmasq per network serving static DHCP entries: its files, arguments and process.

Each server keeps its files in ``<state_dir>/<network_id>/``: ``hosts`` (one ``mac,ip``
line per entry, read again on SIGHUP), ``args`` (the command line it was started with)
and ``pid``. dnsmasq daemonises, so it outlives hostd: a restarted hostd finds it by its
pid file and leaves it alone when its arguments still match. There is no dynamic range
(``static``), no DNS (``--port=0``) and no lease file: the entries are the whole truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import structlog

from hostd.network import DhcpFailed, changed_entries
from schemas.hostnet import DhcpHost, NetworkSpec

log = structlog.get_logger(__name__)

#: Lease time handed to guests; they renew at half of it.
LEASE_SECONDS = 86400
#: Bounds on starting and stopping one dnsmasq.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def render_hosts(hosts: Sequence[DhcpHost]) -> str:
    """The ``--dhcp-hostsfile`` text: one ``mac,ip`` line per entry, sorted by MAC."""
    return "".join(f"{h.mac.lower()},{h.ip}\n" for h in sorted(hosts, key=_by_mac))


def parse_hosts(text: str) -> tuple[DhcpHost, ...]:
    """The entries of a hosts file written by ``render_hosts``."""
    pairs = (line.split(",", 1) for line in text.splitlines() if "," in line)
    return tuple(DhcpHost(mac=mac, ip=ip) for mac, ip in pairs)


def _by_mac(host: DhcpHost) -> str:
    return host.mac.lower()


def dnsmasq_args(spec: NetworkSpec, interface: str, files: Path, user: str) -> list[str]:
    """The dnsmasq command line serving ``spec``'s DHCP-enabled subnets on ``interface``."""
    args = [
        "dnsmasq", "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--port=0",
        f"--interface={interface}", "--bind-interfaces", "--except-interface=lo",
        "--dhcp-authoritative", "--leasefile-ro", f"--user={user}",
        f"--pid-file={files / 'pid'}", f"--dhcp-hostsfile={files / 'hosts'}",
        f"--log-facility={files / 'log'}",
    ]
    for i, subnet in enumerate(s for s in spec.subnets if s.enable_dhcp):
        net = ipaddress.ip_network(subnet.cidr)
        tag = f"s{i}"
        args.append(f"--dhcp-range=set:{tag},{net.network_address},static,"
                    f"{net.netmask},{LEASE_SECONDS}")
        args.append(f"--dhcp-option=tag:{tag},option:router"
                    + (f",{subnet.gateway_ip}" if subnet.gateway_ip else ""))
        args.append(f"--dhcp-option=tag:{tag},option:dns-server"
                    + "".join(f",{d}" for d in subnet.dns_nameservers))
    args.append(f"--dhcp-option=option:mtu,{spec.mtu}")
    return args


class Dnsmasq:
    """Starts, updates and stops the per-network dnsmasq processes of one host; each
    runs inside its network's DHCP namespace (``ip netns exec``)."""

    def __init__(self, state_dir: Path, *, user: str = "root", binary: str = "dnsmasq") -> None:
        self.state_dir = state_dir
        self.user = user
        self.binary = binary

    def files(self, network_id: str) -> Path:
        return self.state_dir / network_id

    def served(self) -> list[str]:
        """The networks that have a server's files here (running or not)."""
        if not self.state_dir.is_dir():
            return []
        return sorted(p.name for p in self.state_dir.iterdir() if (p / "args").exists())

    def hosts(self, network_id: str) -> tuple[DhcpHost, ...]:
        path = self.files(network_id) / "hosts"
        return parse_hosts(path.read_text()) if path.exists() else ()

    def running_pid(self, network_id: str) -> int | None:
        """The pid of this network's dnsmasq if it is alive (and is that dnsmasq)."""
        files = self.files(network_id)
        try:
            pid = int((files / "pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if f"--pid-file={files / 'pid'}".encode() in cmdline else None

    async def ensure(self, spec: NetworkSpec, interface: str, netns: str) -> None:
        """Run the server for ``spec`` in ``netns``: restart it if its arguments changed,
        SIGHUP it if only its entries did, leave it alone otherwise."""
        assert spec.dhcp is not None
        files = self.files(spec.network_id)
        files.mkdir(parents=True, exist_ok=True)
        args = dnsmasq_args(spec, interface, files, self.user)
        args[0] = self.binary
        hosts_changed = _write_if_changed(files / "hosts", render_hosts(spec.dhcp.hosts))
        pid = self.running_pid(spec.network_id)
        if pid is not None and _read(files / "args") == "\n".join(args):
            if hosts_changed:
                os.kill(pid, signal.SIGHUP)
                log.info("dhcp_hosts_reloaded", network_id=spec.network_id,
                         hosts=len(spec.dhcp.hosts))
            return
        await self.stop(spec.network_id, forget=False)
        await self._start(spec.network_id, args, netns)

    def update_hosts(self, network_id: str, add: Sequence[DhcpHost],
                     remove: Sequence[DhcpHost]) -> bool:
        """Change some entries of a running server's hosts file (the others stay as
        they are) and SIGHUP it if the file changed; False when no server runs."""
        pid = self.running_pid(network_id)
        if pid is None:
            return False
        path = self.files(network_id) / "hosts"
        entries = changed_entries(self.hosts(network_id), add, remove)
        if _write_if_changed(path, render_hosts(entries)):
            os.kill(pid, signal.SIGHUP)
            log.info("dhcp_hosts_updated", network_id=network_id, added=len(add),
                     removed=len(remove), hosts=len(entries))
        return True

    async def _start(self, network_id: str, args: list[str], netns: str) -> None:
        files = self.files(network_id)
        (files / "args").write_text("\n".join(args))
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                _, err = await proc.communicate()
        except TimeoutError as exc:
            proc.kill()
            raise DhcpFailed(f"dnsmasq for {network_id} did not start in {START_TIMEOUT}s",
                             network_id=network_id) from exc
        if proc.returncode != 0:
            raise DhcpFailed(f"dnsmasq for {network_id} failed: {err.decode().strip()}",
                             network_id=network_id)
        log.info("dhcp_started", network_id=network_id, netns=netns,
                 pid=self.running_pid(network_id))

    async def stop(self, network_id: str, *, forget: bool = True) -> None:
        """Stop the network's dnsmasq (SIGTERM, then SIGKILL); ``forget`` also removes
        its files."""
        pid = self.running_pid(network_id)
        if pid is not None:
            await _terminate(pid)
            log.info("dhcp_stopped", network_id=network_id, pid=pid)
        if forget:
            files = self.files(network_id)
            for name in ("hosts", "args", "pid", "log"):
                with contextlib.suppress(FileNotFoundError):
                    (files / name).unlink()
            with contextlib.suppress(OSError):
                files.rmdir()


async def _terminate(pid: int) -> None:
    """SIGTERM ``pid`` and wait until it has exited; SIGKILL after STOP_TIMEOUT."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await _exited(pidfd)
        except TimeoutError:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            log.warning("dhcp_killed", pid=pid, after=STOP_TIMEOUT)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


async def _exited(pidfd: int) -> None:
    """Wait until the process behind ``pidfd`` has exited (the fd becomes readable)."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(pidfd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(pidfd)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _write_if_changed(path: Path, text: str) -> bool:
    """Replace the file atomically when its text differs; whether it did."""
    if _read(path) == text:
        return False
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True
