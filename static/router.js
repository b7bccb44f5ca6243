// The dashboard's one router. The location hash names the view: "#/" the conversations,
// "#/c/<app>/<user>" the conversations with one open, "#/rules" the rules, "#/operators" and
// "#/audit" the admins' pages; anything else is "#/".
// app.js mounts each panel's view with its tab in the top bar. A mounted view has show(route) and
// hide(), and may name where its tab leads (tabHref()); this module imports no view.

/** The hash of one conversation. */
export function conversationRoute(app, user) {
  return "#/c/" + encodeURIComponent(app) + "/" + encodeURIComponent(user);
}

/** {view, conversation: [app, user] or null} for a location hash. */
export function parseRoute(hash) {
  if (hash === "#/rules") return { view: "rules", conversation: null };
  if (hash === "#/operators") return { view: "operators", conversation: null };
  if (hash === "#/audit") return { view: "audit", conversation: null };
  const match = /^#\/c\/([^/]*)\/(.*)$/.exec(hash);
  let conversation = null;
  if (match) {
    try {
      conversation = [decodeURIComponent(match[1]), decodeURIComponent(match[2])];
    } catch (err) {
      conversation = null; // a malformed %-escape: the list, not an error
    }
  }
  return { view: "conversations", conversation };
}

export class Router {
  constructor() {
    this.mounted = new Map(); // view name -> {view, tab}
  }

  /** Mount `view` under `name`; `tabId` is its link in the top bar. */
  mount(name, view, tabId) {
    this.mounted.set(name, { view, tab: document.getElementById(tabId) });
  }

  start() {
    window.addEventListener("hashchange", () => this.route());
    this.route();
  }

  /** Show the view the hash names and hide the others. */
  route() {
    const route = parseRoute(window.location.hash);
    // Switching the language reloads the page: come back to the same view and conversation.
    for (const input of document.querySelectorAll("form.lang input[name=next]")) {
      input.value = window.location.pathname + window.location.hash;
    }
    // A view this page did not mount (an admin's page for another role): the conversations.
    const shown = this.mounted.get(route.view) || this.mounted.get("conversations");
    for (const entry of this.mounted.values()) {
      if (entry !== shown) entry.view.hide();
    }
    shown.view.show(route);
    for (const { view, tab } of this.mounted.values()) {
      tab.setAttribute("aria-current", view === shown.view ? "page" : "false");
      if (view.tabHref) tab.setAttribute("href", view.tabHref());
    }
  }

  /** Go to `hash` ("" for the page itself) without a new history entry. */
  replace(hash) {
    window.history.replaceState(null, "", window.location.pathname + window.location.search + hash);
    this.route();
  }
}
