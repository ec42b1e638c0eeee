"""Limits of the accounts module."""

import re
import uuid

NAME_MIN_LENGTH = 3
NAME_MAX_LENGTH = 32
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")
PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024
USER_AGENT_MAX_LENGTH = 512
SIGN_IN_FAILED = "Wrong name or password."
SESSION_REVOKED = "revoked"
SESSION_REFRESHED = "refreshed"


def session_channel(session_id: uuid.UUID) -> str:
    """The pub/sub channel on which a session's sign-out and refresh are announced."""
    return f"session:{session_id}"


# Every instance's session cache listens here for sessions signed out or refreshed anywhere.
SESSIONS_CHANNEL = "sessions"
