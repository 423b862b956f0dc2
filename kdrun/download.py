"""Downloads (torchvision datasets and weights) with a timeout, failing as one line that says what to do.

torchvision's downloads call urlopen without a timeout: offline, behind a firewall, they can hang for
minutes. Every download in kdrun runs inside `downloading`, which sets a socket timeout for its
duration and turns any failure into a ConfigError naming what could not be fetched and how to get it
by hand.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator

from kdrun.errors import ConfigError

DOWNLOAD_TIMEOUT_SECONDS = 20


@contextlib.contextmanager
def downloading(failure: str, hint: str, reason_chars: int = 160) -> Iterator[None]:
    """Run the body with a socket timeout; an OSError/RuntimeError/ValueError becomes `failure (reason) (hint)`.

    Raises:
        ConfigError: the download failed (no network, missing file on the server, a timeout).
    """
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
    try:
        yield
    except (OSError, RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())[:reason_chars]
        raise ConfigError(f"{failure} ({reason})", hint) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
