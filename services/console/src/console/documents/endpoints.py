"""/console/api/datasets/{dataset_id}/documents, including Dify's batch status action."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from console.documents import service
from console.documents.schemas import (
    MAX_BATCH,
    BatchResult,
    DocumentCreate,
    DocumentDetail,
    DocumentOut,
    DocumentUpdate,
    StatusFilter,
)
from console.documents.transitions import StatusAction
from console.models import Workspace
from console.request_context import ReadDep, WriteDep
from servicekit.db import UnitOfWork
from servicekit.openapi import error_responses
from servicekit.pagination import Page, PageParamsDep

router = APIRouter(prefix="/console/api/datasets/{dataset_id}/documents", tags=["documents"])


@router.post("", status_code=201, response_model=DocumentDetail)
async def create_document(dataset_id: uuid.UUID, body: DocumentCreate, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DocumentDetail:
        return DocumentDetail.model_validate(await service.create(uow, workspace, dataset_id, body))

    return await ctx.write(run, status_code=201)


@router.get("", response_model=Page[DocumentOut])
async def list_documents(
    dataset_id: uuid.UUID,
    page: PageParamsDep,
    ctx: ReadDep,
    status: Annotated[StatusFilter | None, Query()] = None,
) -> Page[DocumentOut]:
    async def run(uow: UnitOfWork, workspace: Workspace) -> Page[DocumentOut]:
        rows, total = await service.list_page(uow, workspace, dataset_id, status, page)
        return Page[DocumentOut].of([DocumentOut.model_validate(d) for d in rows], page, total)

    return await ctx.read(run)


# Declared before /{document_id} so "status" is never taken for a document id.
@router.patch("/status/{action}/batch", response_model=BatchResult, responses=error_responses(409))
async def change_status(
    dataset_id: uuid.UUID,
    action: StatusAction,
    document_id: Annotated[list[uuid.UUID], Query(min_length=1, max_length=MAX_BATCH)],
    ctx: WriteDep,
) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> BatchResult:
        documents = await service.change_status(uow, workspace, dataset_id, action, document_id)
        return BatchResult(data=[DocumentOut.model_validate(d) for d in documents])

    return await ctx.write(run)


@router.get("/{document_id}", response_model=DocumentDetail)
async def get_document(dataset_id: uuid.UUID, document_id: uuid.UUID, ctx: ReadDep) -> DocumentDetail:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DocumentDetail:
        return DocumentDetail.model_validate(await service.get(uow, workspace, dataset_id, document_id))

    return await ctx.read(run)


@router.patch("/{document_id}", response_model=DocumentDetail, responses=error_responses(409))
async def update_document(
    dataset_id: uuid.UUID, document_id: uuid.UUID, body: DocumentUpdate, ctx: WriteDep
) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> DocumentDetail:
        return DocumentDetail.model_validate(
            await service.update(uow, workspace, dataset_id, document_id, body)
        )

    return await ctx.write(run)


@router.delete("/{document_id}", status_code=204, response_class=Response)
async def delete_document(dataset_id: uuid.UUID, document_id: uuid.UUID, ctx: WriteDep) -> Response:
    async def run(uow: UnitOfWork, workspace: Workspace) -> None:
        await service.delete(uow, workspace, dataset_id, document_id)

    return await ctx.write(run, status_code=204)
