"""
aiosmtpd for the SMTP benchmark: accepts every recipient and writes each
message to its own file in a directory (no fsync: aiosmtpd's handlers
leave durability to the application, and this is the plain way).

Usage: python aiosmtpd_server.py PORT DIRECTORY
"""

import asyncio
import itertools
import os
import sys

from aiosmtpd.smtp import SMTP


class FileHandler:
    """Write each message's content to DIRECTORY/<n>.eml."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.counter = itertools.count()

    async def handle_DATA(self, server, session, envelope) -> str:
        path = os.path.join(self.directory, f"{os.getpid()}.{next(self.counter)}.eml")
        with open(path, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        return "250 OK"


async def main(port: int, directory: str) -> None:
    loop = asyncio.get_running_loop()
    handler = FileHandler(directory)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="localhost"), "127.0.0.1", port
    )
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
