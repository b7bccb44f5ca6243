// DOM building, translated strings and time formatting for the dashboard.
// Everything that comes from a message is inserted as text (append(string) makes a Text node);
// nothing here ever parses data as HTML.

let strings = {};

/** Read the translated UI strings from the page's JSON data block (not executed, CSP-safe). */
export function loadStrings() {
  const node = document.getElementById("i18n");
  try {
    strings = node ? JSON.parse(node.textContent) : {};
  } catch (err) {
    strings = {};
  }
}

function lookup(msgid) {
  return Object.prototype.hasOwnProperty.call(strings, msgid) ? strings[msgid] : msgid;
}

/** The translation of `msgid` with `{name}` placeholders filled in, as one string. */
export function t(msgid, values) {
  const text = lookup(msgid);
  if (!values) return text;
  // One pass: a value that itself contains "{x}" is never substituted again.
  return text.replace(/\{(\w+)\}/g, (all, key) => (key in values ? display(values[key]) : all));
}

/** Like t(), but as nodes: placeholder values become <strong> elements holding plain text. */
export function tParts(msgid, values) {
  const parts = [];
  const re = /\{(\w+)\}/g;
  const text = lookup(msgid);
  let at = 0;
  let match;
  while ((match = re.exec(text)) !== null) {
    if (match.index > at) parts.push(text.slice(at, match.index));
    parts.push(match[1] in values ? el("strong", null, display(values[match[1]])) : match[0]);
    at = re.lastIndex;
  }
  if (at < text.length) parts.push(text.slice(at));
  return parts;
}

/** A field value as display text: objects as compact JSON, missing values as "". */
export function display(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/**
 * Create an element. attrs: class, text, on<event>, dataset, anything else as an attribute.
 * Children may be nodes, strings (inserted as text) or arrays of those; null/false are skipped.
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** True for absolute http(s) URLs only: anything else (javascript:, data:, ...) is never a link. */
export function isWebUrl(value) {
  if (typeof value !== "string") return false;
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:";
  } catch (err) {
    return false;
  }
}

/** "1.2 MB" style sizes. */
export function formatSize(bytes) {
  if (typeof bytes !== "number" || !isFinite(bytes) || bytes < 0) return "";
  const units = ["B", "KB", "MB", "GB"];
  let n = bytes;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[unit];
}

// ------------------------------------------------------------------ time, in the browser's zone

const lang = document.documentElement.lang || undefined;
const clock = new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit" });
const shortDay = new Intl.DateTimeFormat(lang, { month: "short", day: "numeric" });
const longDay = new Intl.DateTimeFormat(lang, { year: "numeric", month: "long", day: "numeric", weekday: "short" });
const fullStamp = new Intl.DateTimeFormat(lang, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  second: "2-digit", timeZoneName: "short",
});

// CreateTime is the sender's clock, stored as it came. One that is not a positive whole number of
// seconds before the year 10000 (negative, 0, 999999999999999999, text) is flagged "time invalid",
// and the message is placed by when wecomd stored it instead.
const LAST_CREATE_TIME = 253402300799; // 9999-12-31T23:59:59Z

/** Whether a message came with a CreateTime that is no usable time. */
export function createTimeInvalid(message) {
  const value = message.create_time;
  if (value === null || value === undefined) {
    const sent = (message.fields || {}).CreateTime; // a CreateTime the server could not read as a number
    return typeof sent === "string" && sent.trim() !== "";
  }
  return !Number.isSafeInteger(value) || value <= 0 || value > LAST_CREATE_TIME;
}

/** The "time invalid" flag, with the CreateTime as sent in its tooltip; null for a usable time. */
export function timeFlag(message) {
  if (!createTimeInvalid(message)) return null;
  const sent = (message.fields || {}).CreateTime; // exact digits (a JS number rounds 18 of them)
  return el("span", { class: "time-invalid", title: "CreateTime " + display(sent ?? message.create_time) },
    t("time invalid"));
}

/** When a message happened: WeCom's CreateTime when usable, else when wecomd stored it. */
export function messageDate(message) {
  if (message.create_time && !createTimeInvalid(message)) return new Date(message.create_time * 1000);
  const parsed = Date.parse(message.received_at || "");
  return isNaN(parsed) ? null : new Date(parsed);
}

/** A Date that the formatters can print (Intl throws on an invalid one), or null. */
function usable(date) {
  return date instanceof Date && !isNaN(date.getTime()) ? date : null;
}

function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
}

/** Local calendar day key, for day separators. */
export function dayKey(date) {
  return usable(date) ? startOfDay(date) : 0;
}

/** "14:05" today, "Nov 28" on other days: for lists. */
export function shortTime(date) {
  if (!usable(date)) return "";
  return startOfDay(date) === startOfDay(new Date()) ? clock.format(date) : shortDay.format(date);
}

export function clockTime(date) {
  return usable(date) ? clock.format(date) : "";
}

/** Full local timestamp with the zone name, for tooltips. */
export function fullTime(date) {
  return usable(date) ? fullStamp.format(date) : "";
}

/** "Today", "Yesterday" or a long date, for the separators in a thread. */
export function dayLabel(date) {
  if (!usable(date)) return "";
  const days = Math.round((startOfDay(new Date()) - startOfDay(date)) / 86400000);
  if (days === 0) return t("Today");
  if (days === 1) return t("Yesterday");
  return longDay.format(date);
}

/** An ISO timestamp from the API ("2026-11-28T23:00:00Z") as a Date, or null. */
export function parseIso(value) {
  if (typeof value !== "string" || !value) return null;
  const parsed = Date.parse(value);
  return isNaN(parsed) ? null : new Date(parsed);
}

/** "14:05" today, "Nov 28 14:05" on other days: a moment that may not be today. */
export function dayClock(date) {
  if (!usable(date)) return "";
  return startOfDay(date) === startOfDay(new Date()) ? clock.format(date) : shortDay.format(date) + " " + clock.format(date);
}

const relative = typeof Intl.RelativeTimeFormat === "function"
  ? new Intl.RelativeTimeFormat(lang, { numeric: "auto" }) : null;
const RELATIVE_STEPS = [["second", 60], ["minute", 60], ["hour", 24], ["day", 7]];

/** "3 minutes ago" in the page's language (Intl does the wording); a date beyond a week. */
export function relativeTime(date) {
  if (!usable(date)) return "";
  let amount = (date.getTime() - Date.now()) / 1000;
  if (!relative) return fullStamp.format(date);
  for (const [unit, size] of RELATIVE_STEPS) {
    if (Math.abs(amount) < size) return relative.format(Math.round(amount), unit);
    amount /= size;
  }
  return shortDay.format(date);
}

/** "850 ms", "2.4 s", "3 min 5 s": how long an action took. */
export function formatDuration(ms) {
  if (typeof ms !== "number" || !isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms < 10000 ? (ms / 1000).toFixed(1) : String(Math.round(ms / 1000))) + " s";
  const seconds = Math.round(ms / 1000);
  return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
}
