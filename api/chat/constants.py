"""Limits and names of the chat module."""

import re
import uuid

DIRECT = "direct"
GROUP = "group"

# Roles in a group room, highest first.
OWNER = "OWNER"
ADMIN = "ADMIN"
MEMBER = "MEMBER"
ROLE_RANK = {OWNER: 3, ADMIN: 2, MEMBER: 1}

MAX_ROOM_MEMBERS = 1000
# createRoom names up to this many others (the contract: 1 to 99).
MAX_CREATE_MEMBERS = 99
ROOM_NAME_MAX_LENGTH = 100
EMOJI_MAX_LENGTH = 32
# Distinct reactions one user may have on one message.
MAX_REACTIONS_PER_USER = 20

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
DEFAULT_ROOMS_PAGE_SIZE = 20
# Backlogs (resume, gap fill, resync) are read in chunks so memory stays bounded.
BACKLOG_CHUNK = 500

MESSAGE_TYPE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.+/-]{0,31}")  # used with fullmatch
CLIENT_MESSAGE_ID_MAX_LENGTH = 64


def room_channel(room_id: uuid.UUID) -> str:
    """The pub/sub channel of a room's messages."""
    return f"room:{room_id}"


def user_channel(user_id: uuid.UUID) -> str:
    """The pub/sub channel of every message in any room of a user (the inbox)."""
    return f"user:{user_id}"
