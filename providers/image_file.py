"""An image file read once at start and kept in memory: the face LemonSlice animates, uploaded.

Only PNG and JPEG are accepted, recognised by their first bytes (not the file name). Nothing is
re-encoded: the bytes are sent as they are, with the type they have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ImageType = Literal["image/png", "image/jpeg"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A PNG's first chunk is always IHDR (length 13): a file that has the signature and not this is cut short.
_PNG_HEADER_CHUNK = b"\x00\x00\x00\x0dIHDR"
_JPEG_START = b"\xff\xd8\xff"
_SNIFF_LENGTH = len(_PNG_SIGNATURE) + len(_PNG_HEADER_CHUNK)
_EXTENSIONS: dict[ImageType, str] = {"image/png": "png", "image/jpeg": "jpg"}


class ImageFile(BaseModel):
    """A PNG or JPEG image's bytes, as read from `path` at start."""

    model_config = ConfigDict(frozen=True)

    path: Path
    content_type: ImageType
    data: bytes = Field(repr=False, min_length=1)

    @property
    def upload_name(self) -> str:
        """The file name sent with the upload (the local name says nothing the provider needs)."""
        return f"image.{_EXTENSIONS[self.content_type]}"


def image_type(head: bytes) -> ImageType | None:
    """The type of an image that starts with `head`, or None if it is not a PNG or JPEG."""
    if head.startswith(_PNG_SIGNATURE + _PNG_HEADER_CHUNK):
        return "image/png"
    if head.startswith(_JPEG_START):
        return "image/jpeg"
    return None


def read_image_file(path: str | Path) -> ImageFile:
    """Read a PNG or JPEG file whole; `ValueError` says what is wrong (never the file's content)."""
    path = Path(path).expanduser()
    where = "" if path.is_absolute() else f" (a relative path is read from {Path.cwd()})"
    try:
        with path.open("rb") as file:
            head = file.read(_SNIFF_LENGTH)
            if not head:
                raise ValueError("the file is empty")
            content_type = image_type(head)
            if content_type is None:
                raise ValueError(
                    "not a PNG or JPEG image (LemonSlice takes an uploaded face as one)"
                )
            data = head + file.read()
    except FileNotFoundError:
        raise ValueError(f"no such file{where}") from None
    except IsADirectoryError:
        raise ValueError("a directory, not an image file") from None
    except PermissionError:
        raise ValueError("cannot be read (permission denied)") from None
    except OSError as error:
        raise ValueError(f"cannot be read ({error.strerror or type(error).__name__})") from None
    return ImageFile(path=path, content_type=content_type, data=data)
