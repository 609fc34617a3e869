"""Which network addresses a crawl may connect to: only global ones, checked on the address
actually connected to (so a name that resolves differently between a check and the connection
cannot slip through), unless the user opts in to private addresses.

A crawled URL is chosen by whoever wrote the web page. Without this guard a result, or a
redirect, to `127.0.0.1`, `169.254.169.254` or `10.x` would make the toolkit send GETs into the
user's own network, and keep an internal camera's snapshot in a dataset that gets shared.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import connection

#: The environment variable that opts in, like --allow-private-addresses.
ALLOW_PRIVATE_ENV = "TOOLKIT_ALLOW_PRIVATE_ADDRESSES"


def private_addresses_allowed(flag: bool = False) -> bool:
    """Whether a crawl may fetch private addresses: the flag, or the environment's opt-in."""
    return flag or os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class AddressPolicy:
    """What a session may connect to: global addresses always; private ones (loopback,
    link-local, private ranges, ...) only if `allow_private`, or on the (host, port) pairs in
    `trusted` (an engine address the user set, for its result pages)."""

    allow_private: bool = False
    trusted: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def allows(self, host: str, port: int, address: str) -> bool:
        if self.allow_private or (host.lower(), port) in self.trusted:
            return True
        return is_global(address)


def user_set_addresses(engines) -> frozenset[tuple[str, int]]:
    """The (host, port) of each engine whose address the user set in its environment variable
    (TOOLKIT_BING_URL and the like): trusted for that engine's result pages, not for the image
    and redirect URLs those pages name."""
    trusted = set()
    for engine in engines:
        address = os.environ.get(getattr(engine, "env_var", "") or "", "")
        if address:
            parts = urlsplit(address)
            if parts.hostname:
                trusted.add((parts.hostname.lower(),
                             parts.port or (443 if parts.scheme == "https" else 80)))
    return frozenset(trusted)


class PrivateAddress(urllib3.exceptions.NewConnectionError):
    """The host resolved only to addresses the policy refuses."""

    def __init__(self, conn, message: str):
        super().__init__(conn, message)
        self.detail = message


def is_global(address: str) -> bool:
    """True for an address on the public internet (not loopback, private, link-local, shared,
    reserved, multicast or unspecified; an IPv4 address mapped into IPv6 is judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _GuardedConnection:
    """Connects only to addresses the class's policy allows, each address checked as it is
    connected to."""

    policy = AddressPolicy()

    def _new_conn(self) -> socket.socket:
        host, port = self._dns_host, self.port
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise urllib3.exceptions.NameResolutionError(self.host, self, e) from e
        allowed = [info[4][0] for info in found if self.policy.allows(self.host, port, info[4][0])]
        if not allowed:
            refused = ", ".join(sorted({info[4][0] for info in found}))
            raise PrivateAddress(self, f"{self.host} is a private address ({refused}); crawl with "
                                       f"--allow-private-addresses to fetch it")
        error: Exception | None = None
        for address in allowed:
            try:
                return connection.create_connection((address, port), self.timeout,
                                                    source_address=self.source_address,
                                                    socket_options=self.socket_options)
            except socket.timeout as e:
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out") from e
            except OSError as e:
                error = e
        raise urllib3.exceptions.NewConnectionError(
            self, f"Failed to establish a new connection: {error}") from error


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose direct connections obey `policy`. (A proxy the user configured is
    theirs to trust: through a proxy, the proxy connects, and it is not guarded here.)"""

    def __init__(self, policy: AddressPolicy, pool_connections: int = 10, pool_maxsize: int = 10):
        self.policy = policy
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        attributes = {"policy": self.policy}
        plain = type("Connection", (_GuardedConnection, HTTPConnection), attributes)
        secure = type("SecureConnection", (_GuardedConnection, HTTPSConnection), attributes)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("Pool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
            "https": type("SecurePool", (HTTPSConnectionPool,), {"ConnectionCls": secure})}

    def __getstate__(self):
        return {**super().__getstate__(), "policy": self.policy}


def refused_address(error: BaseException) -> PrivateAddress | None:
    """The PrivateAddress behind an error requests raised, if that is what it was."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, PrivateAddress):
            return error
        reason = getattr(error, "reason", None)
        nested = error.args[0] if error.args and isinstance(error.args[0], BaseException) else None
        error = reason if isinstance(reason, BaseException) else nested or error.__cause__
        seen += 1
    return None
