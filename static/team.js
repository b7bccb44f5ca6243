// The admins' pages (handlers/team.py): operator accounts and their API tokens ("#/operators"), and
// the audit log with filters ("#/audit"). app.js mounts both for an admin only; the server refuses
// every other role anyway (403).

import { api } from "./api.js";
import { el, fullTime, parseIso, t } from "./dom.js";

const $ = (id) => document.getElementById(id);
const ROLES = ["viewer", "operator", "admin"];

function shown(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

/** A section of the page shown in place of the conversations, like the rules view. */
class Page {
  constructor(rootId) {
    this.root = $(rootId);
    this.visible = false;
  }

  show() {
    this.root.hidden = false;
    document.body.classList.add("rules-open");
    if (!this.visible) {
      this.visible = true;
      this.load();
    }
  }

  hide() {
    this.root.hidden = true;
    this.visible = false;
    if (!document.querySelector(".rules-view:not([hidden])")) document.body.classList.remove("rules-open");
  }
}

export class OperatorsView extends Page {
  constructor({ apps }) {
    super("operators-view");
    this.apps = apps;
    this.error = $("operators-error");
    const form = $("operator-add");
    form.elements.apps.replaceChildren(...apps.map((app) => el("option", { value: app.name }, app.name)));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.add(form);
    });
    const tokenForm = $("token-add");
    tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.addToken(tokenForm);
    });
  }

  async load() {
    try {
      const [{ operators }, { tokens }] = await Promise.all([api.operators(), api.tokens()]);
      this.render(operators, tokens);
      shown(this.error, "");
    } catch (err) {
      shown(this.error, err.message);
    }
  }

  render(operators, tokens) {
    $("operators-body").replaceChildren(...operators.map((op) => this.row(op)));
    $("token-add").elements.operator.replaceChildren(
      ...operators.filter((op) => !op.disabled).map((op) => el("option", { value: op.name }, op.name)));
    $("tokens-body").replaceChildren(...tokens.map((token) => el("tr", { dataset: { token: token.id } },
      el("td", null, String(token.id)), el("td", null, token.operator), el("td", null, token.label || ""),
      el("td", null, fullTime(parseIso(token.created_at))),
      el("td", null, token.last_used_at ? fullTime(parseIso(token.last_used_at)) : "—"),
      el("td", null, token.revoked_at ? t("revoked") : el("button", {
        type: "button", class: "ghost", onclick: () => this.revoke(token.id) }, t("Revoke"))))));
  }

  row(op) {
    const role = el("select", { "aria-label": t("Role"), onchange: (event) => this.change(op.name, { role: event.target.value }) },
      ...ROLES.map((name) => el("option", { value: name, selected: name === op.role }, t(name))));
    return el("tr", { dataset: { operator: op.name, disabled: op.disabled ? "1" : "0" } },
      el("td", null, op.name),
      el("td", null, role),
      el("td", null, op.apps ? op.apps.join(", ") : t("every app")),
      el("td", { class: "op-state" }, op.disabled ? t("disabled") : t("enabled")),
      el("td", null,
        el("button", { type: "button", class: "ghost op-toggle",
          onclick: () => this.change(op.name, { disabled: !op.disabled }) }, op.disabled ? t("Enable") : t("Disable")),
        el("button", { type: "button", class: "ghost",
          onclick: () => this.newPassword(op.name) }, t("New password"))));
  }

  async add(form) {
    const apps = [...form.elements.apps.selectedOptions].map((option) => option.value);
    try {
      await api.addOperator({ name: form.elements.name.value.trim(), role: form.elements.role.value,
        apps: apps.length ? apps : null, password: form.elements.password.value });
      form.reset();
      this.load();
    } catch (err) {
      shown(this.error, err.message);
    }
  }

  async change(name, changes) {
    try {
      await api.changeOperator(name, changes);
      this.load();
    } catch (err) {
      shown(this.error, err.message);
    }
  }

  newPassword(name) {
    const password = window.prompt(t("New password for {name} (at least 8 characters)", { name }));
    if (password) this.change(name, { password });
  }

  async addToken(form) {
    try {
      const token = await api.addToken(form.elements.operator.value, form.elements.label.value.trim() || null);
      // Shown once: the server keeps only its hash.
      shown($("token-shown"), t("Token for {name}, shown only now: {token}", { name: token.operator, token: token.token }));
      form.reset();
      this.load();
    } catch (err) {
      shown(this.error, err.message);
    }
  }

  async revoke(id) {
    try {
      await api.revokeToken(id);
      this.load();
    } catch (err) {
      shown(this.error, err.message);
    }
  }
}

export class AuditView extends Page {
  constructor() {
    super("audit-view");
    this.error = $("audit-error");
    this.next = null;
    this.form = $("audit-filter");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
    $("audit-more").addEventListener("click", () => this.load(this.next));
  }

  filters() {
    const field = (name) => this.form.elements[name].value.trim();
    return { actor: field("actor"), action: field("action"),
      since: field("since") ? field("since") + "T00:00:00Z" : "", until: field("until") ? field("until") + "T23:59:59Z" : "" };
  }

  async load(before) {
    try {
      const page = await api.audit({ ...this.filters(), before });
      const rows = page.audit.map((row) => el("tr", { dataset: { action: row.action, actor: row.actor } },
        el("td", null, fullTime(parseIso(row.at))), el("td", null, row.actor), el("td", null, row.action),
        el("td", null, row.target || ""), el("td", null, row.detail ? JSON.stringify(row.detail) : ""),
        el("td", null, row.client || "")));
      const body = $("audit-body");
      if (before) body.append(...rows);
      else body.replaceChildren(...rows);
      this.next = page.next;
      $("audit-more").hidden = !page.next;
      shown(this.error, "");
    } catch (err) {
      shown(this.error, err.message);
    }
  }
}
