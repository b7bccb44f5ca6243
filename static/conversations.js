// The conversations panel: the list pane (conversations newest first, paged, folded live), its
// filters and search results, the app picker and the export links. Its entries open the thread
// pane, which it is given; the router shows it for "#/" and "#/c/<app>/<user>".

import { api, exportUrl } from "./api.js";
import { dayClock, el, fullTime, messageDate, parseIso, shortTime, t, timeFlag } from "./dom.js";
import { conversationUser, isGroupMessage, kfStateLabel, outboundPrefix, previewText, ruleOperator } from "./render.js";
import { conversationRoute } from "./router.js";

const $ = (id) => document.getElementById(id);
const APP_KEY = "wecomd.app";
const FILTER_KEY = "wecomd.filter";
const FILTERS = ["all", "mine", "unassigned", "unread"]; // /api/conversations?filter=
const CONVERSATION_PAGE = 100;
const MAX_PAGE = 500;
const RESULT_PAGE = 50;

/** True while automation is paused for this conversation (an operator took over). */
function pausedDate(conv) {
  const until = parseIso(conv && conv.paused_until);
  return until && until.getTime() > Date.now() ? until : null;
}

function highlight(text, query) {
  if (!query) return [text];
  const parts = [];
  const lower = text.toLowerCase();
  const needle = query.toLowerCase();
  let at = 0;
  let found;
  while (needle && (found = lower.indexOf(needle, at)) !== -1) {
    parts.push(text.slice(at, found), el("mark", null, text.slice(found, found + needle.length)));
    at = found + needle.length;
  }
  parts.push(text.slice(at));
  return parts;
}

export class ConversationsView {
  /** apps: the configured apps as the page lists them; thread: the ThreadView; router: for the back button. */
  constructor({ apps, thread, router }) {
    this.apps = apps;
    this.thread = thread;
    this.router = router;
    this.app = "";
    this.listFilter = "all"; // the list's filter: all, mine (assigned to me), unassigned, unread
    this.names = new Map(); // "app\nuser" -> a contact name that arrived live (noteContact)
    this.me = document.body.dataset.user || "";
    this.msgtype = "";
    this.q = "";
    this.conversations = [];
    this.next = null; // the cursor of the next page of conversations, null when all are here
    this.results = [];
    this.resultsNext = null;
    this.resultsSeq = 0;
    this.listError = "";
    this.seq = 0;
    this.notedWhileLoading = null; // live messages folded in while a list request is on its way
    this.loadingMore = false;
    this.reloadTimer = null;
    this.pauseExpiryTimer = null;
    this.connectedOnce = false;
    this.navigatedInApp = false;
    this.lastConversation = "";
    this.visible = false;
    this.bindFilters();
    this.bindNavigation();
  }

  // ---------------------------------------------------------------- the router's side

  show(route) {
    this.visible = true;
    $("main-view").hidden = false;
    if (route.conversation) {
      this.thread.open(route.conversation[0], route.conversation[1]);
      document.body.classList.add("thread-open");
      this.lastConversation = window.location.hash;
    } else {
      this.closeThread();
    }
    this.render();
  }

  hide() {
    this.visible = false;
    this.closeThread();
    $("main-view").hidden = true;
  }

  /** The conversations tab returns to the conversation last open. */
  tabHref() {
    return this.lastConversation || "#/";
  }

  closeThread() {
    this.thread.close();
    document.body.classList.remove("thread-open");
  }

  bindNavigation() {
    document.addEventListener("click", (event) => {
      if (event.target.closest("a.conv, a.result")) this.navigatedInApp = true;
    });
    $("nav-conversations").addEventListener("click", (event) => {
      if (!this.visible) return;
      // Already on the conversations. A phone shows one pane at a time: back to the list.
      event.preventDefault();
      if (this.thread.current && window.matchMedia("(max-width: 760px)").matches) $("back").click();
    });
    $("back").addEventListener("click", () => {
      this.lastConversation = "";
      if (this.navigatedInApp) window.history.back();
      else this.router.replace("");
    });
  }

  // ---------------------------------------------------------------- the list

  find(app, user) {
    return this.conversations.find((c) => c.app === app && c.user === user);
  }

  /** Whether the list already counts this message (its conversation's newest is as new). */
  knows(message) {
    return this.conversations.some((c) => c.last_id >= message.id);
  }

  /** The first page of conversations again, as long as the list already shown (up to MAX_PAGE). */
  async load() {
    const seq = ++this.seq;
    const noted = this.notedWhileLoading = [];
    const limit = Math.min(MAX_PAGE, Math.max(CONVERSATION_PAGE, this.conversations.length));
    try {
      const data = await api.conversations(this.app, { limit, filter: this.listFilter });
      if (seq !== this.seq) return; // a newer request was sent meanwhile: its answer counts
      this.notedWhileLoading = null;
      this.conversations = data.conversations || [];
      this.next = data.next || null;
      this.listError = "";
      // The answer may predate a message the websocket just delivered: fold those in again
      // (a message the answer already counts is older than its conversation's last_id: no change).
      for (const message of noted) this.noteMessage(message);
    } catch (err) {
      if (seq !== this.seq) return;
      this.notedWhileLoading = null;
      this.listError = err.message;
    }
    this.render();
  }

  /** The next page of conversations, older ones, appended below the list. */
  async loadMore() {
    if (!this.next || this.loadingMore) return;
    const seq = this.seq; // a reload of the list meanwhile makes this page stale
    this.loadingMore = true;
    try {
      const data = await api.conversations(this.app, { before: this.next, limit: CONVERSATION_PAGE, filter: this.listFilter });
      if (seq !== this.seq) return;
      for (const conv of data.conversations || []) {
        if (!this.find(conv.app, conv.user)) this.conversations.push(conv);
      }
      this.next = data.next || null;
      this.listError = "";
    } catch (err) {
      if (seq !== this.seq) return;
      this.listError = err.message;
    } finally {
      this.loadingMore = false;
    }
    this.render();
  }

  /** Several reasons to re-fetch the list in quick succession make one request. */
  reloadSoon(delay) {
    window.clearTimeout(this.reloadTimer);
    this.reloadTimer = window.setTimeout(() => this.load(), delay);
  }

  /** After each (re)connect of the live feed: fetch again what may have been missed. */
  refresh() {
    this.load();
    if (this.connectedOnce && this.filterActive()) this.loadResults(false);
    this.connectedOnce = true;
  }

  /** A message from the live feed; `isNew`: the list did not count it yet. */
  mergeLive(message, isNew) {
    // Another operator's manual reply pauses automation for that user: show it in the list.
    if (message.direction === "out" && message.operator && ruleOperator(message) === null && isNew) {
      this.reloadSoon(400);
    }
    this.noteMessage(message);
    const index = this.results.findIndex((m) => m.id === message.id);
    if (index !== -1) this.results[index] = message;
  }

  /** A reply sent from the thread. */
  sent(message) {
    this.noteMessage(message);
    // A manual reply starts (or extends) the human takeover: fetch the list for its paused_until.
    this.load();
  }

  markRead(app, user) {
    const conv = this.find(app, user);
    if (conv) conv.unread = 0;
    this.render();
  }

  resumed(app, user) {
    const conv = this.find(app, user);
    if (conv) conv.paused_until = null;
    this.render();
    this.load();
  }

  /** Fold one stored message (live or just sent) into the conversation list. */
  noteMessage(message) {
    if (this.notedWhileLoading) this.notedWhileLoading.push(message);
    if (this.app && message.app !== this.app) return;
    const user = conversationUser(message);
    if (!user) return;
    let conv = this.find(message.app, user);
    if (!conv && this.listFilter !== "all") {
      // Only the server knows whether that conversation is in the filter (its assignee): ask it when
      // the message may have put it there (a new conversation is unassigned; an inbound one is unread).
      if (this.listFilter === "unassigned" || (this.listFilter === "unread" && message.direction === "in")) this.reloadSoon(300);
      return;
    }
    if (!conv) {
      conv = { app: message.app, user, count: 0, unread: 0, last_id: 0, last_message: null, assignee: null, state: "open" };
      this.conversations.push(conv);
      // It may be an older conversation on a page not loaded yet: fetch its true counts.
      if (this.next) this.reloadSoon(300);
    }
    if (message.direction === "in" && isGroupMessage(message)) conv.chat = "group"; // a bot's group chat
    if (message.user_name && !conv.user_name) conv.user_name = message.user_name; // e.g. a 微信客服 customer
    if (message.id > conv.last_id) {
      conv.count += 1;
      conv.last_id = message.id;
      conv.last_message = message;
      const reading = this.thread.isOpen(message.app, user) && document.visibilityState === "visible";
      if (message.direction === "in" && !reading) conv.unread += 1;
      // A new inbound message reopens a closed conversation (the server derives it the same way).
      if (message.direction === "in" && conv.state === "closed") conv.state = "open";
    } else if (conv.last_message && conv.last_message.id === message.id) {
      conv.last_message = message;
    }
    this.conversations.sort((a, b) => b.last_id - a.last_id);
    this.render();
  }

  /** A contact's name arrived (a live "contact" event): show it instead of the UserID. */
  noteContact(event) {
    // Kept for rows not loaded yet too: the name may arrive before the list that shows it.
    this.names.set(event.app + "\n" + event.user, event.user_name);
    const conv = this.find(event.app, event.user);
    if (!conv || conv.user_name === event.user_name) return;
    conv.user_name = event.user_name;
    this.render();
  }

  nameOf(conv) {
    return conv.user_name || this.names.get(conv.app + "\n" + conv.user) || null;
  }

  /** How many unread inbound messages the loaded conversations hold (the tab title shows it). */
  unreadTotal() {
    return this.conversations.reduce((sum, conv) => sum + (conv.unread > 0 ? conv.unread : 0), 0);
  }

  /** Whether a new message of (app, user) is for the one signed in: assigned to them, or to nobody. */
  isMineOrUnassigned(app, user) {
    const conv = this.find(app, user);
    return !conv || !conv.assignee || conv.assignee === this.me;
  }

  /** A conversation assigned, unassigned, opened or closed (a live event, or this page's own change). */
  /** A 微信客服 session changed (a live "kf_session" event): its row's state tag follows. */
  noteKfSession(event) {
    const conv = this.find(event.app, event.user);
    if (!conv) return;
    conv.kf = { ...(conv.kf || {}), ...event.kf };
    this.render();
  }

  noteAssignment(change) {
    if (this.app && change.app !== this.app) return;
    const conv = this.find(change.app, change.user);
    if (conv) Object.assign(conv, { assignee: change.assignee, state: change.state });
    const wanted = this.listFilter === "mine" ? change.assignee === this.me
      : this.listFilter === "unassigned" ? change.assignee === null : !!conv;
    if (wanted !== !!conv) this.reloadSoon(300); // it joins or leaves the filtered list
    this.render();
  }

  /** The assignee and state of a row: who has it ("me" for the one signed in), open or closed. */
  teamTags(conv) {
    const state = conv.state === "closed" ? "closed" : "open";
    return [
      conv.assignee
        ? el("span", { class: "assignee-tag" + (conv.assignee === this.me ? " mine" : ""),
          title: t("Assigned to {name}", { name: conv.assignee }) }, conv.assignee === this.me ? t("me") : conv.assignee)
        : null,
      el("span", { class: "state-tag state-" + state }, state === "closed" ? t("Closed") : t("Open")),
    ];
  }

  item(conv) {
    const last = conv.last_message || {};
    const date = messageDate(last);
    const open = this.thread.isOpen(conv.app, conv.user);
    const showApp = this.apps.length > 1 && !this.app;
    const paused = pausedDate(conv);
    return el("li", null,
      el("a", {
        class: "conv" + (conv.unread > 0 ? " has-unread" : ""),
        href: conversationRoute(conv.app, conv.user),
        "aria-current": open ? "true" : null,
        dataset: { app: conv.app, user: conv.user, assignee: conv.assignee || "", state: conv.state || "open" },
      },
      el("span", { class: "avatar", "aria-hidden": "true" },
        (this.nameOf(conv) || conv.user || "?").slice(0, 1).toUpperCase()),
      el("span", { class: "conv-main" },
        el("span", { class: "conv-top" },
          // The contact's name when the directory knows it (handlers/contacts.py), the UserID beside it.
          el("span", { class: "conv-user", title: conv.user || "" }, this.nameOf(conv) || conv.user),
          this.nameOf(conv) ? el("span", { class: "conv-userid" }, conv.user) : null,
          showApp ? el("span", { class: "app-tag" }, conv.app) : null,
          conv.chat === "group"
            ? el("span", { class: "chat-tag", title: t("A group chat of the bot: its messages show each sender") }, t("Group")) : null,
          conv.kf ? el("span", { class: "kf-tag", title: t("WeChat Customer Service session") },
            Number.isInteger(conv.kf.service_state) ? kfStateLabel(conv.kf.service_state, conv.kf.servicer_userid)
              : t("WeChat Customer Service")) : null,
          paused ? el("span", {
            class: "paused-tag", title: t("Automation paused until {time} (human takeover)", { time: dayClock(paused) }),
          }, t("paused")) : null,
          el("time", { class: "conv-time", title: fullTime(date) }, shortTime(date)),
          timeFlag(last)),
        el("span", { class: "conv-bottom" },
          el("span", { class: "conv-preview" }, outboundPrefix(last), previewText(last)),
          this.teamTags(conv),
          conv.unread > 0
            ? el("span", { class: "badge", title: t("{n} unread", { n: conv.unread }) }, conv.unread > 99 ? "99+" : String(conv.unread))
            : null))));
  }

  render() {
    const list = $("conversations");
    const filtering = this.filterActive();
    list.hidden = filtering;
    $("results").hidden = !filtering;
    $("results-more").hidden = !filtering || !this.resultsNext;
    $("conversations-more").hidden = filtering || !this.next;
    $("list-title").textContent = filtering ? t("{n} results", { n: this.results.length }) : t("Conversations");
    $("clear-filters").hidden = !filtering;
    list.replaceChildren(...this.conversations.map((conv) => this.item(conv)));
    const empty = $("list-empty");
    empty.textContent = this.listError
      || (filtering ? (this.results.length ? "" : t("No messages match."))
        : (this.conversations.length ? ""
          : this.listFilter !== "all" ? t("No conversations match this filter.")
            : t("No conversations yet. Messages appear here as soon as WeCom delivers them.")));
    empty.hidden = !empty.textContent;
    empty.classList.toggle("error", !!this.listError);
    const unread = this.conversations.reduce((sum, c) => sum + (c.unread || 0), 0);
    document.title = (unread ? "(" + unread + ") " : "") + document.body.dataset.title;
    if (this.thread.current) {
      const open = this.find(this.thread.current.app, this.thread.current.user);
      if (open) this.thread.setPaused(open.paused_until);
    }
    this.schedulePauseExpiry();
  }

  /** Redraw the list when the next pause ends, so its "paused" marker goes away by itself. */
  schedulePauseExpiry() {
    window.clearTimeout(this.pauseExpiryTimer);
    const ends = this.conversations.map(pausedDate).filter(Boolean).map((d) => d.getTime());
    if (ends.length === 0) return;
    const wait = Math.min(...ends) - Date.now() + 500;
    this.pauseExpiryTimer = window.setTimeout(() => this.render(), Math.max(500, Math.min(wait, 2 ** 31 - 1)));
  }

  // ---------------------------------------------------------------- filters and search results

  filterActive() {
    return !!(this.q || this.msgtype);
  }

  resultItem(message) {
    const user = conversationUser(message) || "?";
    const date = messageDate(message);
    return el("li", null,
      el("a", { class: "result", href: conversationRoute(message.app, user), dataset: { id: message.id } },
        el("span", { class: "conv-top" },
          el("span", { class: "conv-user", title: user }, message.user_name || user),
          this.apps.length > 1 ? el("span", { class: "app-tag" }, message.app) : null,
          el("time", { class: "conv-time", title: fullTime(date) }, shortTime(date)),
          timeFlag(message)),
        el("span", { class: "result-text" },
          outboundPrefix(message), highlight(previewText(message), this.q))));
  }

  async loadResults(more) {
    const seq = ++this.resultsSeq;
    const params = { app: this.app, msgtype: this.msgtype, q: this.q, limit: RESULT_PAGE };
    if (more) params.before = this.resultsNext;
    try {
      const data = await api.messages(params);
      if (seq !== this.resultsSeq) return;
      this.results = more ? this.results.concat(data.messages) : data.messages;
      this.resultsNext = data.next;
      this.listError = "";
    } catch (err) {
      if (seq !== this.resultsSeq) return;
      this.listError = err.message;
    }
    $("results").replaceChildren(...this.results.map((message) => this.resultItem(message)));
    this.render();
  }

  updateExportLinks() {
    const params = { app: this.app, msgtype: this.msgtype, q: this.q };
    $("export-jsonl").setAttribute("href", exportUrl(params, "jsonl"));
    $("export-csv").setAttribute("href", exportUrl(params, "csv"));
  }

  applyFilters() {
    this.q = $("q").value.trim();
    this.msgtype = $("msgtype").value;
    this.updateExportLinks();
    if (this.filterActive()) {
      this.loadResults(false);
    } else {
      this.resultsSeq += 1;
      this.results = [];
      this.resultsNext = null;
      this.render();
    }
  }

  bindFilters() {
    let timer = null;
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      window.clearTimeout(timer);
      this.applyFilters();
    });
    $("q").addEventListener("input", () => {
      window.clearTimeout(timer);
      timer = window.setTimeout(() => this.applyFilters(), 350);
    });
    $("msgtype").addEventListener("change", () => this.applyFilters());
    $("clear-filters").addEventListener("click", () => {
      $("q").value = "";
      $("msgtype").value = "";
      this.applyFilters();
    });
    $("results-more").addEventListener("click", () => this.loadResults(true));
    $("conversations-more").addEventListener("click", () => this.loadMore());
    this.bindShow();
    const select = $("app-filter");
    const saved = window.localStorage.getItem(APP_KEY) || "";
    if (this.apps.some((app) => app.name === saved)) select.value = saved;
    this.app = select.value;
    select.addEventListener("change", () => {
      this.app = select.value;
      window.localStorage.setItem(APP_KEY, this.app);
      this.updateExportLinks();
      this.load();
      if (this.filterActive()) this.loadResults(false);
    });
    this.updateExportLinks();
  }

  /** The mine / unassigned / all / unread buttons above the list (remembered in this browser). */
  bindShow() {
    const buttons = [...$("conv-filter").querySelectorAll("button[data-filter]")];
    const saved = window.localStorage.getItem(FILTER_KEY);
    const press = () => {
      for (const button of buttons) button.setAttribute("aria-pressed", String(button.dataset.filter === this.listFilter));
    };
    if (FILTERS.includes(saved)) this.listFilter = saved;
    press();
    for (const button of buttons) {
      button.addEventListener("click", () => {
        if (this.listFilter === button.dataset.filter) return;
        this.listFilter = button.dataset.filter;
        window.localStorage.setItem(FILTER_KEY, this.listFilter);
        press();
        // Another list: drop the one shown, so that none of its rows linger while it loads.
        this.conversations = [];
        this.next = null;
        this.render();
        this.load();
      });
    }
  }
}
