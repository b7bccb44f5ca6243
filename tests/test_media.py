"""MediaVault: inbound media fetched from the sandbox WeCom into media_dir, with a real Store and client."""
from __future__ import annotations

import asyncio
import itertools
import os
import urllib.parse

import pytest

from support.aio import async_test
from support.base import WecomdTestCase
from support.harness import APPS, WecomHarness
from support.peer import CORP_ID
from wecomd.wecom import samples
from wecomd.workers import media as mediamod
from wecomd.workers.media import MediaVault
from wecomd.wecom.messages import Message
from wecomd.wecom.sandbox import sample_amr, sample_png
from wecomd.wecom.api import MEDIA_GET

_keys = itertools.count(1)


class MediaHarness(WecomHarness):
    def vault(self, start: bool = True, **options) -> MediaVault:
        settings = dict(clock=self.clock, poll_interval=0.05, backoff_base=2.0, **options)
        vault = MediaVault(self.db, self.store, self.client, APPS, self.tmp_path / "media",
                           self.events.append, **settings)
        self.workers.append(vault)
        if start:
            vault.start()
        return vault

    async def receive(self, msgtype: str, media_id: str, app: str = "helpdesk", **fields) -> dict:
        """Store an inbound media message as the callback handler would."""
        fields = {"ToUserName": "ww0123", "FromUserName": "zhangsan", "MsgType": msgtype,
                  "MediaId": media_id, **fields}
        message = Message(msgtype=msgtype, from_user="zhangsan", to_user="ww0123", agent_id="1000002",
                          create_time=1764370000, msg_id=str(next(_keys)), fields=fields)
        row, _ = await self.db(self.store.messages.save_inbound, app, message, "key-%d" % next(_keys))
        assert row["media"]["status"] == "pending"
        return row

    async def until_media(self, message_id: int, status: str, attempts=None) -> dict:
        async def check():
            row = await self.row(message_id)
            if row["media"]["status"] == status and (attempts is None or row["attempts"] == attempts):
                return row
        return await self.until(check)

    def files(self) -> list:
        root = self.tmp_path / "media"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@async_test
async def test_image_is_stored_with_its_bytes_size_and_type(tmp_path):
    body = sample_png()
    async with MediaHarness(tmp_path) as h:
        row = await h.receive("image", h.fake.add_media(body, "image/png", "photo.png"))
        vault = h.vault()
        stored = await h.until_media(row["id"], "stored")
        assert stored["media"] == {"status": "stored", "size": len(body), "type": "image/png",
                                   "name": "photo.png", "error": None}
        media = await h.db(h.store.media.get, row["id"])
        assert media["path"] == "helpdesk/%s/%d-photo.png" % (row["received_at"][:7], row["id"])
        path = vault.path_for(media)
        assert path == (tmp_path / "media" / media["path"]).resolve()
        assert path.read_bytes() == body
        assert h.files() == [media["path"]]  # no temporary file left beside it
        assert h.events == [{"type": "message", "message": stored}]


@async_test
async def test_file_keeps_its_file_name(tmp_path):
    async with MediaHarness(tmp_path) as h:
        media_id = h.fake.add_media(b"%PDF-1.4 quarterly", "application/pdf", "download.pdf")
        row = await h.receive("file", media_id, FileName="2026 第四季度报告.pdf", FileSize="18")
        vault = h.vault()
        stored = await h.until_media(row["id"], "stored")
        assert stored["media"]["name"] == "2026 第四季度报告.pdf"
        media = await h.db(h.store.media.get, row["id"])
        assert media["path"].endswith("/%d-2026 第四季度报告.pdf" % row["id"])
        assert vault.path_for(media).read_bytes() == b"%PDF-1.4 quarterly"


@async_test
async def test_voice_without_a_download_name_is_named_from_its_type(tmp_path):
    async with MediaHarness(tmp_path) as h:
        row = await h.receive("voice", h.fake.add_media(sample_amr(), "audio/amr", ""), Format="amr")
        h.vault()
        stored = await h.until_media(row["id"], "stored")
        assert (stored["media"]["name"], stored["media"]["type"]) == ("voice.amr", "audio/amr")


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "..\\..\\boot.ini", "a\x00b/../c.txt",
                                     "/abs/path.txt", "\r\nSet-Cookie: x.txt", "..", "长" * 200 + ".pdf"])
@async_test
async def test_hostile_file_names_stay_inside_media_dir(tmp_path, hostile):
    async with MediaHarness(tmp_path) as h:
        row = await h.receive("file", h.fake.add_media(b"payload", "application/pdf", "x.pdf"),
                              FileName=hostile)
        vault = h.vault()
        stored = await h.until_media(row["id"], "stored")
        name = stored["media"]["name"]
        assert not any(c in name for c in "/\\\x00\r\n") and name not in ("", ".", "..")
        assert len(name.encode("utf-8")) <= mediamod.MAX_NAME_BYTES
        media = await h.db(h.store.media.get, row["id"])
        path = vault.path_for(media)
        assert (tmp_path / "media").resolve() in path.parents
        assert path.parent == (tmp_path / "media" / "helpdesk" / row["received_at"][:7]).resolve()
        assert path.read_bytes() == b"payload"
        if hostile.endswith(".pdf"):
            assert name.endswith(".pdf")


def test_path_for_refuses_paths_outside_media_dir(tmp_path):
    vault = MediaVault(None, None, None, APPS, tmp_path / "media", lambda event: None)
    for bad in ("../outside.txt", "helpdesk/../../outside.txt", str(tmp_path / "abs.txt"), "", None):
        with pytest.raises(ValueError):
            vault.path_for({"path": bad})
    assert vault.path_for({"path": "helpdesk/2026-11/1-a.png"}) == \
        (tmp_path / "media" / "helpdesk" / "2026-11" / "1-a.png").resolve()


@async_test
async def test_expired_media_fails_with_the_error(tmp_path):
    async with MediaHarness(tmp_path) as h:
        row = await h.receive("image", "expired-media-id")  # the fake answers 40007 as JSON with HTTP 200
        h.vault()
        failed = await h.until_media(row["id"], "failed")
        assert failed["media"]["error"].startswith("errcode 40007: invalid media_id")
        assert "3 days" in failed["media"]["error"]
        assert h.files() == []
        assert h.events[-1] == {"type": "message", "message": failed}


@async_test
async def test_busy_is_retried_then_stored(tmp_path):
    async with MediaHarness(tmp_path) as h:
        h.fake.fail_next(MEDIA_GET, -1)
        row = await h.receive("image", h.fake.add_media(sample_png(), "image/png", "a.png"))
        vault = h.vault()
        pending = await h.until_media(row["id"], "pending", attempts=1)
        assert pending["media"]["error"].startswith("errcode -1:")
        assert h.files() == []
        h.clock.advance(2)
        vault.wake()
        stored = await h.until_media(row["id"], "stored")
        assert stored["media"]["error"] is None and stored["attempts"] == 1


@async_test
async def test_repeated_failures_give_up_after_max_attempts(tmp_path):
    async with MediaHarness(tmp_path) as h:
        h.fake.fail_next(MEDIA_GET, 0, times=10, http_status=502)
        row = await h.receive("video", h.fake.add_media(b"\x00\x00\x00\x18ftypmp42", "video/mp4", "v.mp4"))
        vault = h.vault(max_attempts=2)
        await h.until_media(row["id"], "pending", attempts=1)
        h.clock.advance(600)
        vault.wake()
        failed = await h.until_media(row["id"], "failed")
        assert "HTTP 502" in failed["media"]["error"] and "after 2 attempts" in failed["media"]["error"]
        assert h.files() == []


@async_test
async def test_app_without_secret_fails_naming_the_option(tmp_path):
    async with MediaHarness(tmp_path) as h:
        row = await h.receive("image", h.fake.add_media(sample_png(), "image/png", "a.png"), app="nosecret")
        h.vault()
        failed = await h.until_media(row["id"], "failed")
        assert "[app:nosecret] secret" in failed["media"]["error"]
        assert h.fake.calls == []


@async_test
async def test_media_over_the_size_limit_fails_without_a_file(tmp_path):
    async with MediaHarness(tmp_path) as h:
        row = await h.receive("file", h.fake.add_media(b"x" * 5000, "application/zip", "big.zip"),
                              FileName="big.zip")
        h.vault(max_bytes=1000)
        failed = await h.until_media(row["id"], "failed")
        assert "larger than 1000 bytes" in failed["media"]["error"]
        assert h.files() == []


@async_test
async def test_a_failed_write_leaves_no_file_and_is_retried(tmp_path, monkeypatch):
    real_fsync, failures = os.fsync, []

    def failing_fsync(fd):
        if not failures:
            failures.append(fd)
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(mediamod.os, "fsync", failing_fsync)
    async with MediaHarness(tmp_path) as h:
        body = sample_png()
        row = await h.receive("image", h.fake.add_media(body, "image/png", "a.png"))
        vault = h.vault()
        pending = await h.until_media(row["id"], "pending", attempts=1)
        assert "No space left on device" in pending["media"]["error"]
        assert h.files() == []  # neither the final name nor the temporary file
        h.clock.advance(2)
        vault.wake()
        await h.until_media(row["id"], "stored")
        media = await h.db(h.store.media.get, row["id"])
        assert h.files() == [media["path"]] and vault.path_for(media).read_bytes() == body


@async_test
async def test_stop_lets_the_download_in_flight_finish(tmp_path):
    async with MediaHarness(tmp_path) as h:
        gate, entered = asyncio.Event(), asyncio.Event()
        real = h.client.download_media

        async def slow_download(*args, **kwargs):
            entered.set()
            await gate.wait()
            return await real(*args, **kwargs)

        h.client.download_media = slow_download
        row = await h.receive("image", h.fake.add_media(sample_png(), "image/png", "a.png"))
        vault = h.vault()
        await entered.wait()
        stopping = asyncio.ensure_future(vault.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()
        gate.set()
        await stopping
        assert (await h.row(row["id"]))["media"]["status"] == "stored"


# ------------------------------------------------------------------ serving stored media over HTTP

SERVED = [  # (stored type, name, kind, expected Content-Type, inline?)
    ("image/png", "photo.png", "image", "image/png", True),
    ("image/jpeg", "photo.jpg", "image", "image/jpeg", True),
    ("image/gif", "a.gif", "image", "image/gif", True),
    ("image/webp", "a.webp", "image", "image/webp", True),
    ("audio/mpeg", "a.mp3", "voice", "audio/mpeg", True),
    ("audio/ogg", "a.ogg", "voice", "audio/ogg", True),
    ("video/mp4", "a.mp4", "video", "video/mp4", True),
    ("video/webm", "a.webm", "video", "video/webm", True),
    # Browsers cannot play AMR: a download, like every type off the allow-list.
    ("audio/amr", "sample.amr", "voice", "application/octet-stream", False),
    ("image/svg+xml", "report.svg", "image", "application/octet-stream", False),
    ("text/html; charset=utf-8", "page.html", "file", "application/octet-stream", False),
    ("application/xhtml+xml", "page.xhtml", "file", "application/octet-stream", False),
    ("application/xml", "data.xml", "file", "application/octet-stream", False),
    ("text/xml", "data.xml", "file", "application/octet-stream", False),
    ("application/javascript", "evil.js", "file", "application/octet-stream", False),
    ("text/javascript", "evil.mjs", "file", "application/octet-stream", False),
    ("application/pdf", "报告.pdf", "file", "application/octet-stream", False),
    ("application/x-unheard-of", "blob.bin", "file", "application/octet-stream", False),
    ("", "noname", "file", "application/octet-stream", False),
    # The type decides, never the name: an image named .html is an image, HTML named .png is not.
    ("image/png", "evil.html", "image", "image/png", True),
    ("text/html", "photo.png", "image", "application/octet-stream", False),
    ("IMAGE/PNG; q=1", "caps.png", "image", "image/png", True),
]


@pytest.mark.parametrize("stored, expected, inline", [(s, e, i) for s, _, _, e, i in SERVED])
def test_serving_type_allows_only_raster_images_audio_and_video_inline(stored, expected, inline):
    assert mediamod.serving_type(stored) == (expected, inline)


class MediaServingTest(WecomdTestCase):
    """GET /api/media/ID against the real app, for each class of stored type."""

    def stored(self, body: bytes, content_type: str, filename: str, kind: str) -> dict:
        media_id = self.fake.add_media(body, content_type, filename)
        self.callback(samples.build(kind, corp_id=CORP_ID, agent_id="1000002", from_user="mallory",
                                     media_id=media_id))

        def done():
            rows = self.api("/api/messages", user="mallory")[1]["messages"]
            return next((r for r in rows if (r.get("fields") or {}).get("MediaId") == media_id
                         and (r.get("media") or {}).get("status") == "stored"), None)
        return self.wait_for(done)

    def test_each_type_class_gets_its_type_disposition_and_sandbox(self):
        for stored, name, kind, expected, inline in SERVED:
            with self.subTest(stored=stored, name=name):
                body = ("<svg onload=alert(1)>%s</svg>" % name).encode()
                row = self.stored(body, stored or "application/octet-stream", name, kind)
                resp = self.fetch("/api/media/%d" % row["id"], headers=self.session())
                self.assertEqual(resp.code, 200)
                self.assertEqual(resp.body, body)
                self.assertEqual(resp.headers["Content-Type"], expected)
                disposition = resp.headers["Content-Disposition"]
                self.assertEqual(disposition.split(";")[0], "inline" if inline else "attachment")
                self.assertIn("filename*=UTF-8''%s" % urllib.parse.quote(row["media"]["name"], safe=""),
                              disposition)
                self.assertEqual(resp.headers.get_list("X-Content-Type-Options"), ["nosniff"])
                policy = resp.headers.get_list("Content-Security-Policy")
                self.assertEqual(len(policy), 1)
                self.assertEqual(policy[0].split(";")[0], "sandbox")
                self.assertIn("default-src 'none'", policy[0])
                self.assertNotIn("script-src", policy[0])
