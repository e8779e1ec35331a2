"""`python -m indexer`: serve the API on INDEXER_HOST:INDEXER_PORT."""

from __future__ import annotations

from indexer.settings import get_settings
from servicekit.serve import serve

if __name__ == "__main__":
    settings = get_settings()
    serve("indexer.main:create_app", host=settings.host, port=settings.port)
