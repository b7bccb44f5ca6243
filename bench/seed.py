"""Seed a wecomd SQLite database with N realistic stored messages, fast (bench/scale.py's data).

    python bench/seed.py DB [--messages 1000000] [--users 3000] [--days 365] [--seed 42]

Creates DB with wecomd's schema (its migrations) when it does not exist, then writes N messages
spread over the last `--days` days, oldest first, in a few large transactions:

- three apps (helpdesk, ops, hr), a few thousand users whose activity is skewed as in real teams;
- inbound messages of every common kind (text in Chinese with some English, images, voice,
  video, files, locations, links, menu and scan events), each built as WeCom's XML
  (wecomd.wecom.samples.build) and turned into exactly the row the daemon stores for it
  (messages.parse, messages.dedup_key, wecomd.store.messages.inbound_row); downloaded media as the media
  vault leaves it ("stored", with path, size and type);
- outbound replies as the outbox leaves them: manual ones by operators, and rule replies, sent or
  (a few) failed; passive replies of rules as rule runs with the reply saved on the message;
- read marks: operators read most conversations before answering.

The search index (FTS5) and the conversation summary are maintained by wecomd's own triggers as
rows go in; read marks are written last, so the summary is then rebuilt from all messages
(store.conversations.rebuild), which gives what the daemon would have. Only `synchronous=off`
(seeding only; the daemon runs synchronous=full) and big transactions make it fast.
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wecomd.wecom import messages, replies, samples  # noqa: E402
from wecomd.workers.media import safe_name  # noqa: E402
from wecomd.store import Store  # noqa: E402
from wecomd.store.messages import inbound_row  # noqa: E402
from wecomd.store.search import search_text  # noqa: E402
from wecomd.store.serialize import dumps  # noqa: E402

CORP_ID = "ww0123456789abcdef"
APPS = (("helpdesk", "1000002", 0.6), ("ops", "1000003", 0.25), ("hr", "1000004", 0.15))
BATCH = 50_000  # rows per transaction

SURNAMES = ("zhang", "wang", "li", "zhao", "liu", "chen", "yang", "huang", "zhou", "wu", "xu", "sun",
            "ma", "zhu", "hu", "guo", "he", "lin", "luo", "gao")
GIVEN = ("wei", "fang", "na", "min", "jing", "li", "qiang", "lei", "jun", "yang", "yong", "yan",
         "jie", "tao", "ming", "chao", "xiuying", "hua", "ping", "gang", "hui", "lan", "xin", "bo")
GREETINGS = ("你好", "您好", "在吗", "麻烦问一下", "请问", "早上好", "辛苦了", "hi", "hello", "")
TOPICS = ("服务器", "打印机", "会议室投影仪", "VPN", "邮箱", "报销系统", "请假审批", "合同", "发票",
          "出差申请", "快递", "电脑", "wiki 页面", "Jenkins 构建", "数据库", "网络", "wifi", "门禁卡",
          "工资条", "社保", "年假", "周报", "OA 流程", "git 仓库", "监控告警", "磁盘空间", "deploy 脚本")
PROBLEMS = ("宕机了", "连不上", "卡纸了", "打不开", "报错 500", "特别慢", "一直转圈", "登录失败",
            "提示密码过期", "没有反应", "显示离线", "审批卡住了", "找不到入口", "满了", "超时",
            "需要开通权限", "怎么申请", "什么时候能好", "出问题了", "又坏了")
REQUESTS = ("帮忙看一下", "急", "谢谢", "能尽快处理吗", "今天之内要用", "麻烦了", "多谢",
            "客户在等", "老板在催", "不着急", "")
ANSWERS = ("收到，马上处理", "已经重启了，请再试一下", "请把报错截图发给我", "已提交工单，编号",
           "密码已重置，初始密码见邮件", "权限已开通", "正在排查，稍等", "已经恢复了", "请重新登录试试",
           "这个需要走 OA 审批", "明天上午派人过去", "已转给网络组", "好的", "没问题")
FILES = ("报价单.xlsx", "合同扫描件.pdf", "周报-第12周.docx", "error.log", "screenshot.png",
         "发票.pdf", "会议纪要.docx", "部署方案.pptx")
LINKS = ("故障复盘：数据库主从切换", "新员工入职指南", "报销流程说明", "VPN 配置教程")
PLACES = ("广州市天河区", "上海市浦东新区", "北京市海淀区", "深圳市南山区")
# (kind, weight) of inbound messages
KINDS = (("text", 70), ("image", 9), ("voice", 3), ("video", 1), ("file", 3), ("location", 2),
         ("link", 2), ("click", 5), ("enter_agent", 2), ("scancode_waitmsg", 1),
         ("location_select", 1), ("subscribe", 1))
MEDIA = {"image": ("image/jpeg", 20_000, 400_000), "voice": ("audio/amr", 3_000, 60_000),
         "video": ("video/mp4", 500_000, 8_000_000), "file": ("application/octet-stream", 10_000, 2_000_000)}
OPERATORS = ("admin", "admin", "liwei", "zhaomin")


def users_of(count: int, rng: random.Random) -> list[str]:
    names, seen = [], set()
    while len(names) < count:
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + ("" if rng.random() < 0.3 else str(rng.randrange(1, 100)))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def text_of(rng: random.Random, n: int) -> str:
    parts = [rng.choice(GREETINGS), rng.choice(TOPICS) + rng.choice(PROBLEMS), rng.choice(REQUESTS)]
    text = "，".join(p for p in parts if p)
    if rng.random() < 0.15:
        text += " 工单 #%d" % (100000 + n)
    return text


class Seeder:
    def __init__(self, path: Path, users: int, days: int, seed: int) -> None:
        self.path, self.rng = path, random.Random(seed)
        self.users = users_of(users, self.rng)
        # Activity is skewed: a few people write a lot, most a little.
        self.weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(self.users))]
        self.days = days
        self.store = Store(str(path))
        self.store.migrate()
        M = self.store.models.Message
        self.fields = M._meta.sorted_fields
        self.blank = {f.name: (f.default if not callable(f.default) else None) for f in self.fields}
        self.insert = 'INSERT INTO "message" (%s) VALUES (%s)' % (
            ", ".join('"%s"' % f.column_name for f in self.fields), ", ".join("?" * len(self.fields)))
        self.last_in: dict[tuple, int] = {}  # (app, user) -> newest inbound id
        self.marks: dict[tuple, int] = {}  # (app, user) -> read up to

    def row(self, values: dict) -> tuple:
        full = {**self.blank, **values}
        return tuple(f.db_value(full[f.name]) for f in self.fields)

    def inbound(self, message_id: int, app: str, agent: str, user: str, when: datetime, n: int) -> tuple:
        rng = self.rng
        kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        stamp = int(when.replace(tzinfo=timezone.utc).timestamp())
        content = {"text": text_of(rng, n), "link": rng.choice(LINKS)}.get(kind, "")
        xml = samples.build(kind, corp_id=CORP_ID, agent_id=agent, from_user=user, content=content,
                             create_time=stamp, msg_id=str(7 * 10 ** 18 + n))
        if kind == "file":
            xml = xml.replace("报告.pdf", rng.choice(FILES))
        elif kind == "location":
            xml = xml.replace("广州市天河区", rng.choice(PLACES))
        message = messages.parse(xml)
        reply = None
        if kind == "text" and rng.random() < 0.08:  # a rule answered at once (passive reply)
            reply = replies.reply_text(user, CORP_ID, rng.choice(ANSWERS))
        values = inbound_row(app, message, messages.dedup_key(message), reply, when)
        values["id"] = message_id
        if kind in MEDIA:  # downloaded by the media vault a moment later
            mime, low, high = MEDIA[kind]
            name = safe_name({"msgtype": kind, "fields": message.fields}, mime, None)
            values.update(media_status="stored", media_type=mime, media_size=rng.randrange(low, high),
                          media_name=name, updated_at=when + timedelta(seconds=2),
                          media_path="%s/%s/%d-%s" % (app, when.strftime("%Y-%m"), message_id, name))
        self.last_in[(app, user)] = message_id
        return self.row(values), reply

    def outbound(self, message_id: int, app: str, user: str, when: datetime, n: int) -> tuple:
        rng = self.rng
        content = rng.choice(ANSWERS)
        if content.endswith("编号"):
            content += " %d" % (200000 + n)
        operator = rng.choice(OPERATORS) if rng.random() < 0.7 else "rule:faq"
        if not operator.startswith("rule:") and (app, user) in self.last_in:
            self.marks[(app, user)] = self.last_in[(app, user)]  # read before answering
        fields = {"msgtype": "text", "text": {"content": content}, "part": 1, "parts": 1}
        failed = rng.random() < 0.01
        values = dict(id=message_id, app=app, direction="out", user=user, msgtype="text", to_user=user,
                      create_time=int(when.replace(tzinfo=timezone.utc).timestamp()), received_at=when,
                      content=content, fields=dumps(fields), operator=operator,
                      updated_at=when + timedelta(seconds=1), search_text=search_text("text", content, fields),
                      status="failed" if failed else "sent",
                      error="errcode 81013: user not in app's visible range" if failed else None,
                      wecom_msgid=None if failed else "msg%016x" % rng.getrandbits(64))
        return self.row(values)

    def run(self, count: int) -> None:
        rng = self.rng
        conn = sqlite3.connect(str(self.path), isolation_level=None)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("PRAGMA synchronous=off")  # seeding only
        conn.execute("PRAGMA cache_size=-262144")
        first = (conn.execute("SELECT COALESCE(MAX(id), 0) FROM message").fetchone()[0]) + 1
        end = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        start = end - timedelta(days=self.days)
        step = (end - start) / max(1, count)
        if step < timedelta(seconds=1):  # one sender's events within a second would share a dedup key
            raise SystemExit("--days too small: at most %d messages per day" % 86400)
        app_names, app_weights = [a for a, _, _ in APPS], [w for _, _, w in APPS]
        agents = {a: agent for a, agent, _ in APPS}
        started, rows, runs = time.monotonic(), [], []
        for n in range(count):
            message_id = first + n
            when = start + step * n
            when = when.replace(microsecond=0)
            user = rng.choices(self.users, self.weights)[0]
            # Each person mostly talks to one app.
            home = app_names[zlib.crc32(user.encode()) % len(app_names)]
            app = home if rng.random() < 0.8 else rng.choices(app_names, app_weights)[0]
            if rng.random() < 0.25 and (app, user) in self.last_in:
                rows.append(self.outbound(message_id, app, user, when, n))
            else:
                row, reply = self.inbound(message_id, app, agents[app], user, when, n)
                rows.append(row)
                if reply:
                    at = when.strftime("%Y-%m-%d %H:%M:%S")
                    runs.append((message_id, app, user, "faq", "reply", "ok", "passive", None, None, None,
                                 None, None, None, None, 0, None, at, at))
            if len(rows) == BATCH or n == count - 1:
                conn.execute("BEGIN")
                conn.executemany(self.insert, rows)
                conn.executemany(
                    'INSERT INTO rule_run (message_id, app, "user", rule, action, status, path, exit_code, '
                    "duration_ms, output, error, reply_message_id, url, payload, attempts, next_attempt_at, "
                    "started_at, finished_at) VALUES (%s)" % ", ".join("?" * 18), runs)
                conn.execute("COMMIT")
                rows, runs = [], []
                done = n + 1
                print("\r%d/%d messages, %.0f s" % (done, count, time.monotonic() - started),
                      end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        conn.execute("BEGIN")
        conn.executemany(
            'INSERT INTO conversation_read (app, "user", last_read_id) VALUES (?, ?, ?) '
            'ON CONFLICT (app, "user") DO UPDATE SET last_read_id = MAX(last_read_id, excluded.last_read_id)',
            [(app, user, mark) for (app, user), mark in self.marks.items()])
        conn.execute("COMMIT")
        # The index's segments merged, as the daemon's upkeep (workers/search_index.py) keeps them
        # while messages come one by one: a database seeded at once would leave it minutes of merging.
        conn.execute("INSERT INTO message_fts(message_fts) VALUES ('optimize')")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        # Read marks came last: count unread again, as mark_read would have along the way.
        self.store.conversations.rebuild()
        self.store.close()
        conn = sqlite3.connect(str(self.path))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()


def seed(path: Path, count: int, users: int = 3000, days: int = 365, seed: int = 42) -> float:
    """Add `count` messages to the wecomd database at `path`; return the seconds it took."""
    started = time.monotonic()
    Seeder(Path(path), users, days, seed).run(count)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", help="a SQLite file (created with wecomd's schema if missing)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    seconds = seed(Path(args.database), args.messages, args.users, args.days, args.seed)
    print("seeded %d messages from %d users in %.0f s" % (args.messages, args.users, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
