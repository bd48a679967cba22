"""Redis URLs: the one a worker process can reach a client's server at, one fit for a
message (password masked), and whether one leads off this host."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster


def reachable_from_other_hosts(url: str) -> bool:
    """Whether `url` names a server over TCP on an address other than this host's loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return True  # a host name: another machine, as far as we know


def cluster_url(client: RedisCluster) -> str:
    node = client.get_default_node()  # type: ignore[no-untyped-call]
    kw = client.nodes_manager.connection_kwargs
    auth = ""
    if kw.get("password"):
        auth = f"{quote(kw.get('username') or '', safe='')}:{quote(kw['password'], safe='')}@"
    scheme = "rediss" if kw.get("ssl") else "redis"
    return f"{scheme}://{auth}{node.host}:{node.port}"


def client_url(client: redis.Redis) -> str:
    """A URL from which a worker process can reach the same server as `client`."""
    kw = client.connection_pool.connection_kwargs
    db = kw.get("db", 0)
    auth = ""
    if kw.get("password"):
        user = quote(kw.get("username") or "", safe="")
        auth = f"{user}:{quote(kw['password'], safe='')}@"
    if kw.get("path"):
        return f"unix://{auth}{kw['path']}?db={db}"
    scheme = "rediss" if client.connection_pool.connection_class.__name__ == "SSLConnection" else "redis"
    return f"{scheme}://{auth}{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{db}"


def safe_url(url: str) -> str:
    """`url` with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = re.sub(r":[^@]*@", ":***@", parts.netloc, count=1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url
