"""
pyftpdlib for bench/ftp: its stock C{FTPHandler} (sendfile on where the
platform has it, as by default) with one read-write user. Settings from the
environment: C{BENCH_HOME}, C{BENCH_PORT}, C{BENCH_USER}, C{BENCH_PASSWORD}.
"""

import logging
import os

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

logging.basicConfig(level=logging.WARNING)
authorizer = DummyAuthorizer()
authorizer.add_user(os.environ["BENCH_USER"], os.environ["BENCH_PASSWORD"],
                    os.environ["BENCH_HOME"], perm="elradfmwMT")
FTPHandler.authorizer = authorizer
server = FTPServer(("127.0.0.1", int(os.environ["BENCH_PORT"])), FTPHandler)
server.serve_forever()
