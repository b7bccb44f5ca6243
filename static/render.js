// How each kind of message looks: thread bubbles, system lines for events, list previews.
// All message data goes into the page as text nodes or attribute values; links only for
// http(s) URLs and our own /api paths.

import { mediaUrl } from "./api.js";
import {
  clockTime, display, el, formatDuration, formatSize, fullTime, isWebUrl, messageDate, parseIso, t, tParts, timeFlag,
} from "./dom.js";

const MEDIA_TYPES = new Set(["image", "voice", "video", "file"]);
// Header fields every message has: left out of the "unknown type" field list.
const HEADER_FIELDS = new Set(["ToUserName", "FromUserName", "CreateTime", "MsgType", "MsgId", "AgentID"]);

/** The rule that sent an outbound message (its "rule", or a "rule:NAME" operator), or null. */
export function ruleOperator(message) {
  if (message && typeof message.rule === "string" && message.rule) return message.rule;
  const operator = message && message.operator;
  return typeof operator === "string" && operator.startsWith("rule:") ? operator.slice(5) : null;
}

/** The "You:" / "Rule:" / "Auto reply:" prefix of an outbound message in lists. */
export function outboundPrefix(message) {
  if (!message || message.direction !== "out") return "";
  const label = ruleOperator(message) !== null ? t("Rule:") : message.automatic ? t("Auto reply:") : t("You:");
  return el("span", { class: "you" }, label);
}

/** The person a message belongs to in the conversation list: for a 智能机器人's group chat, the
 * group (its chatid), whoever sent the message. */
export function conversationUser(message) {
  if (message.direction === "out") return message.to_user;
  return isGroupMessage(message) ? pick(fields(message), "chatid") || message.from_user : message.from_user;
}

function fields(message) {
  return message.fields && typeof message.fields === "object" ? message.fields : {};
}

function pick(object, ...path) {
  let value = object;
  for (const key of path) {
    if (!value || typeof value !== "object") return undefined;
    value = value[key];
  }
  return value;
}

// ------------------------------------------------------------------ events as one sentence

const SP_STATUS = {
  1: () => t("in review"), 2: () => t("approved"), 3: () => t("rejected"), 4: () => t("revoked"),
  6: () => t("revoked after approval"), 7: () => t("deleted"), 10: () => t("paid"),
};
const OPEN_SP_STATUS = {
  1: () => t("in review"), 2: () => t("approved"), 3: () => t("rejected"), 4: () => t("cancelled"),
};

function statusName(table, code) {
  const name = table[String(code)];
  return name ? name() : display(code);
}

function contactLine(f) {
  const values = { id: f.UserID || f.Id || f.TagId || "", name: f.Name || "" };
  switch (f.ChangeType) {
    case "create_user": return tParts("Member {id} was added", values);
    case "update_user": return tParts("Member {id} was updated", values);
    case "delete_user": return tParts("Member {id} was removed", values);
    case "create_party": return tParts("Department {id} was created", values);
    case "update_party": return tParts("Department {id} was updated", values);
    case "delete_party": return tParts("Department {id} was deleted", values);
    case "update_tag": return tParts("Tag {id} was updated", values);
    default: return tParts("Contact change {type}", { type: f.ChangeType || "" });
  }
}

/** An event as a short sentence (a list of text and <strong> nodes). */
export function eventParts(message) {
  const f = fields(message);
  const user = message.from_user || "?";
  const key = message.event_key || "";
  const approval = f.ApprovalInfo || {};
  switch (message.event) {
    case "subscribe": return tParts("{user} followed the app", { user });
    case "unsubscribe": return tParts("{user} unfollowed the app", { user });
    case "enter_agent": return tParts("{user} entered the app", { user });
    case "LOCATION":
      return tParts("{user} reported location {lat}, {lng}", { user, lat: f.Latitude, lng: f.Longitude });
    case "click": return tParts("{user} clicked menu {key}", { user, key });
    case "view": return tParts("{user} opened menu link {key}", { user, key });
    case "view_miniprogram": return tParts("{user} opened mini program {key}", { user, key });
    case "scancode_push":
    case "scancode_waitmsg":
      return tParts("{user} scanned {result}", { user, result: pick(f, "ScanCodeInfo", "ScanResult") });
    case "pic_sysphoto":
    case "pic_photo_or_album":
    case "pic_weixin":
      return tParts("{user} sent {count} picture(s) from menu {key}",
        { user, key, count: pick(f, "SendPicsInfo", "Count") || "?" });
    case "location_select": {
      const where = f.SendLocationInfo || {};
      return tParts("{user} picked location {label} ({x}, {y})",
        { user, label: where.Label || where.Poiname || "", x: where.Location_X, y: where.Location_Y });
    }
    case "batch_job_result":
      return tParts("Batch job {type} finished: {result}",
        { type: pick(f, "BatchJob", "JobType"), result: pick(f, "BatchJob", "ErrMsg") });
    case "change_contact": return contactLine(f);
    case "open_approval_change":
      return tParts("Approval {name} from {applicant}: {status}", {
        name: approval.OpenSpName, applicant: approval.ApplyUserName || approval.ApplyUserId,
        status: statusName(OPEN_SP_STATUS, approval.OpenSpStatus),
      });
    case "sys_approval_change":
      return tParts("Approval {name} No. {number} from {applicant}: {status}", {
        name: approval.SpName, number: approval.SpNo, applicant: pick(approval, "Applyer", "UserId"),
        status: statusName(SP_STATUS, approval.SpStatus),
      });
    case "taskcard_click": return tParts("{user} clicked {key} on a task card", { user, key });
    case "template_card_event": return tParts("{user} clicked {key} on a template card", { user, key });
    case "template_card_menu_event": return tParts("{user} chose {key} from a card menu", { user, key });
    default:
      return key
        ? tParts("{user} triggered event {event} ({key})", { user, event: message.event || "?", key })
        : tParts("{user} triggered event {event}", { user, event: message.event || "?" });
  }
}

function partsText(parts) {
  return parts.map((part) => (typeof part === "string" ? part : part.textContent)).join("");
}

/** One line of plain text for the conversation list and search results. */
export function previewText(message) {
  const f = fields(message);
  switch (message.msgtype) {
    case "text": return message.content || "";
    case "markdown": return message.content || "";
    case "textcard": return t("[Card]") + " " + display(pick(f, "textcard", "title") || message.content);
    case "news": return t("[News]") + " " + display(pick(f, "news", "articles", 0, "title") || message.content);
    case "image": return t("[Image]");
    case "voice": return t("[Voice]");
    case "video": return t("[Video]");
    case "file": return t("[File]") + " " + display((message.media && message.media.name) || f.FileName);
    case "location": return t("[Location]") + " " + display(f.Label);
    case "link": return t("[Link]") + " " + display(f.Title);
    case "event": return partsText(eventParts(message));
    default: return "[" + display(message.msgtype) + "]";
  }
}

// ------------------------------------------------------------------ bubble bodies by type

function textBody(message) {
  return el("div", { class: "text" }, message.content || "");
}

function mediaName(message) {
  const f = fields(message);
  const media = message.media || {};
  if (media.name) return media.name;
  if (f.FileName) return display(f.FileName);
  const ext = message.msgtype === "voice" && f.Format ? "." + f.Format : "";
  return message.msgtype + "-" + message.id + ext;
}

function mediaState(message) {
  const media = message.media;
  if (!media) return el("div", { class: "media-note" }, t("Media not downloaded"));
  if (media.status === "pending") return el("div", { class: "media-note pending" }, t("Downloading…"));
  if (media.status === "failed") {
    return el("div", { class: "media-note failed" }, t("Download failed"), media.error ? ": " + media.error : "");
  }
  return null;
}

function imageBody(message) {
  const state = mediaState(message);
  if (state) return el("div", { class: "media image-pending" }, state);
  const url = mediaUrl(message.id);
  return el("a", { class: "media image", href: url, target: "_blank", rel: "noopener" },
    el("img", { src: url, alt: t("Image"), loading: "lazy" }));
}

const FILE_LABELS = { voice: () => t("Voice"), video: () => t("Video"), file: () => t("File") };

function fileBody(message) {
  const state = mediaState(message);
  const name = mediaName(message);
  const size = message.media && message.media.status === "stored" ? formatSize(message.media.size) : "";
  const label = el("span", { class: "file-text" },
    el("span", { class: "file-name" }, name),
    el("span", { class: "file-meta" }, [FILE_LABELS[message.msgtype](), size].filter(Boolean).join(" · ")));
  const icon = el("span", { class: "file-icon file-icon-" + message.msgtype, "aria-hidden": "true" });
  if (state) return el("div", { class: "media file" }, icon, label, state);
  return el("a", { class: "media file", href: mediaUrl(message.id), download: name }, icon, label);
}

function locationBody(message) {
  const f = fields(message);
  const coords = display(f.Location_X) + ", " + display(f.Location_Y);
  return el("div", { class: "location" },
    el("span", { class: "pin", "aria-hidden": "true" }),
    el("span", { class: "location-text" },
      el("span", { class: "location-label" }, display(f.Label) || t("Location")),
      el("span", { class: "location-coords" }, coords,
        f.Scale !== undefined ? " · " + t("scale {scale}", { scale: f.Scale }) : "")));
}

function linkBody(message) {
  const f = fields(message);
  const url = display(f.Url);
  const safe = isWebUrl(url);
  const title = display(f.Title) || url || t("Link");
  return el("div", { class: "link-card" },
    safe ? el("a", { class: "link-title", href: url, target: "_blank", rel: "noopener noreferrer nofollow" }, title)
      : el("span", { class: "link-title" }, title),
    f.Description ? el("p", { class: "link-desc" }, display(f.Description)) : null,
    url ? el("span", { class: "link-url" + (safe ? "" : " unsafe") }, url) : null);
}

/** Every field as "key: value" lines, nested objects flattened to dotted names. */
export function fieldList(object, skipHeader) {
  const list = el("dl", { class: "fields" });
  const walk = (value, name) => {
    if (value && typeof value === "object") {
      const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
      if (entries.length === 0) list.append(el("dt", null, name), el("dd", null, ""));
      for (const [key, child] of entries) {
        walk(child, Array.isArray(value) ? name + "[" + key + "]" : (name ? name + "." : "") + key);
      }
      return;
    }
    list.append(el("dt", null, name), el("dd", null, display(value)));
  };
  for (const [key, value] of Object.entries(object || {})) {
    if (!(skipHeader && HEADER_FIELDS.has(key))) walk(value, key);
  }
  return list;
}

function unknownBody(message) {
  return el("div", { class: "unknown" },
    el("div", { class: "unknown-type" }, t("Message type {type}", { type: message.msgtype })),
    fieldList(fields(message), true));
}

/** An outbound textcard: its title (a link when the URL is http(s)), description and button text. */
function textcardBody(message) {
  const card = pick(fields(message), "textcard") || {};
  const url = display(card.url);
  const title = display(card.title) || url;
  return el("div", { class: "link-card textcard" },
    isWebUrl(url) ? el("a", { class: "link-title", href: url, target: "_blank", rel: "noopener noreferrer nofollow" }, title)
      : el("span", { class: "link-title" }, title),
    card.description ? el("p", { class: "link-desc" }, display(card.description)) : null,
    el("span", { class: "card-button" }, display(card.btntxt) || t("Details")));
}

/** An outbound news message: one small card per article. */
function newsBody(message) {
  const articles = pick(fields(message), "news", "articles");
  return el("ol", { class: "news-articles" }, (Array.isArray(articles) ? articles : []).map((article) => {
    const url = display(article && article.url);
    const title = display(article && article.title) || url;
    return el("li", { class: "link-card" },
      isWebUrl(url) ? el("a", { class: "link-title", href: url, target: "_blank", rel: "noopener noreferrer nofollow" }, title)
        : el("span", { class: "link-title" }, title),
      article && article.description ? el("p", { class: "link-desc" }, display(article.description)) : null);
  }));
}

function bodyFor(message) {
  if (message.direction === "out" && message.msgtype === "textcard" && pick(fields(message), "textcard")) {
    return textcardBody(message);
  }
  if (message.direction === "out" && message.msgtype === "news" && pick(fields(message), "news", "articles")) {
    return newsBody(message);
  }
  if (message.msgtype === "text" || (message.direction === "out" && message.content && !MEDIA_TYPES.has(message.msgtype))) {
    return textBody(message);
  }
  if (message.msgtype === "image") return imageBody(message);
  if (MEDIA_TYPES.has(message.msgtype)) return fileBody(message);
  if (message.msgtype === "location") return locationBody(message);
  if (message.msgtype === "link") return linkBody(message);
  return unknownBody(message);
}

// ------------------------------------------------------------------ whole rows

const RECALL_WINDOW_MS = 24 * 3600 * 1000; // WeCom's message/recall takes back a day's messages
const KF_RECALL_WINDOW_MS = 2 * 60 * 1000; // 微信客服's kf/recall_msg: 2 minutes
const THROTTLED = "throttled"; // the outbox's note on a message WeCom's per-member limit holds back

/**
 * A sent message the operator may still take back: sent through the API (a passive reply has no
 * msgid), within the last day. The live status event carries no msgid; the server checks it (409).
 */
function recallable(message) {
  const sent = parseIso(message.received_at);
  const window = isKfUser(message.to_user) ? KF_RECALL_WINDOW_MS : RECALL_WINDOW_MS;
  return message.direction === "out" && message.status === "sent" && message.automatic !== "passive"
    && !!sent && Date.now() - sent.getTime() < window;
}

/** A 微信客服 conversation's user: "OPEN_KFID/EXTERNAL_USERID" (no app member's UserID has a "/"). */
export function isKfUser(user) {
  return typeof user === "string" && user.split("/").length === 2 && !user.startsWith("/") && !user.endsWith("/");
}

/** A 微信客服 session's state as the console names it (WeCom's 0–4), with who serves it in state 3. */
export function kfStateLabel(state, servicer) {
  if (state === 3 && servicer) return t("Served by {name}", { name: servicer });
  const labels = [t("Untouched"), t("With the bot"), t("Queued"), t("Served by a human"), t("Ended")];
  return Number.isInteger(state) && labels[state] ? labels[state] : t("Session state unknown");
}

/** "Recall", which asks once more before it calls `onRecall(message, button)`. */
function recallButton(message, onRecall) {
  let armed = null;
  return el("button", {
    type: "button", class: "recall",
    onclick: (event) => {
      const button = event.currentTarget;
      if (!armed) {
        button.textContent = t("Recall this message?");
        button.classList.add("armed");
        armed = window.setTimeout(() => {
          armed = null;
          button.textContent = t("Recall");
          button.classList.remove("armed");
        }, 5000);
        return;
      }
      window.clearTimeout(armed);
      armed = null;
      onRecall(message, button);
    },
  }, t("Recall"));
}

function statusLabel(message) {
  const status = message.status;
  if (message.automatic === "passive" && status === "sent") return t("passive reply");
  if (status === "sent") return t("Sent");
  if (status === "failed") return t("Failed");
  if (status === "recalled") return t("Recalled");
  if (message.error === THROTTLED) return t("Throttled");
  return t("Sending…");
}

function statusLine(message, onRetry, onRecall) {
  const meta = el("div", { class: "meta" });
  const date = messageDate(message);
  if (message.direction === "out") {
    const rule = ruleOperator(message);
    // An automatic answer: "automatic · rule NAME", or "automatic · app's reply" (the app's reply =).
    if (message.automatic) meta.append(el("span", { class: "auto-badge" }, t("automatic")));
    meta.append(el("span", { class: "operator" + (rule !== null || message.automatic ? " operator-rule" : "") },
      rule !== null ? t("rule {name}", { name: rule })
        : message.automatic ? t("app's reply")
          : message.operator ? t("by {operator}", { operator: message.operator }) : t("automatic")));
    const status = message.status;
    const throttled = status === "pending" && message.error === THROTTLED;
    meta.append(el("span", {
      class: "status status-" + (throttled ? THROTTLED : status || "pending"),
      dataset: { status: status || "" },
      title: throttled ? t("WeCom takes at most 30 messages a minute for one person: this one goes out when there is room.") : null,
    }, statusLabel(message)));
    if (message.attempts > 1) meta.append(el("span", null, t("{n} attempts", { n: message.attempts })));
    if (onRecall && recallable(message)) meta.append(recallButton(message, onRecall));
  } else if (message.deliveries > 1) {
    meta.append(el("span", { class: "deliveries", title: t("WeCom delivered this message several times") },
      t("delivered ×{n}", { n: message.deliveries })));
  }
  meta.append(el("time", { datetime: message.received_at || "", title: fullTime(date) }, clockTime(date)));
  const flag = timeFlag(message);
  if (flag) meta.append(flag);
  const rows = [meta];
  if (message.direction === "out" && message.status === "failed") {
    rows.push(el("div", { class: "failure" },
      el("span", { class: "error-text" }, message.error || t("Delivery failed")),
      el("button", { type: "button", class: "retry", onclick: (event) => onRetry(message, event.currentTarget) }, t("Retry"))));
  } else if (message.direction === "out" && message.error && (message.status === "sent" || message.status === "recalled")) {
    // errcode 0, but WeCom named recipients it did not reach (invaliduser, unlicenseduser): its words.
    rows.push(el("div", { class: "failure partial" },
      el("span", { class: "error-text" }, t("Not delivered to everyone: {error}", { error: message.error }))));
  }
  return rows;
}

// ------------------------------------------------------------------ automation: what rules did

const ACTION_LABELS = {
  reply: () => t("Reply"), run: () => t("Command"), webhook: () => t("Webhook"), notify: () => t("Group robot"),
  card: () => t("Card"),
};
const PATH_LABELS = { passive: () => t("passive reply"), api: () => t("sent via API"), none: () => t("no reply") };
const FAILED = new Set(["failed", "timeout", "error"]);

function outcomeLabel(run) {
  switch (run.status) {
    case "ok": return t("ok");
    case "failed":
      return run.exit_code !== null && run.exit_code !== undefined
        ? t("failed (exit code {code})", { code: run.exit_code }) : t("failed");
    case "timeout": return t("timed out");
    case "error": return t("error");
    case "skipped": return t("skipped: automation paused");
    case "running": return t("running…");
    case "pending": return t("pending…");
    default: return display(run.status);
  }
}

/** One line per rule run under a message: rule, action, outcome, how the answer went. */
function automationItem(run) {
  const status = typeof run.status === "string" ? run.status : "";
  const action = ACTION_LABELS[run.action] ? ACTION_LABELS[run.action]() : display(run.action);
  // A webhook that answered nothing forwarded the message: the user's reply, if any, came from
  // another rule or the app's own reply (an automatic message in the thread), so never "no reply".
  const forwarded = run.action === "webhook" && run.path === "none";
  const path = status === "skipped" ? "" : forwarded ? t("forwarded") : PATH_LABELS[run.path] ? PATH_LABELS[run.path]() : "";
  const started = parseIso(run.started_at);
  const failed = FAILED.has(status);
  const line = el("span", { class: "auto-line" },
    el("span", { class: "auto-icon", "aria-hidden": "true" }),
    el("span", { class: "auto-rule" }, display(run.rule)),
    el("span", { class: "auto-action" }, action),
    el("span", { class: "auto-status" }, outcomeLabel(run)),
    path ? el("span", { class: "auto-path" }, path) : null,
    run.finished_at && typeof run.duration_ms === "number"
      ? el("span", { class: "auto-duration" }, formatDuration(run.duration_ms)) : null);
  const error = failed && run.error ? el("span", { class: "auto-error" }, display(run.error)) : null;
  const output = typeof run.output === "string" && run.output !== ""
    ? el("details", { class: "auto-output", dataset: { runId: run.id } },
      el("summary", null, t("Output")), el("pre", null, run.output))
    : null;
  return el("li", {
    class: "auto auto-" + (status || "unknown") + (failed ? " auto-failed" : ""),
    title: fullTime(started),
    dataset: { runId: run.id, rule: display(run.rule), action: display(run.action), status, path: display(run.path) },
  }, line, error, output);
}

/** The "automation" list of a message as a compact list, or null when no rule fired. */
export function automationList(message) {
  const runs = Array.isArray(message.automation) ? message.automation : [];
  if (runs.length === 0) return null;
  return el("ul", { class: "automation", "aria-label": t("Automation") }, runs.map(automationItem));
}

function eventRow(message) {
  const date = messageDate(message);
  return el("li", { class: "system", dataset: { id: message.id, msgtype: "event", event: message.event || "" } },
    el("details", { class: "system-line" },
      el("summary", null,
        el("span", { class: "system-text" }, eventParts(message)),
        el("time", { datetime: message.received_at || "", title: fullTime(date) }, clockTime(date)),
        timeFlag(message)),
      fieldList(fields(message), false)),
    automationList(message));
}

/** True for a 智能机器人 message of a group chat (its conversation is the group, its sender from_user). */
export function isGroupMessage(message) {
  return pick(fields(message), "chattype") === "group";
}

const FEEDBACK_TYPES = { 1: () => t("Accurate"), 2: () => t("Inaccurate"), 3: () => t("Feedback withdrawn") };
const FEEDBACK_REASONS = {
  1: () => t("irrelevant"), 2: () => t("incomplete"), 3: () => t("wrong"), 4: () => t("data analysis error"),
};

function feedbackText(feedback) {
  const type = FEEDBACK_TYPES[feedback.type] ? FEEDBACK_TYPES[feedback.type]() : display(feedback.type);
  const reasons = (Array.isArray(feedback.inaccurate_reason_list) ? feedback.inaccurate_reason_list : [])
    .map((reason) => (FEEDBACK_REASONS[reason] ? FEEDBACK_REASONS[reason]() : display(reason)));
  const parts = [type];
  if (reasons.length) parts.push(reasons.join(", "));
  if (typeof feedback.content === "string" && feedback.content) parts.push("“" + feedback.content + "”");
  return parts.join(" · ");
}

function responseText(answer) {
  switch (answer.response_state) {
    case "sent": return t("sent through the response_url");
    case "pending": return t("waiting to go through the response_url");
    case "failed": return t("response_url failed: {error}", { error: display(answer.response_error) });
    case "expired": return t("response_url expired: not sent");
    default: return "";
  }
}

/** What a 智能机器人 made of an inbound message: the answer's source, how it ended, the feedback it
 * got and how its response_url went (`answer`: BotStreams.answers, or a live stream event). */
export function answerLine(answer) {
  const failed = answer.response_state === "failed" || answer.response_state === "expired";
  const response = responseText(answer);
  return el("li", {
    class: "bot-answer" + (failed ? " bot-answer-failed" : ""),
    dataset: { streamId: answer.stream_id || "", source: answer.source || "", response: answer.response_state || "",
      feedback: answer.feedback ? String(answer.feedback.type) : "" },
  },
  el("span", { class: "source-tag", title: t("Where the answer comes from") }, t("answer: {source}", { source: display(answer.source) })),
  answer.notice ? el("span", { class: "answer-notice" }, display(answer.notice)) : null,
  answer.feedback ? el("span", { class: "answer-feedback feedback-" + display(answer.feedback.type) },
    t("feedback: {text}", { text: feedbackText(answer.feedback) })) : null,
  response ? el("span", { class: failed ? "error-text" : "answer-response" }, response) : null);
}

/**
 * A thread row for one message. `onRetry(message, button)` resends a failed outbound one;
 * `onRecall(message, button)`, when given, takes back a sent one (within 24 hours).
 */
export function messageRow(message, onRetry, onRecall) {
  if (message.msgtype === "event" && message.direction !== "out") return eventRow(message);
  const side = message.direction === "out" ? "out" : "in";
  const dataset = { id: message.id, msgtype: message.msgtype, status: message.status || "" };
  if (message.automatic) Object.assign(dataset, { automatic: message.automatic, rule: message.rule || "" });
  const sender = side === "in" && isGroupMessage(message)
    ? el("div", { class: "sender", title: t("Sent in the group by {user}", { user: display(message.from_user) }) },
      display(message.from_user)) : null;
  return el("li", { class: "msg " + side + (message.automatic ? " automatic" : ""), dataset },
    sender,
    el("div", { class: "bubble bubble-" + message.msgtype }, bodyFor(message)),
    statusLine(message, onRetry, onRecall),
    automationList(message));
}
