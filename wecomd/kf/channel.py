"""KfChannel: the 微信客服 channel, one per process (Services).

- `doorbell`: a kf_msg_or_event callback of a `kf = yes` app; its token is kept durably and the
  account's pull loop woken (KfPuller). The callback is answered as soon as that is committed.
  With the pull process (wecomd.kf.process) the callback is handed to it as it is: it keeps the
  token and pulls. Else, while a pull runs, the callback is committed to the intake journal
  (wecomd.intake), and the token kept and the pull woken when it is applied.
- What a pull stores (`_on_new`) is pushed live, and the customer's messages and enter_session
  events go through the rules as any channel's do; since 微信客服 has no passive reply, an answer
  goes out through the outbox (kf/send_msg, KfSender), and a welcome through send_msg_on_event
  with the event's welcome_code (once, within its 20 seconds). While a human agent serves the
  session (state 3), or an operator took the conversation over, automation stays silent.
- The console: each kf conversation's session (service state, servicer, the transitions WeCom
  documents for it), moving it (service_state/trans; a msg_code it returns is kept for its event
  message, used at most once), and the customers' nicknames (customer/batchget, cached).
A kf conversation's user is "OPEN_KFID/EXTERNAL_USERID" (wecom.kf.conversation_key).
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional

from wecomd.automation.takeover import is_paused
from wecomd.config import AppConfig, Config
from wecomd.inbox import NotStored
from wecomd.kf.items import decode
from wecomd.kf.process import KfPullProcess
from wecomd.kf.pull import KfPuller
from wecomd.kf.send import KfSender
from wecomd.live import kf_session_event, message_event
from wecomd.store import StoreError
from wecomd.store.contacts import counterpart
from wecomd.store.intake import once
from wecomd.store.kf import StoredText, TextRun
from wecomd.store.times import from_iso, utcnow
from wecomd.wecom import kf as kfproto
from wecomd.wecom.api import WecomApiError
from wecomd.wecom.messages import Message, parse

logger = logging.getLogger(__name__)

STATE_GET, STATE_TRANS = "/cgi-bin/kf/service_state/get", "/cgi-bin/kf/service_state/trans"
SERVICER_LIST, CUSTOMER_BATCHGET = "/cgi-bin/kf/servicer/list", "/cgi-bin/kf/customer/batchget"
NAME_TTL = timedelta(days=7)  # a cached nickname is asked again after this
NAMED_MAX = 200_000  # customers remembered as named in memory (then forgotten, and read from the database)
# service_state/trans to a state -> the kind of the msg_code it returns (wecom-kf.md §8)
TRANS_CODES = {2: ("queue", timedelta(hours=48)), 3: ("human", timedelta(hours=48)), 4: ("end", timedelta(seconds=20))}


class SessionRefused(ValueError):
    """A session move the console must not make (not documented for the state, no servicer...)."""


class KfChannel:
    """See the module docstring."""

    def __init__(self, run_db: Callable[..., Awaitable[Any]], read: Callable[..., Awaitable[Any]], store: Any,
                 client: Any, rules: Any, outbox: Any, publish: Callable[[dict], None], config: Config,
                 wake_media: Callable[[], None] = lambda: None, clock: Callable[[], datetime] = utcnow,
                 listening: Callable[[], bool] = lambda: True, wake_index: Callable[[], None] = lambda: None,
                 intake: Any = None, on_pull_batch: Optional[Callable[[str, float, list], None]] = None) -> None:
        self.run_db, self.read, self.store, self.client, self.wake_media = run_db, read, store, client, wake_media
        self.wake_index = wake_index  # a stored page left the search index segments to merge
        self.listening = listening  # whether any console is connected: else live events need no reads
        self.rules, self.outbox, self.publish, self.clock = rules, outbox, publish, clock
        self.sender = KfSender(run_db, read, store, client, clock, changed=self._session_changed)
        self.puller: Any = KfPullProcess(run_db, store, config, self._on_new, on_pull_batch) \
            if config.server.kf_pull == "process" \
            else KfPuller(run_db, store, client, config, self._on_new, clock)
        self._tasks: set = set()
        self._named: Dict[str, datetime] = {}  # external_userid -> when its nickname was cached (this process)
        self.intake = intake  # wecomd.intake.Intake: doorbells journaled while a pull keeps the database busy
        if intake is not None:
            intake.register("kf", self._apply_doorbell)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.apps = {name: app for name, app in config.apps.items() if app.kf}
        self.puller.reconfigure(config)

    def pull_process(self) -> tuple:
        """(1 while the pull process runs, else 0; how many times it was started): /metrics."""
        return (1 if self.puller.pid else 0, self.puller.started)

    def handles(self, app: AppConfig, message: Message) -> bool:
        """Whether a callback of `app` is this channel's doorbell (the app has kf = yes)."""
        return app.kf and message.msgtype == "event" and message.event == kfproto.KF_EVENT

    async def doorbell(self, app: AppConfig, message: Message) -> bool:
        """Keep the callback's token and wake the pull; False for an account this app does not serve
        (nothing kept: answered all the same, so WeCom does not retry). NotStored when the token
        could not be committed."""
        open_kfid, token = kfproto.callback_open_kfid(message), kfproto.callback_token(message)
        if not open_kfid or not app.serves_kf(open_kfid):
            logger.warning("kf: app %s: a callback for account %r, which it does not serve (kf_accounts)",
                           app.name, open_kfid)
            return False
        try:
            # Journaled while a pull runs (the pull woken once applied), unless the pull process takes it.
            if self.intake is not None and self.intake.active() and not self.puller.takes_bells():
                await self.intake.record("kf", app.name, message.raw)
            else:
                await self.puller.doorbell(app, open_kfid, token)
        except StoreError as exc:  # not kept: the callback must not be acknowledged
            raise NotStored(str(exc)) from exc
        return True

    async def _apply_doorbell(self, app: Optional[AppConfig], name: str, body: str, stamp: tuple) -> None:
        """A doorbell from the intake journal: its token kept (once), the account's pull woken."""
        message = parse(body)
        open_kfid, token = kfproto.callback_open_kfid(message), kfproto.callback_token(message)
        await self.run_db(once, self.store, stamp, self.store.kf.doorbell, name, open_kfid, token, self.clock())
        if app is not None and open_kfid and app.kf and app.serves_kf(open_kfid):
            self.puller.wake(app, open_kfid)

    async def start(self) -> None:
        if self.apps:
            await self.puller.start()

    # ------------------------------------------------------------ what a pull stored

    async def _on_new(self, app: AppConfig, open_kfid: str, new: list) -> None:
        self.wake_index()
        # Customers' plain texts stored by SQL (StoredText) are read and decoded only when a console
        # watches or a rule or `reply =` may answer them; else only their names are looked up.
        customers = [customer for entry in new if isinstance(entry, (StoredText, TextRun))
                     for customer in (entry.customers if isinstance(entry, TextRun) else (entry.item["external_userid"],))]
        if customers and (self.listening() or app.reply or self.rules.has_rules(app.name)):
            new, customers = await self._expanded(new), []
        else:
            new = [entry for entry in new if not isinstance(entry, (StoredText, TextRun))]
        if self.listening():  # nobody watching (a backlog pulled at night): no reads for live events
            await self._publish_page(new)
        if any((row.get("media") or {}).get("status") == "pending" for row, _ in new):
            self.wake_media()  # a customer's image, voice, video or file: downloaded with media/get
        for row, item in new:
            if row["direction"] != "in" or item.session is None:
                continue
            customers.append(item.session[1])
            # The customer's messages, and the events that carry a send_msg_on_event code (enter_session's
            # welcome_code; session_status_change's when a servicer takes the session or it ends).
            if kfproto.origin(item.message.fields) == kfproto.ORIGIN_CUSTOMER or item.code is not None:
                await self._automate(app, row, item)
        if customers:
            self._spawn(self.resolve_names(app, customers))

    async def _expanded(self, new: list) -> list:
        """`new` with each StoredText, and each message of a TextRun, as (row, Pulled), like the other
        entries: rows read, items decoded (a TextRun's from the bodies stored with its rows)."""
        ids = [entry.id for entry in new if isinstance(entry, StoredText)]
        runs = [row_id for entry in new if isinstance(entry, TextRun) for row_id in entry.ids]
        rows = {row["id"]: row for row in await self.read(self.store.messages.rows, ids + runs)}
        raws = await self.read(self.store.messages.raws, runs) if runs else {}
        now, expanded = self.clock(), []
        for entry in new:
            if isinstance(entry, StoredText):
                expanded += [(rows[entry.id], decode(entry.item, now))] if entry.id in rows else []
            elif isinstance(entry, TextRun):
                expanded += [(rows[row_id], decode(json.loads(raws[row_id]), now))
                             for row_id in entry.ids if row_id in rows and row_id in raws]
            else:
                expanded.append(entry)
        return expanded

    async def _publish_page(self, new: list) -> None:
        """The live events of a stored page: its messages with the nicknames known, and the sessions
        it changed (a servicer took or ended one, the customer wrote: their reply window)."""
        try:
            await self.annotate([row for row, _ in new])
        except StoreError as exc:
            logger.warning("kf: nicknames not read for the live events: %s", exc)
        for row, _ in new:
            self.publish(message_event(row))
        changed = {item.session for _, item in new if item.session is not None
                   and (item.state is not None or item.customer_at is not None)}
        if changed:
            try:
                for session in (await self.read(self.store.kf.sessions, list(changed))).values():
                    self._publish_session(session)
            except StoreError as exc:
                logger.warning("kf: sessions not read for the live events: %s", exc)

    async def _automate(self, app: AppConfig, row: dict, item: Any) -> None:
        message, (open_kfid, external) = item.message, item.session
        key = kfproto.conversation_key(open_kfid, external)
        matches = self.rules.select(app.name, message)
        if not matches and (message.msgtype == "event" or not app.reply):
            return
        try:
            if item.code is not None:  # WeCom gave this event its code so that it is answered, whoever serves
                paused = False
            else:
                session = await self.read(self.store.kf.session, open_kfid, external) or {}
                paused = session.get("service_state") == 3 or await self.read(is_paused, self.store, app.name, key)
            # The runner answers to the row's from_user: here the conversation (account/customer).
            answer = await self.rules.handle(app, dict(row, from_user=key), message, matches, paused)
            if answer is None:
                return
            if item.code is not None:
                code = await self.run_db(self.store.kf.use_code, (item.code[0],), open_kfid, external, self.clock(),
                                         message_id=row["id"])
                if code is None:
                    logger.info("kf: event id=%s: its %s code was used or expired: not answered", row["id"],
                                item.code[0])
                    return
                await self._send_code(app, key, code, answer.text, answer.rule, answer.run_id)
                return
            await self.rules.send_answer(app.name, key, answer)
        except (StoreError, ValueError) as exc:
            logger.warning("kf: message id=%s: automation failed: %s", row["id"], exc)

    async def _send_code(self, app: AppConfig, key: str, code: dict, text: str, rule: Optional[str] = None,
                         run_id: Optional[int] = None, operator: Optional[str] = None) -> dict:
        """One send_msg_on_event with a code claimed in the database (so never used twice): stored as
        an outbound message, sent or failed (a code is good for one call: no retry). The row is stored
        "failed" until WeCom took it, never "pending": the outbox must not send it too, and a crash
        before the answer leaves it failed, not sent twice."""
        sent = await self.run_db(self.store.outbox.save, app.name, key, "text", text,
                                 {"msgtype": "text", "text": {"content": text}, "event_code": code["kind"]},
                                 operator=operator, rule=rule, automatic="api" if rule else None, status="failed")
        if run_id is not None:
            await self.run_db(self.store.runs.set_path, run_id, "api", sent["id"])
        try:
            result = await self.sender.on_event(app, code["code"], sent["id"], text)
            sent = await self.run_db(self.store.outbox.set_status, sent["id"], "sent", None, result.get("msgid"))
        except (WecomApiError, OSError) as exc:
            sent = await self.run_db(self.store.outbox.set_status, sent["id"], "failed",
                                     "send_msg_on_event: %s" % exc)
        self.publish(message_event(sent))
        return sent

    # ------------------------------------------------------------ the console: sessions

    async def session(self, app: AppConfig, key: str) -> dict:
        """The session of a kf conversation as WeCom has it now (service_state/get, kept), with the
        transitions the console may offer and the account's servicers."""
        open_kfid, external = self._split(key)
        answer = await self.client.call(app, "POST", STATE_GET,
                                        json_body={"open_kfid": open_kfid, "external_userid": external})
        state, servicer = answer.get("service_state"), answer.get("servicer_userid") or None
        stored = await self.run_db(self.store.kf.set_state, app.name, open_kfid, external, state, servicer, self.clock())
        self._publish_session(stored)
        servicers = await self.client.call(app, "GET", SERVICER_LIST, params={"open_kfid": open_kfid})
        return dict(stored, transitions=list(kfproto.TRANSITIONS.get(state, ())),
                    servicers=[s for s in servicers.get("servicer_list") or [] if isinstance(s, dict)])

    async def move(self, app: AppConfig, key: str, state: int, servicer: Optional[str],
                   message: Optional[str] = None, operator: Optional[str] = None) -> dict:
        """service_state/trans to `state` (3 with a servicer), only along a transition WeCom documents
        for the session's current state. The msg_code it returns (the first move to the queue or to a
        human, and an end) answers with `message` through send_msg_on_event, once; without a
        message it is kept, unused. The session, with "sent": that message's row or None."""
        open_kfid, external = self._split(key)
        current = await self.client.call(app, "POST", STATE_GET,
                                         json_body={"open_kfid": open_kfid, "external_userid": external})
        old = current.get("service_state")
        if not kfproto.allowed(old, state):
            raise SessionRefused("a session in state %s (%s) cannot go to %s (%s)" % (
                old, kfproto.SERVICE_STATES.get(old, "?"), state, kfproto.SERVICE_STATES.get(state, "?")))
        if state == 3 and not servicer:
            raise SessionRefused("a human agent (servicer_userid) is needed to take the session")
        body: dict = {"open_kfid": open_kfid, "external_userid": external, "service_state": state}
        if servicer:
            body["servicer_userid"] = servicer
        answer = await self.client.call(app, "POST", STATE_TRANS, json_body=body)
        now = self.clock()
        code, sent = answer.get("msg_code"), None
        if code and state in TRANS_CODES:
            kind, life = TRANS_CODES[state]
            await self.run_db(self.store.kf.add_code, kind, code, open_kfid, external, now + life, now)
            if message:
                claimed = await self.run_db(self.store.kf.use_code, (kind,), open_kfid, external, now)
                if claimed is not None:
                    sent = await self._send_code(app, key, claimed, message, operator=operator)
        session = await self.run_db(self.store.kf.set_state, app.name, open_kfid, external, state,
                                    servicer if state == 3 else None, now)
        self._publish_session(session)
        return dict(session, sent=sent, transitions=list(kfproto.TRANSITIONS.get(state, ())))

    async def _session_changed(self, open_kfid: str, external: str) -> None:
        if not self.listening():
            return
        try:
            self._publish_session(await self.read(self.store.kf.session, open_kfid, external))
        except StoreError as exc:
            logger.warning("kf: session not read for the live event: %s", exc)

    def _publish_session(self, session: Optional[dict]) -> None:
        if session and session.get("open_kfid") and session.get("external_userid"):
            state = session.get("service_state")
            self.publish(kf_session_event(session, list(kfproto.TRANSITIONS.get(state, ()))))

    def _split(self, key: str) -> tuple:
        found = kfproto.split_key(key)
        if found is None:
            raise SessionRefused("%r is not a 微信客服 conversation (OPEN_KFID/EXTERNAL_USERID)" % key)
        return found

    # ------------------------------------------------------------ the console: names and state

    async def annotate(self, rows: List[dict]) -> List[dict]:
        """Conversation or Message JSON rows of kf apps with "user_name" (the customer's nickname, or
        the external_userid when WeCom could not resolve it) and, on conversations, "kf" (the session
        as last known)."""
        keys, conversations = {}, []
        for row in rows:
            user = counterpart(row)
            found = kfproto.split_key(user) if row.get("app") in self.apps and user else None
            if found is not None:
                keys[id(row)] = (user, found)
                if "direction" not in row:
                    conversations.append(found)
        if not keys:
            return rows
        externals = [found[1] for _, found in keys.values()]
        names = await self.read(self.store.kf.customers, externals)
        # Sessions only for conversation rows (a page of live message events needs the names alone).
        sessions = await self.read(self.store.kf.sessions, conversations) if conversations else {}
        for row in rows:
            if id(row) not in keys:
                continue
            user, (open_kfid, external) = keys[id(row)]
            customer = names.get(external) or {}
            row["user_name"] = _shown_name(customer, external)
            if "direction" not in row:
                session = sessions.get((open_kfid, external)) or {}
                row["kf"] = {"open_kfid": open_kfid, "external_userid": external,
                             "service_state": session.get("service_state"),
                             "servicer_userid": session.get("servicer_userid"),
                             "last_customer_at": session.get("last_customer_at"), "sends": session.get("sends", 0)}
        return rows

    async def contact(self, app: str, key: str) -> Optional[dict]:
        """A kf conversation's customer as the console's contact card shows a member: the nickname
        (or the id WeCom could not resolve) and how they came (the entry scene); None for any other
        user."""
        found = kfproto.split_key(key) if app in self.apps else None
        if found is None:
            return None
        customer = (await self.read(self.store.kf.customers, [found[1]])).get(found[1]) or {}
        name = _shown_name(customer, found[1])
        return {"userid": key, "name": name, "departments": [], "position": customer.get("scene") or None,
                "errcode": None, "error": None, "fetched_at": customer.get("fetched_at"), "kf": True}

    async def resolve_names(self, app: AppConfig, externals: Iterable[str]) -> None:
        """Look up the nicknames of customers not cached (or cached long ago), ≤100 ids a call; push
        each name live as a "contact" event."""
        now = self.clock()
        # Asked of the database only for the customers this process has not named lately.
        externals = [e for e in dict.fromkeys(externals) if e not in self._named or now - self._named[e] > NAME_TTL]
        if not externals:
            return
        try:
            cached = await self.read(self.store.kf.customers, externals)
        except StoreError:
            return
        if len(self._named) > NAMED_MAX:
            self._named.clear()
        for external, customer in cached.items():
            if not _older(customer["fetched_at"], now, NAME_TTL):
                self._named[external] = from_iso(customer["fetched_at"])
        wanted = [e for e in externals if e not in self._named]
        for batch in kfproto.customer_batches(wanted):
            try:
                answer = await self.client.call(app, "POST", CUSTOMER_BATCHGET, json_body={
                    "external_userid_list": batch, "need_enter_session_context": 1})
            except (WecomApiError, OSError) as exc:
                logger.warning("kf: customer/batchget failed: %s", exc)
                return
            found = [c for c in answer.get("customer_list") or [] if isinstance(c, dict) and c.get("external_userid")]
            invalid = [i for i in answer.get("invalid_external_userid") or [] if isinstance(i, str)]
            try:
                await self.run_db(self.store.kf.save_customers, found, invalid, now)
            except StoreError as exc:
                logger.warning("kf: customer names not cached: %s", exc)
                return
            self._named.update((c["external_userid"], now) for c in found)
            self._named.update((i, now) for i in invalid)
            names: Dict[str, str] = {c["external_userid"]: c.get("nickname") or c["external_userid"] for c in found}
            names.update((i, i) for i in invalid)
            await self._publish_names(app, names)

    async def nickname(self, app: AppConfig, external: str) -> str:
        """A customer's nickname, looked up first (customer/batchget) when not cached; the
        external_userid when WeCom does not know it or cannot be asked."""
        await self.resolve_names(app, [external])
        try:
            cached = (await self.read(self.store.kf.customers, [external])).get(external) or {}
        except StoreError:
            cached = {}
        return cached.get("nickname") or external

    async def _publish_names(self, app: AppConfig, names: Dict[str, str]) -> None:
        if not self.listening():  # no console connected: nobody to tell, nothing to read
            return
        sessions = await self.read(self.store.kf.cursors)
        accounts = [row["open_kfid"] for row in sessions if row["app"] == app.name]
        for external, name in names.items():
            for open_kfid in accounts:
                self.publish({"type": "contact", "app": app.name,
                              "user": kfproto.conversation_key(open_kfid, external), "user_name": name})

    # ------------------------------------------------------------ plumbing

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await self.puller.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _shown_name(customer: dict, external: str) -> Optional[str]:
    """A customer's name in the console: the cached nickname, the id itself when WeCom could not
    resolve it, None while not looked up yet."""
    return customer.get("nickname") or (external if customer.get("invalid") else None)


def _older(fetched_at: Optional[str], now: datetime, ttl: timedelta) -> bool:
    return not fetched_at or now - from_iso(fetched_at) > ttl
