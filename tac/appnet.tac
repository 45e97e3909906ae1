# twistd -ny tac/appnet.tac
# The same suite as `twistd -n appnet`, from a .tac: edit CONFIG to point at
# your TOML file (or leave None for built-in defaults). No logic lives here.
from twisted.application import service

from appnet.config import load_config
from appnet.service import make_service

CONFIG = None  # e.g. "/etc/appnet/appnet.toml"
DATA_DIR = None  # e.g. "/var/lib/appnet"

application = service.Application("appnet")
make_service(load_config(CONFIG, DATA_DIR)).setServiceParent(application)
