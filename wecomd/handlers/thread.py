"""The thread panel's routes (its view: static/thread.js): a conversation's messages (the
conversations panel's search too), manual replies (text, markdown, cards, files) and their retries
and recalls, media, resuming automation."""
from __future__ import annotations

import re
from typing import Any, Optional
from urllib.parse import quote

from tornado import httputil, web

from wecomd.handlers.args import ID, int_arg, message_filters
from wecomd.handlers.base import ApiHandler
from wecomd.wecom import outbound
from wecomd.wecom.errcodes import WecomApiError
from wecomd.workers.base import error_text
from wecomd.workers.media import MEDIA_CSP, serving_type

# A multipart reply: the largest file WeCom takes (20 MB) and room for the form's other fields.
MULTIPART_MAX = outbound.LARGEST_UPLOAD + 64 * 1024
_DIGITS = re.compile(r"[0-9]{1,20}\Z")
PAYLOAD_TYPES = ("markdown", "textcard", "news")


@web.stream_request_body
class MessagesHandler(ApiHandler):
    """GET a page of messages; POST a reply: JSON (text, markdown, textcard, news) or
    multipart/form-data with a file in field `media` (image, voice, video, file).

    The body is streamed so that a file may be larger than the server's default body limit, which
    is raised for a multipart POST only; WeCom's limits are checked before anything is stored or sent.
    """

    async def prepare(self) -> None:
        self._chunks: list[bytes] = []
        self._size, self._limit = 0, None  # None: the server's own limit (a JSON body)
        result = super().prepare()  # authentication first: nobody uploads 20 MB unasked
        if result is not None:
            await result
        if self.request.method != "POST" or not self._is_multipart():
            return
        self._limit = MULTIPART_MAX
        declared = self.request.headers.get("Content-Length", "")
        if _DIGITS.match(declared) and int(declared) > MULTIPART_MAX:
            # Answered before the body is read (the connection then closes): no outer limit to trip.
            self.request.connection.set_max_body_size(int(declared))
            raise web.HTTPError(413, "%s", _TOO_LARGE)
        # An outer bound for chunked bodies, above ours: data_received answers 413 at MULTIPART_MAX.
        self.request.connection.set_max_body_size(2 * MULTIPART_MAX)

    def _is_multipart(self) -> bool:
        return self.request.headers.get("Content-Type", "").lower().startswith("multipart/form-data")

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._size += len(chunk)
        if self._limit is None or self._size <= self._limit:
            self._chunks.append(chunk)
            return
        # A chunked body past the limit: 413 now, before the connection's own bound cuts it unanswered.
        self._chunks = []
        error = web.HTTPError(413, "%s", _TOO_LARGE)
        self.send_error(413, exc_info=(web.HTTPError, error, None))

    def on_connection_close(self) -> None:
        super().on_connection_close()
        # BaseHandler's skips RequestHandler's, which ends _execute's wait for a streamed body.
        web.RequestHandler.on_connection_close(self)

    async def get(self) -> None:
        filters = message_filters(self)
        rows, cursor = await self.services.read(
            self.services.store.messages.page, before=int_arg(self, "before"), limit=int_arg(self, "limit") or 50, **filters
        )
        rows = await self.services.bots.annotate_messages(rows)
        rows = await self.services.kf.annotate(await self.services.directory.annotate(rows))
        await self.write_page("messages", rows, cursor)

    async def post(self) -> None:
        if self._limit is not None and self._size > self._limit:
            raise web.HTTPError(413, "%s", _TOO_LARGE)
        self.request.body, self._chunks = b"".join(self._chunks), []
        if self._is_multipart():
            return await self._post_file()
        body = self.json_body()
        msgtype = body.get("msgtype", "text")
        if msgtype in outbound.UPLOAD_TYPES:
            raise web.HTTPError(400, "JSON carries text, markdown, textcard or news: send a %s as "
                                     "multipart/form-data with the file in field media", msgtype)
        if msgtype != "text" and msgtype not in PAYLOAD_TYPES:
            raise web.HTTPError(400, "msgtype must be text, markdown, textcard or news (or a file as "
                                     "multipart/form-data), not %r", msgtype)
        bot = self.services.bots.bot(body.get("app")) if isinstance(body.get("app"), str) else None
        if bot is not None:
            return await self._post_bot(bot, body, msgtype)
        app, to_user = self._target(body.get("app"), body.get("to_user"))
        if msgtype != "text":
            return await self._post_payload(app, to_user, msgtype, body)
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            raise web.HTTPError(400, "content is required")
        rows = await self.services.outbox.submit(app, to_user, content, operator=self.current_user)
        first = dict(rows[0])
        if len(rows) > 1:
            first["parts"] = [row["id"] for row in rows]
        await self._replied(app, to_user, rows, first)

    async def _post_bot(self, bot: Any, body: dict, msgtype: str) -> None:
        """A reply in a 智能机器人 conversation: text or markdown, through a response_url (409 when
        there is no unused one: WeCom allows one answer per message, within an hour)."""
        self.check_app(bot.name)
        to_user, content = body.get("to_user"), body.get("content")
        if msgtype not in ("text", "markdown"):
            raise web.HTTPError(400, "a bot conversation takes text or markdown, not %r", msgtype)
        if not isinstance(to_user, str) or not to_user.strip() or not isinstance(content, str) or not content.strip():
            raise web.HTTPError(400, "to_user and content are required")
        try:
            row = await self.services.bots.reply(bot, to_user.strip(), content, self.current_user)
        except ValueError as exc:  # bots.ReplyRefused
            raise web.HTTPError(409, "%s", exc)
        await self.audit("reply", "conversation:%s/%s" % (bot.name, to_user.strip()), dict(message_ids=[row["id"]]))
        self.write_json(row, status=201)

    async def _post_payload(self, app: str, to_user: str, msgtype: str, body: dict) -> None:
        try:
            if msgtype == "markdown":
                payload = outbound.markdown(body.get("content"))
            else:
                payload = getattr(outbound, msgtype)(body.get(msgtype))
        except outbound.PayloadError as exc:
            raise web.HTTPError(400, "%s", exc)
        row = await self.services.outbox.submit_payload(app, to_user, msgtype, payload, operator=self.current_user)
        await self._replied(app, to_user, [row], row)

    async def _post_file(self) -> None:
        arguments: dict = {}
        files: dict = {}
        httputil.parse_body_arguments(self.request.headers.get("Content-Type", ""), self.request.body,
                                      arguments, files, headers=self.request.headers)
        self.request.body = b""
        field = _FormFields(arguments)
        app, to_user = self._target(field("app"), field("to_user"))
        msgtype = field("msgtype") or "file"
        if msgtype not in outbound.UPLOAD_TYPES:
            raise web.HTTPError(400, "msgtype must be one of %s for a file, not %r",
                                ", ".join(outbound.UPLOAD_TYPES), msgtype)
        uploads = files.get("media") or []
        if len(uploads) != 1:
            raise web.HTTPError(400, "send exactly one file in the form field media")
        details = {key: field(key) for key in ("title", "description") if msgtype == "video" and field(key)}
        try:
            row = await self.services.outbox.submit_file(app, to_user, msgtype, uploads[0].body,
                                                         uploads[0].filename, operator=self.current_user,
                                                         details=details)
        except outbound.UploadRefused as exc:
            raise web.HTTPError(413, "%s", exc)
        except ValueError as exc:
            raise web.HTTPError(400, "%s", exc)
        await self._replied(app, to_user, [row], row)

    def _target(self, app: Any, to_user: Any) -> tuple[str, str]:
        """The app (known, and visible to this account) and the recipient of a reply; else 400/403."""
        if not isinstance(app, str) or self.services.app(app) is None:
            raise web.HTTPError(400, "unknown app %r", app)
        self.check_app(app)
        if not isinstance(to_user, str) or not to_user.strip():
            raise web.HTTPError(400, "to_user is required")
        return app, to_user.strip()

    async def _replied(self, app: str, to_user: str, rows: list, answer: dict) -> None:
        # Human takeover: automation leaves this user to the operator for a while.
        until = await self.services.takeover.operator_replied(app, to_user, self.current_user)
        target = "conversation:%s/%s" % (app, to_user)
        await self.audit("reply", target, dict(message_ids=[row["id"] for row in rows]))
        if until is not None:
            await self.audit("takeover", target, dict(until=until.strftime("%Y-%m-%dT%H:%M:%SZ")))
        self.write_json(answer, status=201)


_TOO_LARGE = ("the file is too large: WeCom takes at most %d MB (a file; an image or a video 10 MB, "
              "a voice message 2 MB)" % (outbound.LARGEST_UPLOAD // outbound.MB))


class _FormFields:
    """A multipart form's text fields, as UTF-8 (400 otherwise)."""

    def __init__(self, arguments: dict) -> None:
        self.arguments = arguments

    def __call__(self, name: str) -> Optional[str]:
        values = self.arguments.get(name) or []
        if not values:
            return None
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise web.HTTPError(400, "form field %s is not UTF-8", name)


class MessageHandler(ApiHandler):
    async def get(self, message_id: str) -> None:
        row = await self.services.read(self.services.store.messages.get, int(message_id))
        if row is None:
            raise web.HTTPError(404, "no message %s", message_id)
        self.check_app(row["app"])
        self.write_json((await self.services.directory.annotate([row]))[0])


class RetryHandler(ApiHandler):
    async def post(self, message_id: str) -> None:
        if self.identity.apps is not None:  # an account limited to some apps retries only theirs
            row = await self.services.read(self.services.store.messages.get, int(message_id))
            if row is not None:
                self.check_app(row["app"])
        try:
            row = await self.services.outbox.retry(int(message_id))
        except KeyError:
            raise web.HTTPError(404, "no outbound message %s", message_id)
        except ValueError as exc:
            raise web.HTTPError(409, "%s", exc)
        await self.audit("retry", "message:%s" % message_id)
        self.write_json(row)


class RecallHandler(ApiHandler):
    """Take back a message sent within the last 24 hours (WeCom's message/recall)."""

    async def post(self, message_id: str) -> None:
        row = await self.services.read(self.services.store.messages.get, int(message_id))
        if row is not None:
            self.check_app(row["app"])
        try:
            row = await self.services.outbox.recall(int(message_id))
        except KeyError:
            raise web.HTTPError(404, "no outbound message %s", message_id)
        except ValueError as exc:
            raise web.HTTPError(409, "%s", exc)
        except WecomApiError as exc:
            # WeCom's own words: the operator sees why (this answer is not a server fault, so no 500).
            return self.write_json({"error": "WeCom refused the recall: %s" % error_text(exc, with_hint=True)},
                                   status=502)
        await self.audit("recall", "message:%s" % message_id, {"msgid": row["msg_id"]})
        self.write_json(row)


class MediaHandler(ApiHandler):
    async def get(self, message_id: str) -> None:
        if self.identity.apps is not None:  # an account limited to some apps sees only their media
            row = await self.services.read(self.services.store.messages.get, int(message_id))
            if row is not None:
                self.check_app(row["app"])
        media = await self.services.read(self.services.store.media.get, int(message_id))
        if not media or media.get("status") != "stored":
            raise web.HTTPError(404, "no downloaded media for message %s (%s)", message_id,
                                (media or {}).get("status") or "none")
        path = self.services.media.path_for(media)
        # Only allow-listed raster images, audio and video are shown; the rest is a download.
        mime, inline = serving_type(media.get("type"))
        self.set_header("Content-Type", mime)
        self.set_header("Content-Disposition", _disposition(inline, media, message_id))
        self.set_header("Content-Security-Policy", MEDIA_CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "private, max-age=86400")
        await self.stream_file(str(path))


class IdOutOfRangeHandler(ApiHandler):
    """/api/messages/N, /api/messages/N/retry, …/recall and /api/media/N with an N of 19 or more digits."""

    role = "viewer"  # it only ever answers 400

    def _refuse(self, *args: str) -> None:
        raise web.HTTPError(400, "a message id has at most 18 digits")

    get = post = _refuse


class ResumeHandler(ApiHandler):
    """The thread's "resume now" button: automation answers this user again at once."""

    async def post(self) -> None:
        body = self.json_body()
        app, user = body.get("app"), body.get("user")
        if not isinstance(app, str) or not isinstance(user, str) or not user:
            raise web.HTTPError(400, "send {\"app\": str, \"user\": str}")
        self.check_app(app)
        await self.services.takeover.resume(app, user)
        await self.audit("resume", "conversation:%s/%s" % (app, user))
        self.set_status(204)
        self.finish()


def _disposition(inline: bool, media: dict, message_id: str) -> str:
    """inline or attachment, with an ASCII filename and the UTF-8 one (RFC 6266)."""
    name = media.get("name") or "media-%s" % message_id
    ascii_name = "".join(c if c.isascii() and c.isalnum() or c in "._-" else "_" for c in name)[:100]
    return "%s; filename=\"%s\"; filename*=UTF-8''%s" % (
        "inline" if inline else "attachment", ascii_name, quote(name[:100], safe=""))


def routes(services: Any) -> list:
    kw = dict(services=services)
    return [
        (r"/api/messages", MessagesHandler, kw),
        (r"/api/messages/%s" % ID, MessageHandler, kw),
        (r"/api/messages/%s/retry" % ID, RetryHandler, kw),
        (r"/api/messages/%s/recall" % ID, RecallHandler, kw),
        (r"/api/media/%s" % ID, MediaHandler, kw),
        (r"/api/(?:messages|media)/[0-9]{19,}(?:/retry|/recall)?", IdOutOfRangeHandler, kw),
        (r"/api/takeover/resume", ResumeHandler, kw),
    ]
