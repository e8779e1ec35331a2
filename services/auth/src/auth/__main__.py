"""`python -m auth`: serve the API on AUTH_HOST:AUTH_PORT."""

from __future__ import annotations

from auth.settings import Settings
from servicekit.serve import serve

if __name__ == "__main__":
    settings = Settings()
    serve("auth.main:create_app", host=settings.host, port=settings.port)
