"""`python -m console`: serve the API on CONSOLE_HOST:CONSOLE_PORT."""

from __future__ import annotations

from console.settings import get_settings
from servicekit.serve import serve

if __name__ == "__main__":
    settings = get_settings()
    serve("console.main:create_app", host=settings.host, port=settings.port)
