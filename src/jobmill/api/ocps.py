"""The OCPS Job Manager protocol (placeholder until implemented)."""

from __future__ import annotations

from fastapi import APIRouter


def make_router(basepath: str) -> APIRouter:
    return APIRouter(prefix=basepath, tags=["ocps"])
