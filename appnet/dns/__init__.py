"""
appnet's DNS: an authoritative server for zone files and appnet's own
domain, a caching forwarder for allowed clients, and a resolver client.

The public face: L{DNSClient}, L{resolve} and L{Record} for users of the
client (the SMTP relay's MX lookups); L{DNSEngine} and the protocols in
L{appnet.dns.server} for those who embed the server.
"""

from appnet.dns.client import (
    DNSClient,
    DNSError,
    DNSTimeout,
    NXDomain,
    QueryRefused,
    Record,
    ServerFailure,
    resolve,
)

__all__ = [
    "DNSClient",
    "DNSError",
    "DNSTimeout",
    "NXDomain",
    "QueryRefused",
    "Record",
    "ServerFailure",
    "resolve",
]
