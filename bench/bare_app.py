"""The baselines for bench/subscribe.py, served by uvicorn like ``backinstock serve``:

- ``POST /bare``: parses a small JSON body and inserts one row through an ORM session, with
  the service's engine settings (pool pre-ping on);
- ``POST /thin``: the thinnest honest endpoint: a 3-field pydantic model, one pooled
  connection (no ORM session, no pre-ping) and one ``INSERT … ON CONFLICT DO NOTHING
  RETURNING``.

    BENCH_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/backinstock_bench \
        python bench/bare_app.py --port 8001
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI, status
from pydantic import BaseModel, Field
from sqlalchemy import Column, DateTime, MetaData, Table, Text, UniqueConstraint, Uuid
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

metadata = MetaData()
bare_rows = Table(
    "bare_rows",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("sku", Text, nullable=False),
    Column("contact", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
thin_rows = Table(
    "thin_rows",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("sku", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("contact", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("sku", "channel", "contact"),
)
# Same as backinstock.db.create_engine for PostgreSQL with the default pool size of 10.
engine = create_async_engine(
    os.environ["BENCH_DATABASE_URL"], pool_size=10, max_overflow=10, pool_pre_ping=True
)
sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
# The thin endpoint's pool: the same size, no pre-ping.
thin_engine = create_async_engine(
    os.environ["BENCH_DATABASE_URL"], pool_size=10, max_overflow=10, pool_pre_ping=False
)
THIN_INSERT = (
    insert(thin_rows)
    .on_conflict_do_nothing(index_elements=["sku", "channel", "contact"])
    .returning(thin_rows.c.id)
)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield
    await engine.dispose()
    await thin_engine.dispose()


app = FastAPI(lifespan=lifespan)


class RowIn(BaseModel):  # the subscribe body's other fields are ignored
    sku: str = Field(min_length=1, max_length=128)
    contact: str = Field(min_length=1, max_length=320)


@app.post("/bare", status_code=status.HTTP_201_CREATED)
async def create_row(payload: RowIn) -> dict[str, str]:
    row_id = uuid.uuid4()
    values = {"sku": payload.sku, "contact": payload.contact, "created_at": datetime.now(UTC)}
    async with sessions() as session:
        await session.execute(bare_rows.insert().values(id=row_id, **values))
        await session.commit()
    return {"id": str(row_id), "sku": payload.sku}


class ThinIn(BaseModel):  # the subscribe body's other fields are ignored
    sku: str = Field(min_length=1, max_length=128)
    channel: str = Field(min_length=1, max_length=16)
    contact: str = Field(min_length=1, max_length=320)


@app.post("/thin", status_code=status.HTTP_201_CREATED)
async def create_thin_row(payload: ThinIn) -> dict[str, str | None]:
    values = {**payload.model_dump(), "id": uuid.uuid4(), "created_at": datetime.now(UTC)}
    async with thin_engine.connect() as connection:
        row_id = await connection.scalar(THIN_INSERT, values)
        await connection.commit()
    return {"id": None if row_id is None else str(row_id), "sku": payload.sku}


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # As `backinstock serve`: one process, uvicorn's default loop/http (uvloop/httptools
    # when installed), no access log.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_config=None)
