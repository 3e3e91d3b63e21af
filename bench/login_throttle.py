"""How many passwords a guesser gets checked against one account, with the configured
waits (LOGIN_FREE_ATTEMPTS, LOGIN_DELAY_S, LOGIN_DELAY_MAX_S), trying as fast as the
waits allow: per minute over the first minute, hour and day."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from auth.local import checked_per_minute  # noqa: E402
from auth.settings import auth_settings  # noqa: E402
from config import Config  # noqa: E402


def main() -> None:
    config = {k: getattr(Config, k) for k in dir(Config) if k.isupper()}
    settings = auth_settings(config, {})
    for label, minutes in (("first minute", 1), ("first hour", 60), ("first day", 1440)):
        rate = checked_per_minute(settings, minutes)
        print(f"{label:>12}: {rate:7.3f} passwords checked per minute "
              f"({rate * minutes:.0f} in all)")
    print(f"per client address, on top: {settings.login_rate_limit}")


if __name__ == "__main__":
    main()
