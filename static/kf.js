// The 微信客服 session bar of the thread (docs/kf.md): the session's state as WeCom has it now
// (GET /api/kf/session), the customer's reply window, and exactly the moves WeCom documents for the
// state (the server lists them in `transitions`): to the bot (1), to the queue (2), to a human who
// is 接待中 (3, also a transfer), end (4). A move may carry a message, sent once with the code
// WeCom returns for it. Viewers see the state, not the moves.

import { api } from "./api.js";
import { dayClock, el, parseIso, t } from "./dom.js";
import { isKfUser, kfStateLabel } from "./render.js";

const WINDOW_MS = 48 * 3600 * 1000; // kf/send_msg: within 48 hours of the customer's last message
const MAX_SENDS = 5; // ... and at most 5 until they write again
const RECEPTION = 0; // a servicer's status: 接待中

export class KfSessionBar {
  /** hooks: canWrite() → bool; sent(message, since, context) for the message a move sent. */
  constructor(hooks) {
    this.hooks = hooks;
    this.root = document.getElementById("kf-session");
    this.state = document.getElementById("kf-state");
    this.window = document.getElementById("kf-window");
    this.actions = document.getElementById("kf-actions");
    this.error = document.getElementById("kf-error");
    this.current = null;
  }

  /** A conversation opened: shown for a kf app's customer, hidden for anyone else. */
  open(app, user, info, fallback) {
    this.current = null;
    const kf = !!info && !!info.kf && isKfUser(user);
    this.root.hidden = !kf;
    if (!kf) return;
    const current = { app, user, session: fallback || null, servicers: [], busy: false };
    this.current = current;
    this.showError("");
    this.render();
    this.load(current);
  }

  close() {
    this.current = null;
    this.root.hidden = true;
  }

  async load(current) {
    try {
      const session = await api.kfSession(current.app, current.user);
      if (current !== this.current) return;
      current.session = session;
      current.servicers = session.servicers || [];
      this.render();
    } catch (err) {
      if (current !== this.current) return;
      this.showError(t("The session could not be read from WeCom: {error}", { error: err.message }));
      this.render();
    }
  }

  /** The session as a live event tells it (the customer wrote, a send, a move by anyone). */
  update(kf) {
    const current = this.current;
    if (!current) return;
    current.session = { ...(current.session || {}), ...kf };
    if (!current.busy) this.render();
  }

  render() {
    const current = this.current;
    if (!current) return;
    const session = current.session || {};
    const state = Number.isInteger(session.service_state) ? session.service_state : null;
    this.state.textContent = kfStateLabel(state, session.servicer_userid);
    this.state.dataset.state = state === null ? "" : String(state);
    this.window.textContent = windowText(session);
    const moves = this.hooks.canWrite() && Array.isArray(session.transitions) ? session.transitions : [];
    this.actions.replaceChildren(...this.moveControls(state, moves));
  }

  moveControls(state, moves) {
    if (!moves.length) return [];
    const controls = [];
    const message = el("input", {
      type: "text", id: "kf-message", maxlength: "600",
      placeholder: t("Message with the move (optional)"), "aria-label": t("Message with the move (optional)"),
    });
    if (moves.includes(3)) {
      const servicers = [...this.current.servicers].sort((a, b) => (a.status === RECEPTION ? 0 : 1) - (b.status === RECEPTION ? 0 : 1));
      const pick = el("select", { id: "kf-servicer", "aria-label": t("Servicer") },
        servicers.filter((s) => !(state === 3 && s.userid === (this.current.session || {}).servicer_userid))
          .map((s) => el("option", { value: s.userid },
            s.status === RECEPTION ? s.userid : t("{name} (not in reception)", { name: s.userid }))));
      controls.push(pick, this.button(state === 3 ? t("Transfer") : t("Take over"), "kf-take",
        () => ({ service_state: 3, servicer_userid: pick.value }), message, () => !pick.value));
    }
    if (moves.includes(1)) controls.push(this.button(t("Give to the bot"), "kf-bot", () => ({ service_state: 1 }), message));
    if (moves.includes(2)) controls.push(this.button(t("Move to the queue"), "kf-queue", () => ({ service_state: 2 }), message));
    if (moves.includes(4)) controls.push(this.button(t("End session"), "kf-end", () => ({ service_state: 4 }), message));
    if (moves.some((m) => m !== 1)) controls.push(message); // 1 returns no code: nothing to send with it
    return controls;
  }

  button(label, id, move, message, blocked) {
    return el("button", {
      type: "button", id, class: "kf-move",
      onclick: () => {
        if (blocked && blocked()) return;
        const body = move();
        const text = message.value.trim();
        if (text && body.service_state !== 1) body.message = text;
        this.move(body);
      },
    }, label);
  }

  async move(body) {
    const current = this.current;
    if (!current || current.busy) return;
    current.busy = true;
    for (const control of this.actions.querySelectorAll("button, select, input")) control.disabled = true;
    this.showError("");
    const since = performance.now();
    try {
      const session = await api.kfMove(current.app, current.user, body);
      if (session.sent) this.hooks.sent(session.sent, since, { app: current.app, user: current.user });
      if (current !== this.current) return;
      current.session = { ...(current.session || {}), ...session };
    } catch (err) {
      if (current === this.current) this.showError(err.message);
    } finally {
      current.busy = false;
      if (current === this.current) this.render();
    }
  }

  showError(text) {
    this.error.textContent = text;
    this.error.hidden = !text;
  }
}

/** "Reply window: 2 of 5 sent, until 14:05" from the session's last customer message and sends. */
function windowText(session) {
  const last = parseIso(session.last_customer_at);
  if (!last) return "";
  const until = new Date(last.getTime() + WINDOW_MS);
  if (until.getTime() <= Date.now()) return t("Reply window closed: the customer has not written for 48 hours");
  const sends = Number(session.sends) || 0;
  if (sends >= MAX_SENDS) return t("Reply window: 5 of 5 sent; the customer must write again");
  return t("Reply window: {sends} of 5 sent, until {time}", { sends, time: dayClock(until) });
}
