"""Where the gallery keeps image files: a folder by default, any S3-compatible bucket by settings.

Both stores speak the same three calls (put, get, delete) on names like
``ab/abcdef…-0.png``; the web app serves files through its own visibility check,
so neither store is ever exposed directly.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from ponybot.errors import ConfigError
from ponybot.images import ImageLimits, open_image
from ponybot.preflight import writable_folder
from ponybot.settings import GallerySettings

THUMB_SIDE = 384
#: A result a worker wrote is at most 2048x2048 (the bound of limits.max_upscale_pixels): these are the
#: uploads' default limits, far above it, and far below what a forged entry could claim.
RESULT_LIMITS = ImageLimits(max_pixels=4096 * 4096, max_side=8192)
CONTENT_TYPES = {".png": "image/png", ".webp": "image/webp"}


class ImageStore(Protocol):
    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes | None: ...
    def delete(self, name: str) -> None: ...


class FolderStore:
    """Files under one folder; writes go through a temporary file and a rename (never half a file)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"image name outside the store: {name!r}")
        return path

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, path)

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


class S3Store:
    """Objects in an S3-compatible bucket (AWS, MinIO, R2…); credentials from the AWS_* environment."""

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data,
                               ContentType=CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"))

    def get(self, name: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
        except self.client.exceptions.NoSuchKey:
            return None
        body: bytes = response["Body"].read()
        return body

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + name)


def build_store(settings: GallerySettings) -> ImageStore:
    if settings.store == "s3":
        if not settings.s3_bucket:
            raise ConfigError("gallery.store is s3, so gallery.s3_bucket must be set")
        return S3Store(settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url,
                       region=settings.s3_region)
    return FolderStore(writable_folder(settings.store_dir, "gallery.store_dir"))


def file_names(job_id: str, index: int) -> tuple[str, str]:
    """The original PNG's and the WebP thumbnail's names of one image."""
    stem = f"{job_id[:2]}/{job_id}-{index}"
    return f"{stem}.png", f"{stem}.webp"


def read_result(png: bytes, side: int = THUMB_SIDE) -> tuple[bytes, str]:
    """A WebP thumbnail at most ``side`` pixels on its longer side, and the A1111 ``parameters`` text the
    worker wrote into the PNG ('' when absent); ImageRefusal when it is no picture that may be opened."""
    image = open_image(png, RESULT_LIMITS)
    text = image.info.get("parameters", "")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=80, method=4)
    return out.getvalue(), text if isinstance(text, str) else ""
