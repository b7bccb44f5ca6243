// The dashboard's entry point: reads the page, builds each panel's view, mounts the views in the
// router and starts the live feed, whose events it hands to the panels that show them.
//   conversations.js  the list pane, filters, search results   (handlers/conversations.py)
//   thread.js         the open conversation and its reply box   (handlers/thread.py)
//   rules.js          the rules and what each has done          (handlers/rules.py)
//   live.js           the live feed and its indicator           (handlers/live.py)
//   router.js         which view the location hash shows

import { toLogin } from "./api.js";
import { ConversationsView } from "./conversations.js";
import { loadStrings } from "./dom.js";
import { startLive } from "./live.js";
import { Notifier } from "./notify.js";
import { Router } from "./router.js";
import { RulesView } from "./rules.js";
import { AuditView, OperatorsView } from "./team.js";
import { ThreadView } from "./thread.js";

/** The configured apps the page was rendered with (never a secret: handlers/dashboard.public_apps). */
function readApps() {
  try {
    const apps = JSON.parse(document.body.dataset.apps || "[]");
    return Array.isArray(apps) ? apps : [];
  } catch (err) {
    return [];
  }
}

function start() {
  loadStrings();
  const apps = readApps();
  const router = new Router();
  const thread = new ThreadView({
    appInfo: (name) => apps.find((app) => app.name === name),
    onRead: (app, user) => conversations.markRead(app, user),
    onSent: (message) => conversations.sent(message),
    onResumed: (app, user) => conversations.resumed(app, user),
    onAssigned: (change) => conversations.noteAssignment(change),
  });
  const conversations = new ConversationsView({ apps, thread, router });
  const rules = new RulesView();
  const notifier = new Notifier({
    isMineOrUnassigned: (app, user) => conversations.isMineOrUnassigned(app, user),
    isReading: (app, user) => thread.isOpen(app, user),
  });
  // The tab title's unread count follows the list however it changed (live, read marks, reloads).
  window.setInterval(() => notifier.title(conversations.unreadTotal()), 1000);
  router.mount("conversations", conversations, "nav-conversations");
  router.mount("rules", rules, "nav-rules");
  if (document.body.dataset.role === "admin") {
    // The admins' pages; for anyone else the tabs stay hidden (and the server answers 403).
    router.mount("operators", new OperatorsView({ apps }), "nav-operators");
    router.mount("audit", new AuditView(), "nav-audit");
    for (const tab of document.querySelectorAll(".admin-only")) tab.hidden = false;
  }
  router.start();
  conversations.load();
  startLive({
    onEvent: (data) => {
      if (data.type === "message" && data.message) {
        const isNew = !conversations.knows(data.message); // asked before the list folds it in
        rules.noteMessage(data.message, isNew);
        conversations.mergeLive(data.message, isNew);
        thread.mergeLive(data.message);
        notifier.message(data.message, isNew);
        notifier.title(conversations.unreadTotal());
      } else if (data.type === "status") {
        thread.setStatus(data.id, data.status, data.error);
      } else if (data.type === "assignment") {
        conversations.noteAssignment(data);
        thread.setTeam(data);
      } else if (data.type === "stream" && data.stream) {
        thread.mergeStream(data);
      } else if (data.type === "contact") {
        conversations.noteContact(data);
        thread.setContact(data);
      } else if (data.type === "kf_session" && data.kf) {
        conversations.noteKfSession(data);
        thread.setKfSession(data);
      } else if (data.type === "note" && data.note) {
        thread.mergeNote(data.note);
      }
    },
    onOpen: () => {
      // Anything stored while disconnected (or before the first connect) is fetched again.
      conversations.refresh();
      thread.catchUp();
      rules.changed(0);
    },
  });
}

if (!document.body.dataset.xsrf) toLogin();
else start();
