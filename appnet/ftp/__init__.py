"""
FTP: the server (L{appnet.ftp.server.FTPServerFactory}) over the filesystem
store, its avatar (L{appnet.ftp.shell.FTPShell}) and C{twistd appnet-ftp}.
"""
