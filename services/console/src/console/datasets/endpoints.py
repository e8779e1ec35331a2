"""/console/api/datasets"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from console.datasets import service
from console.datasets.schemas import DatasetCreate, DatasetOut, DatasetUpdate
from console.models import Workspace
from console.request_context import ReadDep, WriteDep
from servicekit.db import UnitOfWork
from servicekit.openapi import error_responses
from servicekit.pagination import Page, PageParamsDep

router = APIRouter(prefix="/console/api/datasets", tags=["datasets"])


@router.post("", status_code=201, response_model=DatasetOut, responses=error_responses(409))
async def create_dataset(body: DatasetCreate, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DatasetOut:
        return await service.create(uow, workspace, body)

    return await ctx.write(run, status_code=201)


@router.get("", response_model=Page[DatasetOut])
async def list_datasets(page: PageParamsDep, ctx: ReadDep) -> Page[DatasetOut]:
    return await ctx.read(lambda uow, workspace: service.list_page(uow, workspace, page))


@router.get("/{dataset_id}", response_model=DatasetOut)
async def get_dataset(dataset_id: uuid.UUID, ctx: ReadDep) -> DatasetOut:
    return await ctx.read(lambda uow, workspace: service.get(uow, workspace, dataset_id))


@router.patch("/{dataset_id}", response_model=DatasetOut, responses=error_responses(409))
async def update_dataset(dataset_id: uuid.UUID, body: DatasetUpdate, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DatasetOut:
        return await service.update(uow, workspace, dataset_id, body)

    return await ctx.write(run)


@router.delete("/{dataset_id}", status_code=204, response_class=Response)
async def delete_dataset(dataset_id: uuid.UUID, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> None:
        await service.delete(uow, workspace, dataset_id)

    return await ctx.write(run, status_code=204)
