"""Persistence for OmniVOX Intake: SQLAlchemy models, sessions, blobs and migrations."""
