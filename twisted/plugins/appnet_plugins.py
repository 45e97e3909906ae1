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
