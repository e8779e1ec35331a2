"""The yardstick for `bench/api.py`: a bare FastAPI + SQLAlchemy app doing the SELECT behind console's
`GET /console/api/datasets/{id}` (same driver, same pool settings), with nothing else per request.

    python -m bench.bare_app PORT DATABASE_URL
"""

from __future__ import annotations

import sys
import uuid

import uvicorn
from fastapi import FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from outbox.database_url import psycopg_url

SELECT = text(
    "SELECT id, workspace_id, name, description, created_at, updated_at FROM datasets WHERE id = :id"
)


def build(database_url: str) -> FastAPI:
    engine = create_async_engine(psycopg_url(database_url), pool_size=10, max_overflow=10)
    app = FastAPI()

    @app.get("/datasets/{dataset_id}")
    async def get_dataset(dataset_id: uuid.UUID) -> dict[str, object]:
        async with engine.connect() as conn:
            row = (await conn.execute(SELECT, {"id": dataset_id})).mappings().first()
        if row is None:
            raise HTTPException(404)
        return {key: str(value) for key, value in row.items()}

    return app


if __name__ == "__main__":
    uvicorn.run(
        build(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False
    )
