// The JSON API client: same-origin cookie session, XSRF header on every POST, {"error"} bodies.

import { t } from "./dom.js";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function xsrfToken() {
  return document.body.dataset.xsrf || "";
}

/** "/path?a=1&b=2", leaving out empty parameters. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? path + "?" + text : path;
}

/** The session is gone: back to the login page, returning here afterwards. */
export function toLogin() {
  window.location.assign(withQuery("/login", { next: window.location.pathname }));
}

async function request(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") {
    options.headers["X-XSRFToken"] = xsrfToken();
    if (body instanceof FormData) {
      options.body = body; // multipart/form-data: the browser writes the Content-Type and its boundary
    } else {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body === undefined ? {} : body);
    }
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(0, t("The server cannot be reached."));
  }
  if (response.status === 401) {
    toLogin();
    throw new ApiError(401, t("Your session has ended. Please sign in again."));
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : response.status + " " + response.statusText;
    throw new ApiError(response.status, message);
  }
  return data;
}

export const api = {
  apps: () => request("GET", "/api/apps"),
  conversations: (app, params) => request("GET", withQuery("/api/conversations", { app, ...params })),
  messages: (params) => request("GET", withQuery("/api/messages", params)),
  send: (app, toUser, content) =>
    request("POST", "/api/messages", { app, to_user: toUser, msgtype: "text", content }),
  retry: (id) => request("POST", "/api/messages/" + encodeURIComponent(id) + "/retry", {}),
  markRead: (app, user, upToId) =>
    request("POST", "/api/conversations/read", { app, user, up_to_id: upToId }),
  message: (id) => request("GET", "/api/messages/" + encodeURIComponent(id)),
  rules: () => request("GET", "/api/rules"),
  resume: (app, user) => request("POST", "/api/takeover/resume", { app, user }),
  me: () => request("GET", "/api/me"),
  operators: () => request("GET", "/api/operators"),
  addOperator: (account) => request("POST", "/api/operators", account),
  changeOperator: (name, changes) => request("POST", "/api/operators/" + encodeURIComponent(name), changes),
  tokens: () => request("GET", "/api/tokens"),
  addToken: (operator, label) => request("POST", "/api/tokens", { operator, label }),
  revokeToken: (id) => request("POST", "/api/tokens/" + encodeURIComponent(id) + "/revoke", {}),
  audit: (params) => request("GET", withQuery("/api/audit", params)),
  contact: (app, user) => request("GET", withQuery("/api/contact", { app, user })),
  assignees: (app) => request("GET", withQuery("/api/assignees", { app })),
  conversationState: (app, user) => request("GET", withQuery("/api/conversations/state", { app, user })),
  assign: (app, user, assignee) => request("POST", "/api/conversations/assign", { app, user, assignee }),
  setState: (app, user, state) => request("POST", "/api/conversations/state", { app, user, state }),
  notes: (app, user, params) => request("GET", withQuery("/api/notes", { app, user, ...params })),
  addNote: (app, user, text) => request("POST", "/api/notes", { app, user, text }),
  // Rich replies: markdown ({content}), textcard ({textcard}) and news ({news}) as JSON; a file as a form.
  sendRich: (app, toUser, msgtype, payload) =>
    request("POST", "/api/messages", { app, to_user: toUser, msgtype, ...payload }),
  sendFile: (app, toUser, msgtype, file, name) => {
    const form = new FormData();
    form.append("app", app);
    form.append("to_user", toUser);
    form.append("msgtype", msgtype);
    form.append("media", file, name || file.name || "file");
    return request("POST", "/api/messages", form);
  },
  kfSession: (app, user) => request("GET", withQuery("/api/kf/session", { app, user })),
  kfMove: (app, user, move) => request("POST", "/api/kf/session", { app, user, ...move }),
  recall: (id) => request("POST", "/api/messages/" + encodeURIComponent(id) + "/recall", {}),
  quickReplies: () => request("GET", "/api/quick-replies"),
  addQuickReply: (shortcut, text, team) => request("POST", "/api/quick-replies", { shortcut, text, team: !!team }),
  deleteQuickReply: (id) => request("DELETE", "/api/quick-replies/" + encodeURIComponent(id), {}),
};

export function mediaUrl(id) {
  return "/api/media/" + encodeURIComponent(id);
}

export function exportUrl(params, format) {
  return withQuery("/api/export", { ...params, format });
}
