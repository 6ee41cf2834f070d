"""What routes get from the application: its settings and its session factory."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from worker.settings import Settings


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def app_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


AppSettings = Annotated[Settings, Depends(app_settings)]
Sessions = Annotated[sessionmaker[Session], Depends(app_sessions)]
