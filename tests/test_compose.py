"""Rich replies and quick replies over HTTP (#11 items 7 and 8): files as multipart/form-data with
WeCom's limits checked before anything is stored or sent, markdown, textcard and news, recall within
24 hours, and the quick-reply routes; every refusal stores nothing and calls no WeCom API."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from support.base import WecomdTestCase
from support.forms import multipart
from wecomd.wecom.sandbox import sample_amr, sample_png

PASSWORD = "pw-" + "x" * 12
MB = 2**20


def mp4(size: int = 64) -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + bytes(size)


class ComposeTestCase(WecomdTestCase):
    def admin(self) -> dict:
        """The admin's session headers with its own XSRF token (each sign-in has another)."""
        if not getattr(self, "_admin", None):
            self._admin = {**self.session(), "X-XSRFToken": self.xsrf}
        return self._admin

    def call(self, headers: dict, path: str, method: str = "GET", body=None):
        """self.api as the session of `headers` (its X-XSRFToken, not the last sign-in's)."""
        if "X-XSRFToken" in headers:
            self.xsrf = headers["X-XSRFToken"]
        return self.api(path, method, body, headers=headers)

    def send_file(self, msgtype: str, file: tuple | None, headers=None, **fields):
        body, content_type = multipart({"app": "helpdesk", "to_user": "zhangsan", "msgtype": msgtype, **fields}, file)
        headers = dict(headers if headers is not None else self.admin())
        headers["Content-Type"] = content_type
        resp = self.fetch("/api/messages", method="POST", body=body, headers=headers, raise_error=False,
                          request_timeout=60)
        return resp.code, json.loads(resp.body) if resp.body else None

    def stored_files(self) -> list[Path]:
        return [path for path in Path(self.config.server.media_dir).rglob("*") if path.is_file()]

    def wecom_calls(self) -> list[str]:
        return [path for path, _ in self.fake.calls if path not in ("/cgi-bin/gettoken",)]

    def as_(self, name: str, role: str) -> dict:
        self.admin()
        self.add_operator(name, role, PASSWORD)
        return {**self.login(name, PASSWORD), "X-XSRFToken": self.xsrf}


class FileRepliesTest(ComposeTestCase):
    def test_an_image_is_kept_in_the_vault_sent_and_served_like_inbound_media(self):
        status, row = self.send_file("image", ("截图.png", sample_png(), "image/png"))
        self.assertEqual(status, 201, row)
        self.assertEqual((row["msgtype"], row["status"], row["operator"]), ("image", "pending", "admin"))
        self.assertEqual(row["media"], {"status": "stored", "size": len(sample_png()), "type": "image/png",
                                        "name": "截图.png", "error": None})
        self.wait_for(lambda: self.fake.sent)
        self.assertEqual(self.fake.sent[0]["image"], {"media_id": self.fake.uploads[0]["media_id"]})
        self.assertEqual(self.fake.uploads[0]["filename"], "截图.png")
        served = self.fetch("/api/media/%d" % row["id"], headers=self.session())
        self.assertEqual((served.code, served.body), (200, sample_png()))
        self.assertEqual(served.headers["Content-Type"], "image/png")
        self.assertIn("sandbox", served.headers["Content-Security-Policy"])
        (path,) = self.stored_files()
        self.assertRegex(path.relative_to(self.config.server.media_dir).as_posix(),
                         r"^helpdesk/\d{4}-\d{2}/out-[0-9a-f]{12}-截图\.png$")
        audit = self.db(self.services.store.audit.page, action="reply")[0]
        self.assertEqual(audit[0]["detail"], {"message_ids": [row["id"]]})

    def test_voice_video_and_file_go_out_with_their_type(self):
        for msgtype, file in (("voice", ("v.amr", sample_amr(), "audio/amr")), ("video", ("v.mp4", mp4(), "video/mp4")),
                              ("file", ("说明.txt", "你好，世界".encode(), "text/plain"))):
            status, row = self.send_file(msgtype, file, **({"title": "演示"} if msgtype == "video" else {}))
            self.assertEqual(status, 201, row)
        self.wait_for(lambda: len(self.fake.sent) == 3)
        self.assertEqual([m["msgtype"] for m in self.fake.sent], ["voice", "video", "file"])
        self.assertEqual(self.fake.sent[1]["video"]["title"], "演示")
        self.assertEqual([u["type"] for u in self.fake.uploads], ["voice", "video", "file"])

    def test_every_limit_answers_413_naming_it_with_nothing_stored_and_no_wecom_call(self):
        png = sample_png()
        cases = [
            ("file", ("tiny.txt", b"12345", "text/plain"), "larger than 5 bytes"),
            ("image", ("a.gif", b"GIF89a" + bytes(64), "image/gif"), "JPG or PNG"),
            ("image", ("png.jpg", png[:4], "image/jpeg"), "larger than 5 bytes"),
            ("image", ("big.png", png + bytes(10 * MB), "image/png"), "at most 10 MB"),
            ("voice", ("a.mp3", b"ID3" + bytes(64), "audio/mpeg"), "AMR"),
            ("voice", ("long.amr", sample_amr() + bytes(2 * MB), "audio/amr"), "at most 2 MB"),
            ("video", ("a.avi", b"RIFF" + bytes(64), "video/avi"), "MP4"),
            ("video", ("big.mp4", mp4(10 * MB), "video/mp4"), "at most 10 MB"),
            ("file", ("big.bin", bytes(20 * MB + 1), "application/octet-stream"), "at most 20 MB"),
            ("file", ("huge.bin", bytes(21 * MB), "application/octet-stream"), "at most 20 MB"),
        ]
        for msgtype, file, limit in cases:
            status, answer = self.send_file(msgtype, file)
            self.assertEqual(status, 413, (msgtype, file[0], answer))
            self.assertIn(limit, answer["error"], file[0])
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.stored_files(), [])
        self.assertEqual(self.wecom_calls(), [])
        self.assertEqual(self.db(self.services.store.audit.page, action="reply")[0], [])

    def test_a_chunked_upload_past_the_largest_limit_is_413_as_it_streams(self):
        body, content_type = multipart({"app": "helpdesk", "to_user": "zhangsan", "msgtype": "file"},
                                       ("big.bin", bytes(21 * MB), "application/octet-stream"))

        async def produce(write):
            for start in range(0, len(body), 256 * 1024):
                await write(body[start:start + 256 * 1024])

        headers = {**self.admin(), "Content-Type": content_type}
        self.xsrf = headers["X-XSRFToken"]
        resp = self.fetch("/api/messages", method="POST", body_producer=produce, headers=headers,
                          raise_error=False, request_timeout=60)
        self.assertEqual(resp.code, 413, resp.body)
        self.assertIn("at most 20 MB", json.loads(resp.body)["error"])
        self.assertEqual((self.rows(), self.stored_files(), self.wecom_calls()), ([], [], []))

    def test_a_form_without_a_file_or_with_a_bad_field_is_400(self):
        for msgtype, file, fields in (("image", None, {}), ("text", ("a.png", sample_png(), "image/png"), {}),
                                      ("image", ("a.png", sample_png(), "image/png"), {"app": "nope"}),
                                      ("image", ("a.png", sample_png(), "image/png"), {"to_user": " "})):
            status, answer = self.send_file(msgtype, file, **fields)
            self.assertEqual(status, 400, (msgtype, fields, answer))
        self.assertEqual((self.rows(), self.stored_files(), self.wecom_calls()), ([], [], []))

    def test_xsrf_and_roles_hold_for_uploads(self):
        body, content_type = multipart({"app": "helpdesk", "to_user": "zhangsan", "msgtype": "image"},
                                       ("a.png", sample_png(), "image/png"))
        cookie = {key: value for key, value in self.admin().items() if key != "X-XSRFToken"}
        no_xsrf = self.fetch("/api/messages", method="POST", body=body, raise_error=False,
                             headers={**cookie, "Content-Type": content_type})
        self.assertEqual(no_xsrf.code, 403)
        viewer = self.as_("ann", "viewer")
        status, answer = self.send_file("image", ("a.png", sample_png(), "image/png"), headers=viewer)
        self.assertEqual(status, 403)
        self.assertIn("ann is a viewer", answer["error"])
        self.assertEqual(self.send_file("image", ("a.png", sample_png(), "image/png"), headers={})[0], 403)  # no XSRF
        self.assertEqual((self.rows(), self.stored_files(), self.wecom_calls()), ([], [], []))
        status, row = self.send_file("image", ("a.png", sample_png(), "image/png"), headers=self.bearer())
        self.assertEqual(status, 201)  # a bearer token needs no XSRF token

    def test_json_replies_keep_working_beside_the_streamed_uploads(self):
        status, row = self.api("/api/messages", "POST", {"app": "helpdesk", "to_user": "zhangsan", "content": "好的"})
        self.assertEqual((status, row["content"]), (201, "好的"))
        status, answer = self.api("/api/messages", "POST", {"app": "helpdesk", "to_user": "zhangsan",
                                                            "msgtype": "image", "content": "x"})
        self.assertEqual(status, 400)
        self.assertIn("multipart/form-data", answer["error"])


class CardRepliesTest(ComposeTestCase):
    def post(self, msgtype: str, **body):
        return self.api("/api/messages", "POST", {"app": "helpdesk", "to_user": "zhangsan", "msgtype": msgtype, **body})

    def test_markdown_textcard_and_news_are_sent_as_wecom_payloads(self):
        self.assertEqual(self.post("markdown", content="**已处理**")[0], 201)
        card = {"title": "工单 #12", "description": "已关闭", "url": "https://example.com/t/12", "btntxt": "详情"}
        status, row = self.post("textcard", textcard=card)
        self.assertEqual((status, row["msgtype"], row["content"]), (201, "textcard", "工单 #12\n已关闭"))
        articles = [{"title": "第 %d 篇" % i, "url": "https://example.com/%d" % i} for i in range(8)]
        self.assertEqual(self.post("news", news={"articles": articles})[0], 201)
        self.wait_for(lambda: len(self.fake.sent) == 3)
        self.assertEqual([m["msgtype"] for m in self.fake.sent], ["markdown", "textcard", "news"])
        self.assertEqual(self.fake.sent[1]["textcard"], card)
        self.assertEqual(len(self.fake.sent[2]["news"]["articles"]), 8)

    def test_payloads_wecom_would_refuse_are_400_naming_the_field(self):
        good = {"title": "t", "description": "d", "url": "https://example.com"}
        article = {"title": "t", "url": "https://example.com"}
        cases = [
            ("markdown", {"content": ""}, "content"),
            ("markdown", {"content": "字" * 683}, "content is 2049 bytes"),
            ("textcard", {}, "textcard must be an object"),
            ("textcard", {"textcard": {**good, "url": ""}}, "textcard.url is required"),
            ("textcard", {"textcard": {**good, "url": "javascript:alert(1)"}}, "textcard.url must be an http"),
            ("textcard", {"textcard": {**good, "title": "标" * 43}}, "textcard.title is 129 bytes"),
            ("textcard", {"textcard": {**good, "description": "d" * 513}}, "textcard.description is 513 bytes"),
            ("textcard", {"textcard": {**good, "btntxt": "更多详情呀"}}, "textcard.btntxt"),
            ("news", {"news": {"articles": []}}, "news.articles must be a list of 1 to 8"),
            ("news", {"news": {"articles": [article] * 9}}, "news.articles must be a list of 1 to 8"),
            ("news", {"news": {"articles": [article, {"title": "t"}]}}, "news.articles[1].url is required"),
            ("news", {"news": {"articles": [{**article, "picurl": "ftp://x"}]}}, "news.articles[0].picurl"),
            ("news", {"news": {"articles": [{**article, "title": "x" * 129}]}}, "news.articles[0].title"),
            ("template_card", {}, "msgtype must be text, markdown, textcard or news"),
        ]
        for msgtype, body, field in cases:
            status, answer = self.post(msgtype, **body)
            self.assertEqual(status, 400, (msgtype, body))
            self.assertIn(field, answer["error"])
        self.assertEqual((self.rows(), self.wecom_calls()), ([], []))


class RecallTest(ComposeTestCase):
    def sent(self, content: str = "发错了") -> dict:
        status, row = self.call(self.admin(), "/api/messages", "POST",
                                {"app": "helpdesk", "to_user": "zhangsan", "content": content})
        self.assertEqual(status, 201)
        return self.wait_for(lambda: (lambda r: r if r["status"] == "sent" else None)(
            self.db(self.services.store.messages.get, row["id"])))

    def recall(self, message_id: int, headers=None):
        return self.call(headers if headers is not None else self.admin(), "/api/messages/%d/recall" % message_id,
                         "POST", {})

    def test_a_sent_message_is_recalled_audited_and_pushed_live(self):
        row = self.sent()
        ws = self.io_loop.run_sync(self.ws_connect)
        status, recalled = self.recall(row["id"])
        self.assertEqual((status, recalled["status"]), (200, "recalled"))
        self.assertEqual(self.fake.recalled, [row["msg_id"]])
        frame = json.loads(self.io_loop.run_sync(ws.read_message))
        self.assertEqual(frame[0], {"type": "status", "id": row["id"], "app": "helpdesk", "status": "recalled",
                                    "error": None})
        ws.close()
        audit = self.db(self.services.store.audit.page, action="recall")[0]
        self.assertEqual([(a["actor"], a["target"], a["detail"]) for a in audit],
                         [("admin", "message:%d" % row["id"], {"msgid": row["msg_id"]})])

    def test_recall_refusals_are_409_404_and_403_and_call_no_wecom_api(self):
        row = self.sent()
        old = self.sent("昨天的")
        Message = self.services.store.models.Message
        sent_at = self.db(lambda: Message.get_by_id(old["id"]).updated_at)
        self.db(lambda: Message.update(updated_at=sent_at - timedelta(hours=24, seconds=5))
                .where(Message.id == old["id"]).execute())
        inbound = self.db(self.services.store.outbox.save, "helpdesk", "zhangsan", "text", "passive", {},
                          status="sent", automatic="passive")
        self.io_loop.run_sync(self.services.outbox.stop)  # the next reply stays pending
        status, pending = self.call(self.admin(), "/api/messages", "POST",
                                    {"app": "helpdesk", "to_user": "zhangsan", "content": "x"})
        calls = len(self.fake.calls)
        for message_id, expected, words in ((pending["id"], 409, "pending"), (old["id"], 409, "more than 24 hours"),
                                            (inbound["id"], 409, "no WeCom msgid"), (10**15, 404, "no outbound")):
            status, answer = self.recall(message_id)
            self.assertEqual(status, expected, answer)
            self.assertIn(words, answer["error"])
        viewer = self.as_("ann", "viewer")
        self.assertEqual(self.recall(row["id"], headers=viewer)[0], 403)
        self.assertEqual(self.recall(row["id"])[0], 200)
        status, answer = self.recall(row["id"])
        self.assertEqual((status, "recalled" in answer["error"]), (409, True))
        self.assertEqual(len(self.fake.calls), calls + 1)  # the one recall that was allowed
        self.assertEqual(len(self.db(self.services.store.audit.page, action="recall")[0]), 1)

    def test_wecoms_refusal_is_502_in_its_words_and_the_message_stays_sent(self):
        row = self.sent()
        self.fake.fail_next("/cgi-bin/message/recall", 40058, "invalid msgid")
        status, answer = self.recall(row["id"])
        self.assertEqual(status, 502)
        self.assertIn("errcode 40058", answer["error"])
        self.assertEqual(self.db(self.services.store.messages.get, row["id"])["status"], "sent")


class QuickRepliesTest(ComposeTestCase):
    def test_shared_and_personal_quick_replies_and_who_may_change_them(self):
        admin = self.admin()
        li = self.as_("li", "operator")
        wang = self.as_("wang", "operator")
        status, shared = self.call(admin, "/api/quick-replies", "POST",
                                   {"shortcut": "hi", "text": "{user_name}，您好", "team": True})
        self.assertEqual((status, shared["team"], shared["owner"]), (201, True, None))
        status, own = self.call(li, "/api/quick-replies", "POST", {"shortcut": "vpn", "text": "请重启 VPN"})
        self.assertEqual((status, own["owner"]), (201, "li"))
        self.assertEqual(self.call(li, "/api/quick-replies", "POST", {"shortcut": "x", "text": "y", "team": True})[0], 403)
        self.assertEqual(self.call(li, "/api/quick-replies", "POST", {"shortcut": "vpn", "text": "again"})[0], 409)
        self.assertEqual(self.call(wang, "/api/quick-replies", "POST", {"shortcut": "vpn", "text": "mine"})[0], 201)
        _, listed = self.call(li, "/api/quick-replies")
        self.assertEqual([(q["shortcut"], q["owner"]) for q in listed["quick_replies"]], [("hi", None), ("vpn", "li")])
        self.assertEqual(self.call(li, "/api/quick-replies/%d" % shared["id"], "POST", {"text": "x"})[0], 403)
        self.assertEqual(self.call(wang, "/api/quick-replies/%d" % own["id"], "POST", {"text": "x"})[0], 404)
        self.assertEqual(self.call(wang, "/api/quick-replies/%d" % own["id"], "DELETE")[0], 404)
        status, changed = self.call(admin, "/api/quick-replies/%d" % shared["id"], "POST", {"text": "您好 {from_user}"})
        self.assertEqual((status, changed["text"]), (200, "您好 {from_user}"))
        status, changed = self.call(li, "/api/quick-replies/%d" % own["id"], "POST", {"shortcut": "vpn2"})
        self.assertEqual((status, changed["shortcut"], changed["text"]), (200, "vpn2", "请重启 VPN"))
        # As the dashboard sends it: a DELETE with a JSON body (api.js sends one with every write).
        deleted = self.fetch("/api/quick-replies/%d" % own["id"], method="DELETE", body="{}", allow_nonstandard_methods=True,
                             headers={**li, "Content-Type": "application/json"})
        self.assertEqual(deleted.code, 204)
        self.assertEqual(self.call(li, "/api/quick-replies/%d" % own["id"], "DELETE")[0], 404)
        actions = [a["action"] for a in self.db(self.services.store.audit.page, actor="li")[0]]
        self.assertEqual(actions[:3], ["quick_reply_delete", "quick_reply_change", "quick_reply_add"])

    def test_bad_quick_replies_and_viewers_are_refused_with_nothing_stored(self):
        viewer = self.as_("ann", "viewer")
        self.assertEqual(self.call(viewer, "/api/quick-replies")[0], 200)
        self.assertEqual(self.call(viewer, "/api/quick-replies", "POST", {"shortcut": "a", "text": "b"})[0], 403)
        admin = self.admin()
        for body in ({"shortcut": "has space", "text": "x"}, {"shortcut": "", "text": "x"}, {"shortcut": "a" * 33, "text": "x"},
                     {"shortcut": "ok", "text": " "}, {"shortcut": "ok", "text": "x" * 10001},
                     {"shortcut": "ok", "text": "x", "team": "yes"}, {"text": "x"}):
            self.assertEqual(self.call(admin, "/api/quick-replies", "POST", body)[0], 400, body)
        self.assertEqual(self.call(admin, "/api/quick-replies")[1], {"quick_replies": []})
