"""A small service built by `create_service_app`, served by uvicorn in its own process in
test_request_trace.py (`uvicorn traced_app:create_app --factory`): one route per kind of answer."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from servicekit.app import create_service_app
from servicekit.errors import NotFound

router = APIRouter(prefix="/kit")


class Item(BaseModel):
    name: str


@router.get("/ok")
async def ok() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/missing")
async def missing() -> None:
    raise NotFound("no such thing")


@router.post("/items")
async def create_item(item: Item) -> Item:
    return item


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("a bug")


def create_app() -> FastAPI:
    return create_service_app(name="kit", routers=[router], max_body_bytes=1024)
