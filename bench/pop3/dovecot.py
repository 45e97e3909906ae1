"""
A throw-away Dovecot 2.3 serving one maildir over POP3 on 127.0.0.1.

Everything lives under one temporary directory: the config, C{base_dir},
C{state_dir}, the log and a passwd-file with C{{PLAIN}} passwords. Only
POP3 is enabled, without TLS, with plaintext logins allowed. Dovecot's own
POP3 defaults are kept otherwise (one login process per connection, as
shipped), except C{pop3_uidl_format}, set to what appnet uses.

Run as root, Dovecot will not let a user with UID 0 read mail, so the
maildir is handed to C{nobody} (the copy made for Dovecot, never the
corpus); run as another user, every Dovecot process runs as that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

__all__ = ["DOVECOT", "dovecot_version", "write_config", "dovecot_command"]

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def dovecot_version(binary: str = DOVECOT) -> str:
    """The installed version, e.g. C{2.3.19.1}."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.split()[0]


def _owner(maildir_root: str) -> tuple[str, int, int, str, str]:
    """
    (mail user, uid, gid, internal user, login user) for this process.
    """
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_uid, me.pw_gid, me.pw_name, me.pw_name
    nobody = pwd.getpwnam("nobody")
    for dirpath, dirnames, filenames in os.walk(maildir_root):
        os.chown(dirpath, nobody.pw_uid, nobody.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), nobody.pw_uid, nobody.pw_gid)
    internal = "dovecot" if _exists("dovecot") else "nobody"
    login = "dovenull" if _exists("dovenull") else "nobody"
    return "nobody", nobody.pw_uid, nobody.pw_gid, internal, login


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def write_config(
    directory: str, maildir_root: str, port: int, user: str, password: str
) -> str:
    """
    Write a config for Dovecot serving C{maildir_root/<user>} on
    127.0.0.1:C{port} into C{directory} (which must exist).

    @return: the config file's path
    """
    version = dovecot_version()
    if not version.startswith("2.3"):
        raise RuntimeError(f"bench/pop3/dovecot.py speaks Dovecot 2.3 settings; found {version}")
    _name, uid, gid, internal, login = _owner(maildir_root)
    os.chmod(directory, 0o755)
    base_dir = os.path.join(directory, "run")
    state_dir = os.path.join(directory, "state")
    os.makedirs(base_dir, mode=0o755)
    os.makedirs(state_dir, mode=0o755)
    passwd = os.path.join(directory, "passwd")
    with open(passwd, "w") as f:
        f.write(f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{maildir_root}/{user}::\n")
    os.chmod(passwd, 0o644)
    config = os.path.join(directory, "dovecot.conf")
    with open(config, "w") as f:
        f.write(
            f"""\
# Written by bench/pop3/dovecot.py for one benchmark run.
base_dir = {base_dir}
state_dir = {state_dir}
instance_name = appnet-bench-{port}
log_path = {directory}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {min(uid, 500) if uid else 1}
first_valid_gid = {min(gid, 500) if gid else 1}
mail_location = maildir:{maildir_root}/%u
pop3_uidl_format = %08Xv%08Xu
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""
        )
    return config


def dovecot_command(config: str) -> list[str]:
    """The command that runs Dovecot in the foreground with C{config}."""
    return [DOVECOT, "-F", "-c", config]
