"""Broker URLs that name several hosts: ``scheme://[user[:password]@]host1[:port],host2[:port]/rest``.

A cluster is reached through any of its nodes, so every backend accepts a comma-separated host
list in its URL. :func:`parse_hosts` splits such a URL (``urllib`` refuses the port of a
multi-host netloc); :meth:`HostList.url_for` gives the single-host URL of one node, for client
libraries that take one URL only. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispytch.errors import ConfigurationError

__all__ = ["HostList", "parse_hosts"]


@dataclass(frozen=True)
class HostList:
    """The parts of a (possibly multi-host) URL. ``hosts`` keeps the URL's order."""

    scheme: str
    userinfo: str  # "user:password" as written (still percent-encoded), or ""
    hosts: tuple[tuple[str, int], ...]
    rest: str  # path, query and fragment as written, "" or starting with "/", "?" or "#"

    def url_for(self, index: int) -> str:
        """The URL of ``hosts[index]`` alone, with this URL's scheme, credentials and path."""
        host, port = self.hosts[index]
        at = f"{self.userinfo}@" if self.userinfo else ""
        return f"{self.scheme}://{at}{_join(host, port)}{self.rest}"

    def addresses(self) -> list[str]:
        """``host:port`` of every host (IPv6 hosts in brackets)."""
        return [_join(host, port) for host, port in self.hosts]


def parse_hosts(url: str, default_port: int, *, shown: str | None = None) -> HostList:
    """Split ``url`` into its scheme, credentials, hosts and the rest.

    Hosts without a port get ``default_port``. ``shown`` is how the URL appears in errors
    (without its password); a bad URL raises :class:`ConfigurationError`.
    """
    scheme, sep, after = url.partition("://")
    if not sep:
        raise ConfigurationError(f"{shown or url!r} is not a URL; use scheme://host:port")
    end = len(after)
    for mark in "/?#":
        found = after.find(mark)
        if found != -1:
            end = min(end, found)
    netloc, rest = after[:end], after[end:]
    userinfo, _, hostlist = netloc.rpartition("@")
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if item:
            hosts.append(_split(item, default_port, shown or url))
    if not hosts:
        raise ConfigurationError(
            f"broker URL {shown or url!r} names no host; use {scheme}://host1:port[,host2:port]"
        )
    return HostList(scheme=scheme, userinfo=userinfo, hosts=tuple(hosts), rest=rest)


def _split(item: str, default_port: int, shown: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, after = item[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    else:
        host, port_text = item, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(
            f"broker URL {shown!r}: {port_text!r} is not a port; use host:port, e.g. "
            f"{host}:{default_port}"
        )
    return host, int(port_text)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
