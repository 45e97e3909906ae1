"""
appnet's FTP server for bench/ftp, built exactly as C{twistd appnet-ftp}
builds it (L{appnet.service.make_service}), with one user.

Settings from the environment (run.py sets them): C{BENCH_DATA} (data
directory), C{BENCH_PORT}, C{BENCH_USER}, C{BENCH_PASSWORD}. Run::

    python bench/ftp/appnet_server.py
"""

import os

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402

from appnet import accounts  # noqa: E402
from appnet.config import load_config  # noqa: E402
from appnet.service import make_service  # noqa: E402


def main() -> None:
    data = os.environ["BENCH_DATA"]
    config = load_config(
        data_dir=data,
        overrides={
            "ftp": {"listen": [f"tcp:{os.environ['BENCH_PORT']}:interface=127.0.0.1"],
                    "listen_tls": []},
            "accounts": {"failed_login_delay": 0.0},
        },
    )
    top = make_service(config, reactor, only=("ftp",))
    user = os.environ["BENCH_USER"]
    if not top.context.accounts.exists(user):
        accounts.SCRYPT_N = 1 << 4  # a benchmark account: cheap hash
        top.context.accounts.add(user, os.environ["BENCH_PASSWORD"])
    top.startService()
    reactor.run()


if __name__ == "__main__":
    main()
