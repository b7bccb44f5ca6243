// The open conversation: messages merged by id, paging older, live updates, reply box, read marks;
// in its header who it is assigned to and whether it is open, and its internal notes in the thread.

import { api } from "./api.js";
import { Composer } from "./compose.js";
import { KfSessionBar } from "./kf.js";
import { clockTime, dayClock, dayKey, dayLabel, el, fullTime, messageDate, parseIso, t } from "./dom.js";
import { answerLine, conversationUser, isGroupMessage, isKfUser, messageRow } from "./render.js";

const PAGE = 50;
const CATCH_UP_PAGES = 10; // after a reconnect, fetch at most this many pages to close the gap
const STICKY_PX = 80;
// Rule runs still in progress are looked at again after these delays (then every MAX), for up to
// WATCH_FOR ms after they started; a message just received is checked twice for runs to appear.
const WATCH_MAX_DELAY = 30000;
const WATCH_FOR = 10 * 60 * 1000;
const FRESH_DELAYS = [1500, 4500];
const UNSETTLED = new Set(["running", "pending"]);

/** True while a rule run of this message may still change (running, queued, answer not yet sent). */
export function automationUnsettled(message) {
  const runs = Array.isArray(message.automation) ? message.automation : [];
  return runs.some((run) => UNSETTLED.has(run.status) || (run.status === "ok" && !run.path));
}

export class ThreadView {
  /**
   * hooks: appInfo(name) → app dict or undefined, onRead(app, user), onSent(message), onResumed(app, user),
   * onAssigned(state) after this page assigned, opened or closed the conversation
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.root = document.getElementById("thread-view");
    this.empty = document.getElementById("thread-empty");
    this.scroller = document.getElementById("messages");
    this.list = document.getElementById("message-list");
    this.older = document.getElementById("load-older");
    this.form = document.getElementById("composer");
    this.note = document.getElementById("composer-note");
    this.error = document.getElementById("composer-error");
    this.takeover = document.getElementById("takeover");
    this.takeoverText = document.getElementById("takeover-text");
    this.resumeButton = document.getElementById("resume");
    this.pauseTimer = null;
    this.current = null;
    // The reply box (compose.js): it asks which conversation is open, and hands back what it sent.
    this.composer = new Composer({
      context: () => this.current && { app: this.current.app, user: this.current.user, userName: this.userName() },
      sent: (message, since, context) => this.sent(message, since, context),
      error: (text) => this.showError(text),
    });
    // A 微信客服 customer's session (kf.js): its state and the moves WeCom documents for it.
    this.kfBar = new KfSessionBar({
      canWrite: () => this.canWrite,
      sent: (message, since, context) => this.sent(message, since, context),
    });
    this.bind();
    this.buildTeam();
  }

  bind() {
    this.older.addEventListener("click", () => this.loadOlder());
    this.resumeButton.addEventListener("click", () => this.resume());
    // Images change the height once loaded: keep the newest message in view if it was.
    this.list.addEventListener("load", () => {
      if (this.current && this.current.stuck) this.toBottom();
    }, true);
    // An opened command output stays open when its message is redrawn (a run's status changed).
    this.list.addEventListener("toggle", (event) => {
      const details = event.target;
      if (!this.current || !details.matches || !details.matches("details.auto-output")) return;
      if (details.open) this.current.openOutputs.add(details.dataset.runId);
      else this.current.openOutputs.delete(details.dataset.runId);
    }, true);
    this.scroller.addEventListener("scroll", () => {
      if (this.current) this.current.stuck = this.nearBottom();
    }, { passive: true });
    if ("IntersectionObserver" in window) {
      const observer = new IntersectionObserver((entries) => {
        if (entries.some((entry) => entry.isIntersecting) && this.current && this.current.ready) this.loadOlder();
      }, { root: this.scroller, rootMargin: "200px 0px 0px 0px" });
      observer.observe(this.older);
    }
    document.addEventListener("visibilitychange", () => this.markRead());
  }

  isOpen(app, user) {
    return !!this.current && this.current.app === app && this.current.user === user;
  }

  matches(message) {
    return !!this.current && message.app === this.current.app && conversationUser(message) === this.current.user;
  }

  open(app, user) {
    if (this.isOpen(app, user)) return;
    this.stopWatching();
    this.current = {
      app, user, messages: new Map(), rows: new Map(), liveAt: new Map(), next: null, ready: false,
      loadingOlder: false, stuck: true, needsRead: true, generation: Symbol("thread"),
      watches: new Map(), pausedUntil: null, openOutputs: new Set(),
      team: null, assignees: [], notes: new Map(), noteRows: new Map(), streams: new Map(),
    };
    this.renderPause();
    document.getElementById("thread-user").textContent = user;
    document.getElementById("thread-app").textContent = app;
    this.showContact(null);
    this.loadContact(app, user);
    for (const link of document.querySelectorAll("[data-thread-export]")) {
      link.setAttribute("href", "/api/export?" + new URLSearchParams({ app, user, format: link.dataset.threadExport }));
    }
    this.list.replaceChildren();
    this.older.hidden = true;
    this.error.hidden = true;
    this.setComposer();
    this.kfBar.open(app, user, this.hooks.appInfo(app), null);
    this.composer.reset();
    this.noteError.hidden = true;
    this.renderTeam();
    this.root.hidden = false;
    this.empty.hidden = true;
    this.loadLatest();
    this.loadTeam();
  }

  // ---------------------------------------------------------------- who it is (the contact directory)

  async loadContact(app, user) {
    try {
      const contact = await api.contact(app, user);
      if (this.isOpen(app, user)) this.showContact(contact);
    } catch (err) {
      // The UserID stays what is shown: a name is a convenience, never a reason to fail the thread.
    }
  }

  /** The header's name before the UserID, then departments and position; the UserID alone (with
   * WeCom's reason as its tooltip) when the name is unknown. */
  showContact(contact) {
    const name = document.getElementById("thread-name");
    const info = document.getElementById("thread-contact");
    const userId = document.getElementById("thread-user");
    const known = !!(contact && contact.name);
    name.textContent = known ? contact.name : "";
    name.hidden = !known;
    userId.classList.toggle("userid", known);
    userId.title = contact && !known && contact.error ? contact.error : "";
    const parts = known ? [...(contact.departments || []), contact.position].filter(Boolean) : [];
    info.textContent = parts.join(" · ");
    info.hidden = !parts.length;
  }

  /** A contact's name arrived live. */
  setContact(event) {
    if (this.isOpen(event.app, event.user)) this.loadContact(event.app, event.user);
  }

  close() {
    this.stopWatching();
    this.kfBar.close();
    this.current = null;
    this.renderPause();
    this.root.hidden = true;
    this.empty.hidden = false;
  }

  setComposer() {
    const info = this.hooks.appInfo(this.current.app);
    let note = "";
    const bot = !!info && info.kind === "bot";
    if (this.current.user === "sys") note = t("System events cannot be answered.");
    else if (!info) note = t("This app is no longer configured.");
    else if (!bot && !info.has_secret) note = t("This app has no secret configured, so replies cannot be sent.");
    const blocked = !!note;
    // A 智能机器人 answers only through a message's response_url: say so, and let the server refuse
    // (with its reason) when the newest message's is used or past its hour.
    if (bot) note = t("A bot replies through the response_url of the newest message: one reply per message, within an hour. Text or markdown only.");
    this.note.textContent = note;
    this.note.hidden = !note;
    this.form.classList.toggle("unavailable", blocked);
    this.composer.setBot(bot, !!info && !!info.kf && isKfUser(this.current.user));
    this.composer.setAvailable(!blocked);
  }

  /** One page of the thread, newest first; `since` tells mergeAll how fresh the answer is. */
  async fetchPage(before) {
    const { app, user } = this.current;
    const since = performance.now();
    const data = await api.messages({ app, user, before, limit: PAGE });
    return { ...data, since };
  }

  async loadLatest() {
    const thread = this.current;
    try {
      const data = await this.fetchPage();
      if (thread !== this.current) return;
      this.mergeAll(data.messages, data.since);
      thread.next = data.next;
      thread.ready = true;
      this.render("bottom");
      this.markRead();
      this.watchAll();
    } catch (err) {
      if (thread === this.current) this.showError(err.message);
    }
  }

  /** After a reconnect: fetch newest pages until they overlap what is already shown. */
  async catchUp() {
    const thread = this.current;
    if (!thread || !thread.ready) return;
    const known = Math.max(0, ...thread.messages.keys());
    let before;
    try {
      for (let page = 0; page < CATCH_UP_PAGES; page += 1) {
        const data = await this.fetchPage(before);
        if (thread !== this.current) return;
        this.mergeAll(data.messages, data.since);
        if (!data.next || data.messages.some((m) => m.id <= known)) break;
        before = data.next;
      }
      thread.needsRead = true;
      this.render("keep");
      this.markRead();
      this.watchAll();
      this.loadTeam(); // assignments and notes made while disconnected
    } catch (err) {
      // the next reconnect tries again
    }
  }

  async loadOlder() {
    const thread = this.current;
    if (!thread || !thread.next || thread.loadingOlder) return;
    thread.loadingOlder = true;
    this.older.disabled = true;
    try {
      const data = await this.fetchPage(thread.next);
      if (thread !== this.current) return;
      this.mergeAll(data.messages, data.since);
      thread.next = data.next;
      this.render("prepend");
    } catch (err) {
      this.showError(err.message);
    } finally {
      thread.loadingOlder = false;
      this.older.disabled = false;
    }
  }

  /** API answers never replace a copy the websocket updated after the request went out. */
  mergeAll(messages, since) {
    const { liveAt } = this.current;
    for (const message of messages || []) {
      if ((liveAt.get(message.id) || -1) < since) this.current.messages.set(message.id, message);
    }
  }

  /** A message from the websocket: the newest state, replacing any older copy. */
  mergeLive(message) {
    if (!this.matches(message)) return;
    const fresh = !this.current.messages.has(message.id) && message.direction === "in";
    const team = this.current.team;
    if (fresh && team && team.state === "closed") {
      // A new inbound message reopens a closed conversation (the server derives it the same way).
      this.current.team = { ...team, state: "open" };
      this.renderTeam();
    }
    this.current.liveAt.set(message.id, performance.now());
    this.merge(message);
    this.watch(message, fresh);
  }

  /**
   * A message from an API answer to a request sent at `since`. The websocket may already have
   * reported a later state (e.g. "sent" before the POST answer saying "pending"): keep that one.
   */
  /** A 微信客服 session changed (a live "kf_session" event). */
  setKfSession(event) {
    if (this.isOpen(event.app, event.user)) this.kfBar.update(event.kf);
  }

  /** A 智能机器人's answer growing (a live "stream" event): shown under the message it answers until
   * it finishes, when the stored answer takes its place. */
  mergeStream(event) {
    const thread = this.current;
    if (!thread || thread.app !== event.app || !thread.messages.has(event.message_id)) return;
    thread.streams.set(event.message_id, event.stream);
    this.render("keep");
  }

  streamNode(stream) {
    return el("li", { class: "msg out streaming", dataset: { streamId: stream.stream_id } },
      el("div", { class: "bubble" },
        el("div", { class: "stream-text" }, stream.content || "…"),
        el("span", { class: "source-tag", title: t("Where the answer comes from") }, stream.source || "")));
  }

  mergeAnswer(message, since) {
    if (this.matches(message) && (this.current.liveAt.get(message.id) || -1) >= since) return;
    this.merge(message);
  }

  merge(message) {
    if (!this.matches(message)) return;
    const isNew = !this.current.messages.has(message.id);
    this.current.messages.set(message.id, message);
    if (isNew && message.direction === "in") this.current.needsRead = true;
    this.render("keep");
    if (isNew) this.markRead();
  }

  setStatus(id, status, error) {
    const message = this.current && this.current.messages.get(id);
    if (!message) return;
    this.current.liveAt.set(id, performance.now());
    this.current.messages.set(id, { ...message, status, error: error === undefined ? message.error : error });
    this.render("keep");
  }

  // ---------------------------------------------------------------- rule runs in progress

  /**
   * Look at a message again while its rule runs may still change. The websocket re-sends a
   * message when its automation changes; this covers what it may miss (e.g. runs recorded just
   * after a new message was pushed). `fresh`: just received, its rules may not have run yet.
   */
  watch(message, fresh) {
    const thread = this.current;
    if (!thread || thread.watches.has(message.id)) return;
    const runs = Array.isArray(message.automation) ? message.automation : [];
    if (fresh && runs.length === 0) this.schedule(message.id, 0, true);
    else if (automationUnsettled(message) && this.recent(message)) this.schedule(message.id, 0, false);
  }

  watchAll() {
    if (!this.current) return;
    for (const message of this.current.messages.values()) this.watch(message, false);
  }

  recent(message) {
    const starts = (message.automation || []).map((run) => parseIso(run.started_at)).filter(Boolean);
    const started = starts.length ? Math.max(...starts.map((d) => d.getTime())) : Date.now();
    return Date.now() - started < WATCH_FOR;
  }

  schedule(id, attempt, fresh) {
    const thread = this.current;
    const delay = fresh ? FRESH_DELAYS[attempt] : Math.min(WATCH_MAX_DELAY, 1000 * 2 ** attempt);
    const timer = window.setTimeout(() => this.recheck(thread, id, attempt, fresh), delay);
    thread.watches.set(id, timer);
  }

  async recheck(thread, id, attempt, fresh) {
    if (thread !== this.current) return;
    const since = performance.now();
    let message = null;
    try {
      message = await api.message(id);
    } catch (err) {
      message = null; // gone or unreachable: the reconnect's catch-up covers the rest
    }
    if (thread !== this.current) return;
    thread.watches.delete(id);
    if (!message) return;
    this.mergeAnswer(message, since);
    const latest = thread.messages.get(id) || message;
    const runs = Array.isArray(latest.automation) ? latest.automation : [];
    if (fresh && runs.length === 0) {
      if (attempt + 1 < FRESH_DELAYS.length) this.schedule(id, attempt + 1, true);
    } else if (automationUnsettled(latest) && this.recent(latest)) {
      this.schedule(id, fresh ? 0 : attempt + 1, false);
    }
  }

  stopWatching() {
    if (!this.current) return;
    for (const timer of this.current.watches.values()) window.clearTimeout(timer);
    this.current.watches.clear();
  }

  // ---------------------------------------------------------------- human takeover

  /** The open conversation's paused_until (ISO) from the conversation list, or null. */
  setPaused(until) {
    if (!this.current || this.current.pausedUntil === (until || null)) return;
    this.current.pausedUntil = until || null;
    this.renderPause();
  }

  renderPause() {
    window.clearTimeout(this.pauseTimer);
    this.pauseTimer = null;
    const until = this.current ? parseIso(this.current.pausedUntil) : null;
    const left = until ? until.getTime() - Date.now() : 0;
    const active = left > 0;
    this.takeover.hidden = !active;
    if (!active) return;
    this.takeoverText.textContent = t("Automation paused until {time} (human takeover)", { time: dayClock(until) });
    this.takeover.title = fullTime(until);
    this.resumeButton.disabled = false;
    // Hide the banner by itself when the pause is over (timers top out at ~24.8 days).
    this.pauseTimer = window.setTimeout(() => this.renderPause(), Math.min(left + 500, 2 ** 31 - 1));
  }

  async resume() {
    const thread = this.current;
    if (!thread) return;
    this.resumeButton.disabled = true;
    this.showError("");
    try {
      await api.resume(thread.app, thread.user);
      if (thread === this.current) {
        thread.pausedUntil = null;
        this.renderPause();
      }
      this.hooks.onResumed(thread.app, thread.user);
    } catch (err) {
      this.resumeButton.disabled = false;
      if (thread === this.current) this.showError(t("Could not resume automation: {error}", { error: err.message }));
    }
  }

  get(id) {
    return this.current ? this.current.messages.get(id) : undefined;
  }

  nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICKY_PX;
  }

  toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  /** Rebuild the list, reusing the row of every message that did not change. */
  render(mode) {
    const thread = this.current;
    const stuck = mode === "bottom" || this.nearBottom();
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    const ordered = [...thread.messages.values()].sort((a, b) => a.id - b.id);
    const nodes = [];
    let lastDay = null;
    const day = (date) => {
      if (dayKey(date) !== lastDay) {
        lastDay = dayKey(date);
        nodes.push(el("li", { class: "day" }, el("span", null, dayLabel(date))));
      }
    };
    // Each note right after the message it was written after (after_id); one written before the
    // oldest message shown waits for the older page, if there is one.
    const oldest = ordered.length ? ordered[0].id : Infinity;
    const notes = [...thread.notes.values()].filter((note) => !thread.next || note.after_id >= oldest)
      .sort((a, b) => (a.after_id - b.after_id) || (a.id - b.id));
    let next = 0;
    const notesBefore = (id) => {
      for (; next < notes.length && notes[next].after_id < id; next += 1) {
        day(parseIso(notes[next].created_at));
        nodes.push(this.noteNode(notes[next]));
      }
    };
    for (const message of ordered) {
      notesBefore(message.id);
      const date = messageDate(message);
      day(date);
      const signature = JSON.stringify(message);
      let row = thread.rows.get(message.id);
      if (!row || row.signature !== signature) {
        row = { signature, node: messageRow(message, (m, button) => this.retry(m, button), (m, button) => this.recall(m, button)) };
        for (const details of row.node.querySelectorAll("details.auto-output")) {
          if (thread.openOutputs.has(details.dataset.runId)) details.open = true;
        }
        thread.rows.set(message.id, row);
      }
      nodes.push(row.node);
      const stream = thread.streams.get(message.id);
      if (stream && !stream.finished) nodes.push(this.streamNode(stream));
      else if (message.direction === "in" && (stream || message.answer)) nodes.push(answerLine(stream || message.answer));
    }
    notesBefore(Infinity);
    this.renderChat(ordered);
    if (ordered.length === 0) nodes.push(el("li", { class: "day" }, el("span", null, t("No messages yet"))));
    this.list.replaceChildren(...nodes);
    this.older.hidden = !thread.next;
    if (mode === "prepend") this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
    else if (stuck) this.toBottom();
    thread.stuck = this.nearBottom();
  }

  /** A 智能机器人's group chat: the header says so, with the senders seen in the loaded messages. */
  renderChat(ordered) {
    const senders = new Set(ordered.filter((m) => m.direction === "in" && isGroupMessage(m)).map((m) => m.from_user || "?"));
    const tag = document.getElementById("thread-chat");
    tag.hidden = senders.size === 0;
    tag.textContent = senders.size ? t("Group chat · {n} senders", { n: senders.size }) : "";
    tag.title = [...senders].join(", ");
  }

  markRead() {
    const thread = this.current;
    if (!thread || !thread.ready || !thread.needsRead || document.visibilityState !== "visible") return;
    const upTo = Math.max(0, ...thread.messages.keys());
    if (!upTo) return;
    thread.needsRead = false;
    api.markRead(thread.app, thread.user, upTo).then(
      () => this.hooks.onRead(thread.app, thread.user),
      () => { thread.needsRead = true; },
    );
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  /** The name of the open conversation's user, from its messages (null while unknown). */
  userName() {
    let name = null;
    for (const message of this.current ? this.current.messages.values() : []) {
      if (message.user_name) name = message.user_name;
    }
    return name;
  }

  /** The reply box stored a reply to `context`'s conversation, by a request sent at `since`. */
  sent(message, since, context) {
    this.hooks.onSent(message);
    if (this.isOpen(context.app, context.user)) {
      this.current.stuck = true;
      this.mergeAnswer(message, since);
    }
  }

  async recall(message, button) {
    button.disabled = true;
    this.showError("");
    const since = performance.now();
    try {
      const updated = await api.recall(message.id);
      this.hooks.onSent(updated);
      this.mergeAnswer(updated, since);
    } catch (err) {
      button.disabled = false;
      this.showError(t("Recall failed: {error}", { error: err.message }));
    }
  }

  async retry(message, button) {
    button.disabled = true;
    const since = performance.now();
    try {
      const updated = await api.retry(message.id);
      this.hooks.onSent(updated);
      this.mergeAnswer(updated, since);
    } catch (err) {
      button.disabled = false;
      this.showError(t("Retry failed: {error}", { error: err.message }));
    }
  }

  // ---------------------------------------------------------------- assignment, state, internal notes

  buildTeam() {
    const $ = (id) => document.getElementById(id);
    this.stateTag = $("thread-state");
    this.assigneeSelect = $("assignee");
    this.assignMe = $("assign-me");
    this.stateButton = $("state-toggle");
    this.noteBox = $("note-box");
    this.noteForm = $("note-form");
    this.noteText = $("note-text");
    this.noteAdd = $("note-add");
    this.noteError = $("note-error");
    this.me = document.body.dataset.user || "";
    this.canWrite = true; // until /api/me says this is a viewer (the server refuses a viewer anyway)
    this.assigneeLists = new Map(); // app -> the names it can be assigned to (GET /api/assignees)
    this.assigneeSelect.addEventListener("change", () => this.assign(this.assigneeSelect.value || null));
    this.assignMe.addEventListener("click", () => this.assign(this.me));
    this.stateButton.addEventListener("click", () => {
      const team = this.current && this.current.team;
      if (team) this.changeState(team.state === "closed" ? "open" : "closed");
    });
    this.noteForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.addNote();
    });
    api.me().then((me) => {
      this.canWrite = me.role !== "viewer";
      this.renderTeam();
      this.kfBar.render();
    }, () => {});
  }

  /** The open conversation's assignee, state and notes, and who it can be assigned to. */
  async loadTeam() {
    const thread = this.current;
    if (!thread) return;
    try {
      const [team, notes, names] = await Promise.all([
        api.conversationState(thread.app, thread.user),
        api.notes(thread.app, thread.user, { limit: 500 }),
        this.assignees(thread.app),
      ]);
      if (thread !== this.current) return;
      thread.team = team;
      thread.assignees = names;
      for (const note of notes.notes || []) thread.notes.set(note.id, note);
      this.renderTeam();
      if (thread.ready) this.render("keep");
    } catch (err) {
      if (thread === this.current) this.showError(err.message);
    }
  }

  assignees(app) {
    if (!this.assigneeLists.has(app)) {
      const names = api.assignees(app).then((data) => data.assignees || []);
      names.catch(() => this.assigneeLists.delete(app)); // asked again next time
      this.assigneeLists.set(app, names);
    }
    return this.assigneeLists.get(app);
  }

  renderTeam() {
    const thread = this.current;
    if (!thread) return;
    const team = thread.team || { assignee: null, state: "open" };
    const closed = team.state === "closed";
    this.stateTag.hidden = !thread.team;
    this.stateTag.className = "state-tag state-" + (closed ? "closed" : "open");
    this.stateTag.dataset.state = team.state;
    this.stateTag.textContent = closed ? t("Closed") : t("Open");
    const names = [...thread.assignees];
    if (team.assignee && !names.includes(team.assignee)) names.push(team.assignee); // e.g. a disabled account
    const options = [el("option", { value: "" }, t("Unassigned"))]
      .concat(names.map((name) => el("option", { value: name }, name === this.me ? t("{name} (me)", { name }) : name)));
    this.assigneeSelect.replaceChildren(...options);
    this.assigneeSelect.value = team.assignee || "";
    this.assigneeSelect.disabled = !this.canWrite || !thread.team;
    this.assignMe.hidden = !this.canWrite || !thread.team || team.assignee === this.me || !names.includes(this.me);
    this.stateButton.hidden = !this.canWrite || !thread.team;
    this.stateButton.textContent = closed ? t("Reopen") : t("Close");
    this.noteBox.hidden = !this.canWrite;
  }

  /** A conversation's new assignee or state (this page's change, or a live event). */
  setTeam(change) {
    const thread = this.current;
    if (!thread || thread.app !== change.app || thread.user !== change.user) return;
    thread.team = { ...(thread.team || {}), assignee: change.assignee, state: change.state };
    this.renderTeam();
  }

  async assign(name) {
    const thread = this.current;
    if (!thread) return;
    this.showError("");
    try {
      const team = await api.assign(thread.app, thread.user, name);
      this.setTeam(team);
      this.hooks.onAssigned(team);
    } catch (err) {
      if (thread === this.current) {
        this.showError(t("Could not assign: {error}", { error: err.message }));
        this.renderTeam();
      }
    }
  }

  async changeState(state) {
    const thread = this.current;
    if (!thread) return;
    this.stateButton.disabled = true;
    this.showError("");
    try {
      const team = await api.setState(thread.app, thread.user, state);
      this.setTeam(team);
      this.hooks.onAssigned(team);
    } catch (err) {
      if (thread === this.current) this.showError(t("Could not change the state: {error}", { error: err.message }));
    } finally {
      this.stateButton.disabled = false;
    }
  }

  /** A note from the websocket (or this page's own): shown once, in its place. */
  mergeNote(note) {
    const thread = this.current;
    if (!thread || thread.app !== note.app || thread.user !== note.user || thread.notes.has(note.id)) return;
    thread.notes.set(note.id, note);
    if (thread.ready) this.render("keep");
  }

  noteNode(note) {
    const rows = this.current.noteRows;
    if (!rows.has(note.id)) {
      const date = parseIso(note.created_at);
      rows.set(note.id, el("li", { class: "note", dataset: { noteId: note.id, author: note.author } },
        el("div", { class: "note-head" },
          el("span", { class: "note-label" }, t("Internal note")),
          el("span", { class: "note-author" }, note.author),
          el("time", { datetime: note.created_at || "", title: fullTime(date) }, clockTime(date))),
        el("div", { class: "note-text" }, note.text)));
    }
    return rows.get(note.id);
  }

  async addNote() {
    const thread = this.current;
    const text = this.noteText.value;
    if (!thread || !text.trim()) return;
    this.noteAdd.disabled = true;
    this.noteError.hidden = true;
    try {
      const note = await api.addNote(thread.app, thread.user, text);
      if (this.noteText.value === text) this.noteText.value = "";
      if (thread === this.current) {
        thread.notes.set(note.id, note);
        if (thread.ready) this.render("bottom");
      }
    } catch (err) {
      this.noteError.textContent = t("Note not added: {error}", { error: err.message });
      this.noteError.hidden = false;
    } finally {
      this.noteAdd.disabled = false;
    }
  }
}
