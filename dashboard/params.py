"""Bounded request parameters, so out-of-range input is a 422 instead of a database error (500).

Row ids are 32-bit INTEGER columns on PostgreSQL and 64-bit on SQLite; anything larger than the
smaller of the two cannot name a row and must not reach the query.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_ROW_ID = 2**31 - 1
MAX_OFFSET = 2**31 - 1
MAX_TEXT = 64

StudyId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="study row id")]
ResultId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="result row id")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]

