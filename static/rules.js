// The rules panel: the configured rules in the order they are tried, and what each has done.
// Rule texts (replies, commands, webhook URLs, group robot templates) are configuration, yet shown as text all the same.
// The router shows it for "#/rules"; live messages tell it when the counts may have changed.

import { api } from "./api.js";
import { display, el, fullTime, parseIso, relativeTime, t } from "./dom.js";
import { ruleOperator } from "./render.js";

const CLOCK_REFRESH = 30000; // "3 minutes ago" stays right while the view is open

export class RulesView {
  constructor() {
    this.root = document.getElementById("rules-view");
    this.table = document.getElementById("rules-table");
    this.body = document.getElementById("rules-body");
    this.empty = document.getElementById("rules-empty");
    this.error = document.getElementById("rules-error");
    this.settings = document.getElementById("rules-settings");
    this.refreshButton = document.getElementById("rules-refresh");
    this.visible = false;
    this.data = null;
    this.seq = 0;
    this.timer = null;
    this.due = 0;
    this.clock = null;
    this.refreshButton.addEventListener("click", () => this.load());
  }

  show() {
    this.root.hidden = false;
    document.body.classList.add("rules-open");
    if (this.visible) return;
    this.visible = true;
    this.load();
    this.clock = window.setInterval(() => this.render(), CLOCK_REFRESH);
  }

  hide() {
    this.root.hidden = true;
    document.body.classList.remove("rules-open");
    this.visible = false;
    window.clearInterval(this.clock);
    window.clearTimeout(this.timer);
    this.clock = this.timer = null;
  }

  /** A message from the live feed; `isNew`: the conversation list did not count it yet. */
  noteMessage(message, isNew) {
    const ranRules = Array.isArray(message.automation) && message.automation.length > 0;
    // Rules counted a hit: refresh the table. A new inbound message may fire rules a moment later.
    if (ranRules || ruleOperator(message) !== null) this.changed(300);
    else if (message.direction === "in" && isNew) this.changed(2500);
  }

  /** Something happened that may change the counts: reload within `delay` ms, once per burst. */
  changed(delay) {
    if (!this.visible) return;
    const due = Date.now() + delay;
    if (this.timer !== null && this.due <= due) return;
    window.clearTimeout(this.timer);
    this.due = due;
    this.timer = window.setTimeout(() => {
      this.timer = null;
      this.load();
    }, delay);
  }

  async load() {
    const seq = ++this.seq;
    this.root.setAttribute("aria-busy", "true");
    this.refreshButton.disabled = true;
    try {
      const data = await api.rules();
      if (seq !== this.seq) return;
      this.data = data || {};
      this.showError("");
    } catch (err) {
      if (seq !== this.seq) return;
      this.showError(err.message);
    } finally {
      if (seq === this.seq) {
        this.root.removeAttribute("aria-busy");
        this.refreshButton.disabled = false;
      }
    }
    this.render();
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  render() {
    if (!this.data) return;
    const rules = Array.isArray(this.data.rules) ? this.data.rules : [];
    this.settings.replaceChildren(...settingsText(this.data.settings).map((text) => el("span", null, text)));
    this.settings.hidden = !this.settings.textContent;
    // The column headings come from the page (translated there); phones show them per cell.
    const labels = [...this.table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    this.body.replaceChildren(...rules.map((rule, index) => ruleRow(rule, index, labels)));
    this.table.hidden = rules.length === 0;
    this.empty.textContent = rules.length ? "" : t("No rules are configured. Add [rule:NAME] sections to the config file (see docs/rules.md).");
    this.empty.hidden = !this.empty.textContent;
  }
}

function settingsText(settings) {
  if (!settings || typeof settings !== "object") return [];
  const parts = [];
  if (typeof settings.takeover_minutes === "number") {
    parts.push(settings.takeover_minutes > 0
      ? t("A manual reply pauses automation for that user for {n} min.", { n: settings.takeover_minutes })
      : t("Manual replies do not pause automation."));
  }
  if (typeof settings.passive_budget === "number") {
    parts.push(t("Answers ready within {s} s go back as the passive reply; slower ones through the API.",
      { s: settings.passive_budget }));
  }
  return parts;
}

function action(kind, label, ...value) {
  return el("div", { class: "does does-" + kind }, el("span", { class: "does-kind" }, label), value);
}

function doesCell(rule) {
  const items = [];
  if (rule.reply) items.push(action("reply", t("Reply"), el("span", { class: "does-text" }, display(rule.reply))));
  if (rule.run) {
    items.push(action("run", t("Command"), el("code", { class: "does-text" }, display(rule.run)),
      typeof rule.timeout === "number" ? el("span", { class: "does-note" }, t("timeout {n} s", { n: rule.timeout })) : null));
  }
  if (rule.webhook) {
    // A URL from the config, shown as text: never a link the operator might follow by accident.
    items.push(action("webhook", t("Webhook"), el("span", { class: "does-text does-url" }, display(rule.webhook))));
  }
  if (rule.notify) {
    // The group's NAME and what it is sent (its template; none: the message's own text), never its key.
    items.push(action("notify", t("Group robot"), el("strong", { class: "does-group" }, display(rule.notify)),
      rule.notify_text ? el("span", { class: "does-text" }, display(rule.notify_text)) : null,
      el("span", { class: "does-note" }, display(rule.notify_format))));
  }
  return items;
}

function lastFiredCell(value) {
  const date = parseIso(value);
  if (!date) return el("span", { class: "never" }, t("never"));
  return el("time", { datetime: value, title: fullTime(date) }, relativeTime(date));
}

function ruleRow(rule, index, labels) {
  const failures = typeof rule.failures === "number" ? rule.failures : 0;
  const hits = typeof rule.hits === "number" ? rule.hits : 0;
  const cell = (column, attrs, ...children) =>
    el("td", { ...attrs, "data-label": labels[column] || null }, children);
  return el("tr", { class: failures > 0 ? "has-failures" : null, dataset: { rule: display(rule.name) } },
    cell(0, { class: "rule-order" }, String(index + 1),
      rule.priority !== null && rule.priority !== undefined
        ? el("span", { class: "rule-priority", title: t("priority {n}", { n: rule.priority }) }, t("priority {n}", { n: rule.priority }))
        : null),
    cell(1, { class: "rule-name" }, el("strong", null, display(rule.name))),
    cell(2, { class: "rule-app" }, rule.app ? el("span", { class: "app-tag" }, display(rule.app)) : el("span", { class: "all-apps" }, t("all apps"))),
    cell(3, { class: "rule-when" }, el("code", null, display(rule.when))),
    cell(4, { class: "rule-does" }, el("div", { class: "does-list" }, doesCell(rule))),
    cell(5, { class: "rule-continue" + (rule.continue ? " yes" : "") }, rule.continue ? t("yes") : t("no")),
    cell(6, { class: "rule-hits num" }, String(hits)),
    cell(7, { class: "rule-last" }, lastFiredCell(rule.last_fired)),
    cell(8, { class: "rule-failures num" },
      el("span", { class: "failures" + (failures > 0 ? " failures-some" : "") }, String(failures))));
}
