"""`python -m console`: serve the API on CONSOLE_HOST:CONSOLE_PORT."""

from __future__ import annotations

import uvicorn

from console.settings import get_settings

if __name__ == "__main__":
    settings = get_settings()
    uvicorn.run("console.main:create_app", factory=True, host=settings.host, port=settings.port)
