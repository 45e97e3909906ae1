# twistd plugins for appnet. Importing this file must never import the
# reactor: only ServiceMaker lines, which import appnet lazily.
from twisted.application.service import ServiceMaker

appnet = ServiceMaker(
    "appnet",
    "appnet.tap",
    "The Internet's application layer: every appnet service in one process.",
    "appnet",
)
appnet_pop3 = ServiceMaker(
    "appnet-pop3",
    "appnet.pop3.tap",
    "appnet's POP3 server (RFC 1939, STLS, AUTH PLAIN, POP3S).",
    "appnet-pop3",
)
appnet_tftp = ServiceMaker(
    "appnet-tftp",
    "appnet.tftp.tap",
    "appnet's TFTP server (RFC 1350, options: blksize, tsize, timeout, windowsize).",
    "appnet-tftp",
)
appnet_ftp = ServiceMaker(
    "appnet-ftp",
    "appnet.ftp.tap",
    "appnet's FTP server (RFC 959, 2428, 3659, FTPS per RFC 4217, implicit FTPS).",
    "appnet-ftp",
)
appnet_dns = ServiceMaker(
    "appnet-dns",
    "appnet.dns.tap",
    "appnet's DNS server (authoritative zones, EDNS0, TCP, AXFR, caching forwarder).",
    "appnet-dns",
)
appnet_smtp = ServiceMaker(
    "appnet-smtp",
    "appnet.smtp.tap",
    "appnet's ESMTP server (MX, submission, smtps; PIPELINING, SIZE, 8BITMIME, STARTTLS, AUTH, SMTPUTF8, CHUNKING).",
    "appnet-smtp",
)
