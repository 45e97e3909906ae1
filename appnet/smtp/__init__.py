"""SMTP: the ESMTP server, the outbound queue and relay, and the client."""
