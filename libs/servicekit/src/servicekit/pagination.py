"""Page-number pagination in the shape Dify's console API answers: data, page, limit, total, has_more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

T = TypeVar("T")

MAX_LIMIT = 100


class PageParams(BaseModel):
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


async def page_params(
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
) -> PageParams:
    return PageParams(page=page, limit=limit)


PageParamsDep = Annotated[PageParams, Depends(page_params)]


class Page(BaseModel, Generic[T]):
    data: list[T]
    page: int
    limit: int
    total: int
    has_more: bool

    @classmethod
    def of(cls, items: Sequence[T], params: PageParams, total: int) -> Page[T]:
        return cls(
            data=list(items),
            page=params.page,
            limit=params.limit,
            total=total,
            has_more=params.offset + len(items) < total,
        )
