"""`python -m indexer`: serve the API on INDEXER_HOST:INDEXER_PORT."""

from __future__ import annotations

import uvicorn

from indexer.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    uvicorn.run("indexer.main:create_app", factory=True, host=settings.host, port=settings.port)
