"""
FTP over the filesystem store.

 - L{appnet.ftp.server}: the server (C{FTPServerFactory}), Twisted's FTP
   extended with REST/APPE/STOU/ABOR, MLSD/MLST, EPSV/EPRT, FTPS, sendfile;
 - L{appnet.ftp.shell}: the C{IFTPShell} avatar the realm hands out;
 - L{appnet.ftp.client}: C{connect()} and the Deferred-returning
   C{FTPSession} (FTPS with data-channel session reuse, MLSD, resume);
 - L{appnet.ftp.tap}: C{twistd appnet-ftp}; L{appnet.ftp.cli}: C{appnet ftp};
 - L{appnet.ftp.testing}: C{start_ftp_server()} for trial tests.
"""
