"""/console/api/datasets"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from console.datasets import service
from console.datasets.schemas import DatasetCreate, DatasetOut, DatasetUpdate
from console.datasets.service import DatasetView
from console.models import Workspace
from console.request_context import ReadDep, WriteDep
from servicekit.db import UnitOfWork
from servicekit.openapi import error_responses
from servicekit.pagination import Page, PageParamsDep

router = APIRouter(prefix="/console/api/datasets", tags=["datasets"])


def _out(view: DatasetView) -> DatasetOut:
    d = view.dataset
    return DatasetOut(
        id=d.id,
        name=d.name,
        description=d.description,
        document_count=view.document_count,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


@router.post("", status_code=201, response_model=DatasetOut, responses=error_responses(409))
async def create_dataset(body: DatasetCreate, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DatasetOut:
        return _out(await service.create(uow, workspace, body))

    return await ctx.write(run, status_code=201)


@router.get("", response_model=Page[DatasetOut])
async def list_datasets(page: PageParamsDep, ctx: ReadDep) -> Page[DatasetOut]:
    async def run(uow: UnitOfWork, workspace: Workspace) -> Page[DatasetOut]:
        views, total = await service.list_page(uow, workspace, page)
        return Page[DatasetOut].of([_out(v) for v in views], page, total)

    return await ctx.read(run)


@router.get("/{dataset_id}", response_model=DatasetOut)
async def get_dataset(dataset_id: uuid.UUID, ctx: ReadDep) -> DatasetOut:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DatasetOut:
        return _out(await service.get(uow, workspace, dataset_id))

    return await ctx.read(run)


@router.patch("/{dataset_id}", response_model=DatasetOut, responses=error_responses(409))
async def update_dataset(dataset_id: uuid.UUID, body: DatasetUpdate, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DatasetOut:
        return _out(await service.update(uow, workspace, dataset_id, body))

    return await ctx.write(run)


@router.delete("/{dataset_id}", status_code=204, response_class=Response)
async def delete_dataset(dataset_id: uuid.UUID, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> None:
        await service.delete(uow, workspace, dataset_id)

    return await ctx.write(run, status_code=204)
