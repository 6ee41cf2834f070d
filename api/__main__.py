"""``python -m api``: serve the API with the settings of the environment (``BMS_*``)."""

from __future__ import annotations

import sys

from api.server import ServeRefused, check_serve, serve
from worker.settings import SettingsError, get_settings


def main() -> int:
    try:
        settings = get_settings()
        check_serve(settings)
    except (SettingsError, ServeRefused) as exc:
        print(f"bms api: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
