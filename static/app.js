// The dashboard: conversation list, filters and search, routing, and the live connection.

import { api, exportUrl, toLogin } from "./api.js";
import { dayClock, el, fullTime, loadStrings, messageDate, parseIso, shortTime, t, timeFlag } from "./dom.js";
import { connectLive } from "./live.js";
import { conversationUser, outboundPrefix, previewText, ruleOperator } from "./render.js";
import { RulesView } from "./rules.js";
import { ThreadView } from "./thread.js";

loadStrings();

const $ = (id) => document.getElementById(id);
const APP_KEY = "wecomd.app";

const state = {
  apps: readApps(),
  app: "",
  msgtype: "",
  q: "",
  conversations: [],
  conversationsNext: null, // the cursor of the next page of conversations, null when all are here
  results: [],
  resultsNext: null,
  resultsSeq: 0,
  listError: "",
  connectedOnce: false,
  navigatedInApp: false,
  lastConversation: "",
};

function readApps() {
  try {
    const apps = JSON.parse(document.body.dataset.apps || "[]");
    return Array.isArray(apps) ? apps : [];
  } catch (err) {
    return [];
  }
}

const thread = new ThreadView({
  appInfo: (name) => state.apps.find((app) => app.name === name),
  onRead: (app, user) => {
    const conv = findConversation(app, user);
    if (conv) conv.unread = 0;
    renderConversations();
  },
  onSent: (message) => {
    noteMessage(message);
    // A manual reply starts (or extends) the human takeover: fetch the list for its paused_until.
    loadConversations();
  },
  onResumed: (app, user) => {
    const conv = findConversation(app, user);
    if (conv) conv.paused_until = null;
    renderConversations();
    loadConversations();
  },
});

const rules = new RulesView();

// ------------------------------------------------------------------ conversations

const convKey = (app, user) => app + "\u0000" + user;

function findConversation(app, user) {
  return state.conversations.find((c) => c.app === app && c.user === user);
}

let conversationsSeq = 0;
let notedWhileLoading = null; // live messages folded in while a list request is on its way
const CONVERSATION_PAGE = 100;
const MAX_PAGE = 500;

/** The first page of conversations again, as long as the list already shown (up to MAX_PAGE). */
async function loadConversations() {
  const seq = ++conversationsSeq;
  const noted = notedWhileLoading = [];
  const limit = Math.min(MAX_PAGE, Math.max(CONVERSATION_PAGE, state.conversations.length));
  try {
    const data = await api.conversations(state.app, { limit });
    if (seq !== conversationsSeq) return; // a newer request was sent meanwhile: its answer counts
    notedWhileLoading = null;
    state.conversations = data.conversations || [];
    state.conversationsNext = data.next || null;
    state.listError = "";
    // The answer may predate a message the websocket just delivered: fold those in again
    // (a message the answer already counts is older than its conversation's last_id: no change).
    for (const message of noted) noteMessage(message);
  } catch (err) {
    if (seq !== conversationsSeq) return;
    notedWhileLoading = null;
    state.listError = err.message;
  }
  renderConversations();
}

/** The next page of conversations, older ones, appended below the list. */
let loadingMore = false;
async function loadMoreConversations() {
  if (!state.conversationsNext || loadingMore) return;
  const seq = conversationsSeq; // a reload of the list meanwhile makes this page stale
  loadingMore = true;
  try {
    const data = await api.conversations(state.app, { before: state.conversationsNext, limit: CONVERSATION_PAGE });
    if (seq !== conversationsSeq) return;
    for (const conv of data.conversations || []) {
      if (!findConversation(conv.app, conv.user)) state.conversations.push(conv);
    }
    state.conversationsNext = data.next || null;
    state.listError = "";
  } catch (err) {
    if (seq !== conversationsSeq) return;
    state.listError = err.message;
  } finally {
    loadingMore = false;
  }
  renderConversations();
}

/** Several reasons to re-fetch the list in quick succession make one request. */
let conversationsTimer = null;
function reloadConversationsSoon(delay) {
  window.clearTimeout(conversationsTimer);
  conversationsTimer = window.setTimeout(loadConversations, delay);
}

/** True while automation is paused for this conversation (an operator took over). */
function pausedDate(conv) {
  const until = parseIso(conv && conv.paused_until);
  return until && until.getTime() > Date.now() ? until : null;
}

/** Fold one stored message (live or just sent) into the conversation list. */
function noteMessage(message) {
  if (notedWhileLoading) notedWhileLoading.push(message);
  if (state.app && message.app !== state.app) return;
  const user = conversationUser(message);
  if (!user) return;
  let conv = findConversation(message.app, user);
  if (!conv) {
    conv = { app: message.app, user, count: 0, unread: 0, last_id: 0, last_message: null };
    state.conversations.push(conv);
    // It may be an older conversation on a page not loaded yet: fetch its true counts.
    if (state.conversationsNext) reloadConversationsSoon(300);
  }
  if (message.id > conv.last_id) {
    conv.count += 1;
    conv.last_id = message.id;
    conv.last_message = message;
    const reading = thread.isOpen(message.app, user) && document.visibilityState === "visible";
    if (message.direction === "in" && !reading) conv.unread += 1;
  } else if (conv.last_message && conv.last_message.id === message.id) {
    conv.last_message = message;
  }
  state.conversations.sort((a, b) => b.last_id - a.last_id);
  renderConversations();
}

function conversationItem(conv) {
  const last = conv.last_message || {};
  const date = messageDate(last);
  const open = thread.isOpen(conv.app, conv.user);
  const showApp = state.apps.length > 1 && !state.app;
  const paused = pausedDate(conv);
  return el("li", null,
    el("a", {
      class: "conv" + (conv.unread > 0 ? " has-unread" : ""),
      href: routeFor(conv.app, conv.user),
      "aria-current": open ? "true" : null,
      dataset: { app: conv.app, user: conv.user },
    },
    el("span", { class: "avatar", "aria-hidden": "true" }, (conv.user || "?").slice(0, 1).toUpperCase()),
    el("span", { class: "conv-main" },
      el("span", { class: "conv-top" },
        el("span", { class: "conv-user" }, conv.user),
        showApp ? el("span", { class: "app-tag" }, conv.app) : null,
        paused ? el("span", {
          class: "paused-tag", title: t("Automation paused until {time} (human takeover)", { time: dayClock(paused) }),
        }, t("paused")) : null,
        el("time", { class: "conv-time", title: fullTime(date) }, shortTime(date)),
        timeFlag(last)),
      el("span", { class: "conv-bottom" },
        el("span", { class: "conv-preview" }, outboundPrefix(last), previewText(last)),
        conv.unread > 0
          ? el("span", { class: "badge", title: t("{n} unread", { n: conv.unread }) }, conv.unread > 99 ? "99+" : String(conv.unread))
          : null))));
}

function renderConversations() {
  const list = $("conversations");
  const filtering = filterActive();
  list.hidden = filtering;
  $("results").hidden = !filtering;
  $("results-more").hidden = !filtering || !state.resultsNext;
  $("conversations-more").hidden = filtering || !state.conversationsNext;
  $("list-title").textContent = filtering ? t("{n} results", { n: state.results.length }) : t("Conversations");
  $("clear-filters").hidden = !filtering;
  list.replaceChildren(...state.conversations.map(conversationItem));
  const empty = $("list-empty");
  empty.textContent = state.listError
    || (filtering ? (state.results.length ? "" : t("No messages match."))
      : (state.conversations.length ? "" : t("No conversations yet. Messages appear here as soon as WeCom delivers them.")));
  empty.hidden = !empty.textContent;
  empty.classList.toggle("error", !!state.listError);
  const unread = state.conversations.reduce((sum, c) => sum + (c.unread || 0), 0);
  document.title = (unread ? "(" + unread + ") " : "") + document.body.dataset.title;
  if (thread.current) {
    const open = findConversation(thread.current.app, thread.current.user);
    if (open) thread.setPaused(open.paused_until);
  }
  schedulePauseExpiry();
}

/** Redraw the list when the next pause ends, so its "paused" marker goes away by itself. */
let pauseExpiryTimer = null;
function schedulePauseExpiry() {
  window.clearTimeout(pauseExpiryTimer);
  const ends = state.conversations.map(pausedDate).filter(Boolean).map((d) => d.getTime());
  if (ends.length === 0) return;
  const wait = Math.min(...ends) - Date.now() + 500;
  pauseExpiryTimer = window.setTimeout(renderConversations, Math.max(500, Math.min(wait, 2 ** 31 - 1)));
}

// ------------------------------------------------------------------ filters and search results

function filterActive() {
  return !!(state.q || state.msgtype);
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

function resultItem(message) {
  const user = conversationUser(message) || "?";
  const date = messageDate(message);
  return el("li", null,
    el("a", { class: "result", href: routeFor(message.app, user), dataset: { id: message.id } },
      el("span", { class: "conv-top" },
        el("span", { class: "conv-user" }, user),
        state.apps.length > 1 ? el("span", { class: "app-tag" }, message.app) : null,
        el("time", { class: "conv-time", title: fullTime(date) }, shortTime(date)),
        timeFlag(message)),
      el("span", { class: "result-text" },
        outboundPrefix(message), highlight(previewText(message), state.q))));
}

async function loadResults(more) {
  const seq = ++state.resultsSeq;
  const params = { app: state.app, msgtype: state.msgtype, q: state.q, limit: 50 };
  if (more) params.before = state.resultsNext;
  try {
    const data = await api.messages(params);
    if (seq !== state.resultsSeq) return;
    state.results = more ? state.results.concat(data.messages) : data.messages;
    state.resultsNext = data.next;
    state.listError = "";
  } catch (err) {
    if (seq !== state.resultsSeq) return;
    state.listError = err.message;
  }
  $("results").replaceChildren(...state.results.map(resultItem));
  renderConversations();
}

function updateExportLinks() {
  const params = { app: state.app, msgtype: state.msgtype, q: state.q };
  $("export-jsonl").setAttribute("href", exportUrl(params, "jsonl"));
  $("export-csv").setAttribute("href", exportUrl(params, "csv"));
}

function applyFilters() {
  state.q = $("q").value.trim();
  state.msgtype = $("msgtype").value;
  updateExportLinks();
  if (filterActive()) {
    loadResults(false);
  } else {
    state.resultsSeq += 1;
    state.results = [];
    state.resultsNext = null;
    renderConversations();
  }
}

function bindFilters() {
  let timer = null;
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    window.clearTimeout(timer);
    applyFilters();
  });
  $("q").addEventListener("input", () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(applyFilters, 350);
  });
  $("msgtype").addEventListener("change", applyFilters);
  $("clear-filters").addEventListener("click", () => {
    $("q").value = "";
    $("msgtype").value = "";
    applyFilters();
  });
  $("results-more").addEventListener("click", () => loadResults(true));
  $("conversations-more").addEventListener("click", loadMoreConversations);
  const select = $("app-filter");
  const saved = window.localStorage.getItem(APP_KEY) || "";
  if (state.apps.some((app) => app.name === saved)) select.value = saved;
  state.app = select.value;
  select.addEventListener("change", () => {
    state.app = select.value;
    window.localStorage.setItem(APP_KEY, state.app);
    updateExportLinks();
    loadConversations();
    if (filterActive()) loadResults(false);
  });
  updateExportLinks();
}

// ------------------------------------------------------------------ routing: #/c/<app>/<user>, #/rules

function routeFor(app, user) {
  return "#/c/" + encodeURIComponent(app) + "/" + encodeURIComponent(user);
}

/** The top bar's two views: the conversations tab returns to the conversation last open. */
function showView(name) {
  const onRules = name === "rules";
  document.body.classList.toggle("rules-open", onRules);
  $("main-view").hidden = onRules;
  $("rules-view").hidden = !onRules;
  $("nav-conversations").setAttribute("aria-current", onRules ? "false" : "page");
  $("nav-rules").setAttribute("aria-current", onRules ? "page" : "false");
  $("nav-conversations").setAttribute("href", state.lastConversation || "#/");
  if (onRules) rules.show();
  else rules.hide();
}

function route() {
  if (window.location.hash === "#/rules") {
    // Switching the language reloads the page: come back to the same view.
    for (const input of document.querySelectorAll("form.lang input[name=next]")) {
      input.value = window.location.pathname + window.location.hash;
    }
    thread.close();
    document.body.classList.remove("thread-open");
    showView("rules");
    return;
  }
  showView("conversations");
  const match = /^#\/c\/([^/]*)\/(.*)$/.exec(window.location.hash);
  let target = null;
  if (match) {
    try {
      target = [decodeURIComponent(match[1]), decodeURIComponent(match[2])];
    } catch (err) {
      target = null;
    }
  }
  // Switching the language reloads the page: come back to the same conversation.
  for (const input of document.querySelectorAll("form.lang input[name=next]")) {
    input.value = window.location.pathname + window.location.hash;
  }
  if (target) {
    thread.open(target[0], target[1]);
    document.body.classList.add("thread-open");
    state.lastConversation = window.location.hash;
  } else {
    thread.close();
    document.body.classList.remove("thread-open");
  }
  renderConversations();
}

function bindRouting() {
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.conv, a.result");
    if (link) state.navigatedInApp = true;
  });
  window.addEventListener("hashchange", route);
  $("nav-conversations").addEventListener("click", (event) => {
    if (document.body.classList.contains("rules-open")) return;
    // Already on the conversations. A phone shows one pane at a time: back to the list.
    event.preventDefault();
    if (thread.current && window.matchMedia("(max-width: 760px)").matches) $("back").click();
  });
  $("back").addEventListener("click", () => {
    state.lastConversation = "";
    if (state.navigatedInApp) {
      window.history.back();
    } else {
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
      route();
    }
  });
}

// ------------------------------------------------------------------ live updates

const CONNECTION_TEXT = {
  connecting: () => t("Connecting…"),
  live: () => t("Live"),
  offline: (delay) => t("Offline, retrying in {n} s", { n: Math.max(1, Math.round(delay / 1000)) }),
};

function onLiveEvent(data) {
  if (data.type === "message" && data.message) {
    const message = data.message;
    const known = state.conversations.some((c) => c.last_id >= message.id);
    const ranRules = Array.isArray(message.automation) && message.automation.length > 0;
    // Rules counted a hit: refresh the table. A new inbound message may fire rules a moment later.
    if (ranRules || ruleOperator(message) !== null) rules.changed(300);
    else if (message.direction === "in" && !known) rules.changed(2500);
    // Another operator's manual reply pauses automation for that user: show it in the list.
    if (message.direction === "out" && message.operator && ruleOperator(message) === null && !known) {
      reloadConversationsSoon(400);
    }
    noteMessage(data.message);
    thread.mergeLive(data.message);
    const index = state.results.findIndex((m) => m.id === data.message.id);
    if (index !== -1) state.results[index] = data.message;
  } else if (data.type === "status") {
    thread.setStatus(data.id, data.status, data.error);
  }
}

function onLiveOpen() {
  // Anything stored while disconnected (or before the first connect) is fetched again.
  loadConversations();
  thread.catchUp();
  rules.changed(0);
  if (state.connectedOnce && filterActive()) loadResults(false);
  state.connectedOnce = true;
}

function onLiveState(name, delay) {
  const indicator = $("conn");
  indicator.className = "conn conn-" + name;
  indicator.dataset.state = name;
  $("conn-text").textContent = CONNECTION_TEXT[name](delay);
}

function onLiveDrop() {
  // A closed socket may mean the session ended: a cheap API call redirects to the login page.
  api.apps().catch(() => {});
}

function start() {
  bindFilters();
  bindRouting();
  route();
  loadConversations();
  connectLive({ onEvent: onLiveEvent, onOpen: onLiveOpen, onState: onLiveState, onDrop: onLiveDrop });
}

if (!document.body.dataset.xsrf) toLogin();
else start();
