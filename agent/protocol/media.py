"""The protocol's media part: ISOs and images put into a directory pool, uploaded through the
console in resumable pieces or fetched by the agent from a URL.

Re-exported by agent.protocol: import these from there.

An upload (or fetch) is named by an id the console chooses, so every call is safe to repeat: a
create with the same id, name and length answers the upload as it stands; a piece sent at an
offset other than the upload's current one is refused with that offset (the console resumes
from there).
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from agent.protocol.base import _Strict
from agent.protocol.storage import VOLUME_NAME

UPLOAD_ID = r"^[0-9a-f]{32}$"  # a uuid4's hex, chosen by the console
MAX_UPLOAD_BYTES = 4 * 1024**4  # 4 TiB
DEFAULT_FETCH_MAX_BYTES = 64 * 1024**3
FETCH_SCHEMES = ("http", "https", "ftp")
UploadState = Literal["uploading", "fetching", "complete", "failed"]

UploadId = Annotated[str, Field(pattern=UPLOAD_ID)]
UploadName = Annotated[str, Field(pattern=VOLUME_NAME)]  # the volume's name once complete


class UploadCreateRequest(_Strict):
    """Begin an upload of `length` bytes that becomes volume `name` of the pool once whole."""

    id: UploadId
    name: UploadName
    length: Annotated[int, Field(ge=1, le=MAX_UPLOAD_BYTES)]


class FetchRequest(_Strict):
    """The agent downloads `url` itself into volume `name` (refusing the destinations a network
    install refuses); at most `max_bytes`; with `sha256`, bytes that do not match are removed and
    the fetch fails."""

    id: UploadId
    name: UploadName
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    max_bytes: Annotated[int, Field(ge=1, le=MAX_UPLOAD_BYTES)] = DEFAULT_FETCH_MAX_BYTES
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise ValueError("must not contain spaces or control characters")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError for a port that is no number
        except ValueError as err:
            raise ValueError("must be a valid URL") from err
        if parts.scheme.lower() not in FETCH_SCHEMES or not parts.hostname:
            raise ValueError("must be an http://, https:// or ftp:// URL")
        return value


class UploadStatus(BaseModel):
    """An upload or fetch as it stands. `offset` is how many bytes are written (the next piece
    starts there); once `complete`, the volume is at `path` and `sha256` is its digest."""

    id: str
    pool: str
    name: str
    length: int | None  # None for a fetch whose size is not known yet
    offset: int
    state: UploadState
    sha256: str | None = None
    path: str | None = None
    source_url: str | None = None  # fetches: the URL, without credentials or query
    error: str | None = None  # failed fetches: why, for people
    rate_bytes_per_s: float | None = None  # fetches: the recent rate
    updated_at: float  # unix time of the last write
