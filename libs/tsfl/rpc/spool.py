"""Every upload in flight, and partial uploads kept between broken streams so a device
resumes instead of resending.

An upload's buffer grows as its bytes arrive (a declared size reserves budget, not
memory: a device that declares 512 MiB and sends nothing holds nothing). Every upload —
resumable or not — counts against one global budget (``max_bytes``, by declared size),
each device holds at most ``per_device`` of them per job, and an upload untouched for
``ttl_s`` is dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tsfl.errors import TsflError


class SpoolError(TsflError):
    """An upload the spool cannot take; ``code`` names why."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@dataclass
class PartialUpload:
    job_id: str
    device: str
    upload_id: str
    total: int
    checksum: int
    buf: bytearray = field(default_factory=bytearray)
    received: int = 0
    touched: float = field(default_factory=time.monotonic)
    busy: bool = False  # a stream is writing into it

    def write(self, data: bytes) -> None:
        end = self.received + len(data)
        if end > self.total:
            raise SpoolError("too_long", "more data than the declared total size")
        self.buf += data  # writes always continue at ``received`` == len(buf)
        self.received = end
        self.touched = time.monotonic()

    @property
    def complete(self) -> bool:
        return self.received == self.total


class UploadSpool:
    def __init__(self, *, max_bytes: int = 4 * 1024**3, ttl_s: float = 120.0,
                 per_device: int = 2):
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.per_device = per_device
        self._uploads: dict[tuple[str, str, str], PartialUpload] = {}

    @property
    def held_bytes(self) -> int:
        return sum(u.total for u in self._uploads.values())

    def get(self, job_id: str, device: str, upload_id: str) -> PartialUpload | None:
        self.expire()
        return self._uploads.get((job_id, device, upload_id))

    def begin(self, job_id: str, device: str, upload_id: str, total: int, checksum: int,
              offset: int) -> PartialUpload:
        """The upload a stream continues at ``offset`` (a new one at 0)."""
        self.expire()
        key = (job_id, device, upload_id)
        upload = self._uploads.get(key)
        if upload is None:
            if offset != 0:
                raise SpoolError("resume", f"no partial upload {upload_id!r} held; start "
                                           "again at offset 0")
            mine = [k for k in self._uploads if k[:2] == (job_id, device)]
            for old in sorted(mine, key=lambda k: self._uploads[k].touched)[
                    :max(0, len(mine) - self.per_device + 1)]:
                if not self._uploads[old].busy:
                    del self._uploads[old]  # the device moved on: its oldest goes
            if self.held_bytes + total > self.max_bytes:
                raise SpoolError("busy", "the server holds too many partial uploads; "
                                         "retry later")
            upload = self._uploads[key] = PartialUpload(job_id, device, upload_id, total,
                                                        checksum)
        elif (upload.total, upload.checksum) != (total, checksum):
            raise SpoolError("mismatch", f"upload {upload_id!r} was begun with another size "
                                         "or checksum")
        elif upload.busy:
            raise SpoolError("busy", f"upload {upload_id!r} is being written by another "
                                     "stream")
        if offset != upload.received:
            raise SpoolError("resume", f"upload {upload_id!r} holds {upload.received} bytes; "
                                       f"resume at that offset, not {offset}")
        upload.busy = True
        upload.touched = time.monotonic()
        return upload

    def hold(self, job_id: str, device: str, total: int, checksum: int) -> PartialUpload:
        """A one-stream (not resumable) upload, counted in the same budgets; ``finish``
        it when the stream ends, whatever happened."""
        self.expire()
        mine = [k for k, u in self._uploads.items() if k[:2] == (job_id, device) and u.busy]
        if len(mine) >= self.per_device:
            raise SpoolError("busy", f"this device already has {len(mine)} uploads in "
                                     "flight")
        if self.held_bytes + total > self.max_bytes:
            raise SpoolError("busy", "the server holds too many uploads; retry later")
        upload = PartialUpload(job_id, device, f"\0{id(object())}:{time.monotonic_ns()}",
                               total, checksum, busy=True)
        self._uploads[(job_id, device, upload.upload_id)] = upload
        return upload

    def release(self, upload: PartialUpload) -> None:
        """A stream ended (broken or not): the partial upload stays for a resume."""
        upload.busy = False
        upload.touched = time.monotonic()

    def finish(self, upload: PartialUpload) -> None:
        self._uploads.pop((upload.job_id, upload.device, upload.upload_id), None)

    def expire(self) -> None:
        now = time.monotonic()
        for key, upload in list(self._uploads.items()):
            if not upload.busy and now - upload.touched > self.ttl_s:
                del self._uploads[key]
