"""The app's services as the web edge reaches them (built and kept by ``create_app``)."""

from __future__ import annotations

from flask import current_app

from inference.service import InferenceService
from settings import Settings, settings_of


def inference_service() -> InferenceService:
    return current_app.extensions["inference"]


def tasks():
    """The app's queue entry points (``app.Tasks``): queue a study, a contact mail."""
    return current_app.extensions["tasks"]


def settings() -> Settings:
    return settings_of(current_app)
