"""Media vault: downloads inbound images, voice, video and files into media_dir soon after arrival.

WeCom keeps a callback's media_id for 3 days only (wecom-protocol.md §8.3), so every inbound media
message is fetched in the background, retried with backoff on transient errors, and stored as
`media_dir/<app>/<YYYY-MM>/<message id>-<safe name>`. A file is written under a temporary name and
renamed into place, so the final name never holds half a download.
"""
from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import re
import tempfile
import unicodedata
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Callable, Mapping, Optional

from wecomd.config import AppConfig, BotConfig, Config
from wecomd.live import message_event
from wecomd.store.media import media_id_of
from wecomd.store.times import utcnow
from wecomd.workers.base import RETRY_KINDS, Publish, RunDb, Worker, error_text, no_secret_error
from wecomd.wecom import bot as botproto
from wecomd.wecom.api import WecomApiError

logger = logging.getLogger(__name__)

BATCH = 20
BOT_MAX_BYTES = 100 * 2**20  # WeCom calls back bot files up to 100 MB (wecom-aibot.md §2)
MAX_NAME_BYTES = 150  # with "<id>-" well under the 255-byte limit of common file systems
# mimetypes' answers differ between Python versions and hosts; WeCom's usual types are fixed here.
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "audio/amr": ".amr",
              "voice/amr": ".amr", "audio/speex": ".speex", "video/mp4": ".mp4",
              "application/octet-stream": ".bin", "text/plain": ".txt"}
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
# The only stored types served inline: raster images, audio and video a browser plays itself.
# Anything else (SVG, HTML, XML, JavaScript, PDF, AMR voice, unknown) is served as an
# application/octet-stream attachment, so nothing a user sent can run in the dashboard's origin.
INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp",
                          "audio/mpeg", "audio/ogg", "audio/wav", "audio/mp4",
                          "video/mp4", "video/webm", "video/ogg"})
ATTACHMENT_TYPE = "application/octet-stream"
# Media responses replace the dashboard's policy: a sandboxed document that loads and runs nothing.
MEDIA_CSP = ("sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
             "frame-ancestors 'none'")


class MediaVault(Worker):
    """Fetches inbound media (image, voice, video, file) soon after arrival; WeCom keeps it for 3 days."""

    kind = "media"

    def __init__(self, run_db: RunDb, store, client, apps: Mapping[str, AppConfig], media_dir: Path,
                 publish: Publish, *, clock: Callable[[], datetime] = utcnow, poll_interval: float = 1.0,
                 max_attempts: int = 6, backoff_base: float = 2.0, backoff_max: float = 600.0,
                 max_bytes: int = 25 * 2**20, bots: Optional[Mapping[str, BotConfig]] = None,
                 bot_max_bytes: int = BOT_MAX_BYTES) -> None:
        super().__init__(run_db, publish, clock=clock, poll_interval=poll_interval,
                         max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max)
        self.store, self.client, self.apps = store, client, apps
        self.media_dir = Path(media_dir).absolute()
        self.max_bytes, self.bot_max_bytes = max_bytes, bot_max_bytes
        self.bots: Mapping[str, BotConfig] = bots or {}

    def reconfigure(self, config: Config) -> None:
        """A reload: the apps of `config` (their secrets), from the next download on; media_dir stays."""
        self.apps, self.bots = config.apps, config.bots

    def path_for(self, media: dict) -> Path:
        """The absolute path of a stored file; ValueError if its stored path leaves media_dir."""
        relative = (media or {}).get("path")
        if not relative:
            raise ValueError("no stored file")
        root = self.media_dir.resolve()
        path = (root / relative).resolve()
        if Path(relative).is_absolute() or root not in path.parents:
            raise ValueError("stored media path %r is outside media_dir" % (relative,))
        return path

    async def _pass(self) -> None:
        while not self._stopping:
            rows = await self.run_db(self.store.media.due, self.clock(), BATCH)
            for row in sorted(rows, key=lambda r: r["id"]):
                if self._stopping:
                    return
                await self._shielded(row["id"], self._fetch(row))
            if len(rows) < BATCH:
                return

    async def _fetch(self, row: dict) -> None:
        if row["app"] in self.bots:
            return await self._fetch_bot(row, self.bots[row["app"]])
        app = self.apps.get(row["app"])
        media_id = media_id_of(row.get("fields") or {})
        if app is None:
            return await self._fail(row, "app %r is no longer configured" % row["app"], None)
        if not app.secret:
            return await self._fail(row, no_secret_error(app.name, "download media"), None)
        if not media_id:
            return await self._fail(row, "the message has no MediaId", None)
        try:
            body, mime, filename = await self.client.download_media(app, media_id, max_bytes=self.max_bytes)
            name = safe_name(row, mime, filename)
            relative = self._relative_path(row, name)
            await asyncio.to_thread(write_atomically, self.media_dir / relative, body)
        except WecomApiError as exc:
            if exc.kind in RETRY_KINDS:
                return await self._attempt_failed(row, error_text(exc), exc.errcode)
            return await self._fail(row, error_text(exc, with_hint=True), exc.errcode)
        except Exception as exc:  # a disk error, or a client bug: keep the row, try later
            logger.warning("media id=%s app=%s: %s", row["id"], row["app"], type(exc).__name__,
                           exc_info=not isinstance(exc, OSError))
            return await self._attempt_failed(row, error_text(exc), None)
        mime = _bare_mime(mime)
        logger.info("media id=%s app=%s outcome=stored size=%d type=%s", row["id"], row["app"], len(body), mime)
        updated = await self.run_db(self.store.media.record, row["id"], "stored", path=relative,
                                    size=len(body), mime=mime, name=name)
        self._publish(message_event(updated))

    async def _fetch_bot(self, row: dict, bot: BotConfig) -> None:
        """A 智能机器人's image or file: its URL (valid 5 minutes) streamed to disk and decrypted with the
        bot's key as it arrives, never held in memory (files up to 100 MB)."""
        url = botproto.media_url(row.get("fields") or {})
        if not url:
            return await self._fail(row, "the bot message has no media URL", None)
        mime = "image/jpeg" if row.get("msgtype") in ("image", "mixed") else None
        temp = None
        try:
            temp, size, head, filename = await _download_decrypted(url, bot.encoding_aes_key, self.media_dir,
                                                                   self.bot_max_bytes)
            mime = _sniff(head) or mime or ATTACHMENT_TYPE
            name = safe_name(row, mime, filename)
            relative = self._relative_path(row, name)
            (self.media_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, self.media_dir / relative)
            temp = None
        except _TooLarge as exc:
            return await self._fail(row, str(exc), None)
        except ValueError as exc:  # the padding: not this bot's key, or not WeCom's bytes
            return await self._fail(row, "cannot decrypt the bot's media: %s" % exc, None)
        except Exception as exc:  # network or disk: again soon (the URL lives 5 minutes)
            logger.warning("media id=%s bot=%s: %s", row["id"], row["app"], exc)
            return await self._attempt_failed(row, error_text(exc), None)
        finally:
            if temp is not None:
                with suppress(OSError):
                    os.unlink(temp)
        logger.info("media id=%s bot=%s outcome=stored size=%d type=%s", row["id"], row["app"], size, mime)
        updated = await self.run_db(self.store.media.record, row["id"], "stored", path=relative,
                                    size=size, mime=mime, name=name)
        self._publish(message_event(updated))

    def _relative_path(self, row: dict, name: str) -> str:
        month = (row.get("received_at") or "")[:7]
        if not re.fullmatch(r"\d{4}-\d{2}", month):
            month = self.clock().strftime("%Y-%m")
        return "%s/%s/%d-%s" % (_clean(row["app"]) or "app", month, row["id"], name)

    async def _attempt_failed(self, row: dict, error: str, errcode: Optional[int]) -> None:
        attempts = int(row.get("attempts") or 0) + 1
        if attempts >= self.max_attempts:
            return await self._fail(row, "%s (gave up after %d attempts)" % (error, attempts), errcode)
        logger.warning("media id=%s app=%s outcome=retry attempt=%d errcode=%s",
                       row["id"], row["app"], attempts, errcode)
        updated = await self.run_db(self.store.media.record, row["id"], "pending", error=error,
                                    next_attempt_at=self._next_attempt(attempts))
        self._publish(message_event(updated))

    async def _fail(self, row: dict, error: str, errcode: Optional[int]) -> None:
        logger.warning("media id=%s app=%s outcome=failed errcode=%s", row["id"], row["app"], errcode)
        updated = await self.run_db(self.store.media.record, row["id"], "failed", error=error)
        self._publish(message_event(updated))


def safe_name(row: dict, mime: Optional[str], filename: Optional[str]) -> str:
    """A file name safe to join to a directory: FileName for files, else the download's, else made up.

    Path separators and control characters become "_", and the name is capped at MAX_NAME_BYTES
    of UTF-8, keeping its extension. Callers prefix "<id>-", so "." and ".." cannot result.
    """
    fields = row.get("fields") or {}
    for candidate in (fields.get("FileName") if row.get("msgtype") == "file" else None, filename):
        name = _clean(candidate)
        if name.strip("._ "):
            return _cap(name)
    return "%s%s" % (_clean(row.get("msgtype")) or "media", _extension(mime, fields.get("Format")))


def serving_type(mime: Optional[str]) -> tuple[str, bool]:
    """How a stored file is served: (Content-Type, inline?) from its stored type, never its name.

    Only INLINE_TYPES keep their type and are shown inline; every other type is sent as
    application/octet-stream, as an attachment.
    """
    bare = _bare_mime(mime)
    if bare in INLINE_TYPES:
        return bare, True
    return ATTACHMENT_TYPE, False


def write_atomically(path: Path, body: bytes) -> None:
    """Write `body` to a temporary file beside `path`, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=str(path.parent), prefix=".partial-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def _clean(name: Optional[str]) -> str:
    if not name:
        return ""
    name = unicodedata.normalize("NFC", str(name))
    return _UNSAFE.sub("_", name).strip()


def _cap(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode("utf-8")) > 16:
        stem, ext = name, ""
    while stem and len((stem + ext).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem + ext


def _bare_mime(mime: Optional[str]) -> str:
    return (mime or "application/octet-stream").split(";")[0].strip().lower() or "application/octet-stream"


def _extension(mime: Optional[str], voice_format: Optional[str]) -> str:
    bare = _bare_mime(mime)
    if bare in EXTENSIONS and bare != "application/octet-stream":
        return EXTENSIONS[bare]
    if voice_format and re.fullmatch(r"[A-Za-z0-9]{1,8}", str(voice_format)):
        return "." + str(voice_format).lower()
    return mimetypes.guess_extension(bare) or EXTENSIONS["application/octet-stream"]


class _TooLarge(Exception):
    """A bot's media past bot_max_bytes: not stored, not retried."""


_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"),
          (b"%PDF-", "application/pdf"), (b"PK\x03\x04", "application/zip"))


def _sniff(head: bytes) -> Optional[str]:
    """The type of decrypted media by its first bytes (the encrypted download has none of its own)."""
    return next((mime for magic, mime in _MAGIC if head.startswith(magic)), None)


async def _download_decrypted(url: str, aes_key: str, media_dir: Path, max_bytes: int) -> tuple:
    """Stream `url` into a temporary file in `media_dir`, decrypting each chunk as it arrives:
    (temp path, size, the first bytes, the file name the server gave or None)."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    media_dir.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=str(media_dir), prefix=".partial-bot-", suffix=".tmp")
    decryptor, state = botproto.MediaDecryptor(aes_key), {"size": 0, "head": b""}
    try:
        with os.fdopen(fd, "wb") as out:
            def write(plain: bytes) -> None:
                state["size"] += len(plain)
                if state["size"] > max_bytes:
                    state["too_large"] = True  # the client reports a callback's error as a closed connection
                    raise _TooLarge("the bot's media is larger than %d MB: not stored" % (max_bytes // 2**20))
                if len(state["head"]) < 16:
                    state["head"] += plain[:16]
                out.write(plain)

            # A client of its own: the shared one stops bodies at 100 MB, padding included.
            client = AsyncHTTPClient(force_instance=True, max_body_size=max_bytes + 1024)
            try:
                response = await client.fetch(HTTPRequest(
                    url, streaming_callback=lambda chunk: write(decryptor.feed(chunk)), request_timeout=120))
            except Exception:
                if state.get("too_large"):
                    raise _TooLarge("the bot's media is larger than %d MB: not stored" % (max_bytes // 2**20))
                raise
            finally:
                client.close()
            write(decryptor.finish())
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    disposition = response.headers.get("Content-Disposition", "")
    found = re.search(r'filename="?([^";]+)"?', disposition)
    name = found.group(1) if found else None
    if name:  # raw UTF-8 in the header reaches us as latin-1 text
        try:
            name = name.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return temp, state["size"], state["head"], name
