"""
The filesystem store shared by FTP, TFTP, HTTP and the Telnet shell.

C{public/} is anonymous and read-only (with an optional C{incoming/} drop
box), C{home/<user>/} belongs to its user. A protocol holds an
L{IFileStore}, asks it for an avatar's L{IFileView} and uses only virtual
paths, which L{resolve_path} jails. Contents stream through
L{FileProducer} (reads) and L{IFileWriter} (writes) without blocking the
reactor.

For example::

    store = FileStore("/srv/appnet", quota_for=lambda user: 10**9, incoming=True)
    view = store.view_for("alice")      # None for anonymous
    names = [info.name for info in view.list("/")]      # includes "public"
    d = stream_file(view.open_read("/notes.txt"), transport)
"""

from appnet.filesystem.interfaces import (
    AlreadyExists,
    DirectoryNotEmpty,
    FileInfo,
    IFileStore,
    IFileView,
    IFileWriter,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
)
from appnet.filesystem.paths import normalize_virtual, resolve_path, split_virtual
from appnet.filesystem.store import FileStore, FileView, FileWriter
from appnet.filesystem.streams import DEFAULT_CHUNK_SIZE, FileProducer, stream_file

__all__ = [
    "AlreadyExists",
    "DEFAULT_CHUNK_SIZE",
    "DirectoryNotEmpty",
    "FileInfo",
    "FileProducer",
    "FileStore",
    "FileView",
    "FileWriter",
    "IFileStore",
    "IFileView",
    "IFileWriter",
    "InvalidOffset",
    "IsADirectory",
    "NotADirectory",
    "normalize_virtual",
    "resolve_path",
    "split_virtual",
    "stream_file",
]
