// Desktop notifications, opt-in per browser, for new inbound messages in conversations that are
// yours or unassigned; and the unread count in the tab title. app.js hands it the live events.

import { t } from "./dom.js";
import { conversationRoute } from "./router.js";

const KEY = "wecomd.notifications";

export class Notifier {
  /**
   * isMineOrUnassigned(app, user)  whether a conversation is the signed-in operator's or nobody's
   * isReading(app, user)           whether that conversation is open in a visible tab
   */
  constructor({ isMineOrUnassigned, isReading }) {
    this.isMineOrUnassigned = isMineOrUnassigned;
    this.isReading = isReading;
    this.baseTitle = document.title;
    this.button = document.getElementById("notify-toggle");
    if (this.button) {
      if (!("Notification" in window)) this.button.hidden = true;
      this.button.addEventListener("click", () => this.toggle());
      this.render();
    }
  }

  wanted() {
    return window.localStorage.getItem(KEY) === "1";
  }

  enabled() {
    return this.wanted() && "Notification" in window && window.Notification.permission === "granted";
  }

  async toggle() {
    if (this.wanted()) {
      window.localStorage.removeItem(KEY);
    } else {
      const permission = window.Notification.permission === "granted"
        ? "granted" : await window.Notification.requestPermission();
      if (permission === "granted") window.localStorage.setItem(KEY, "1");
    }
    this.render();
  }

  render() {
    const on = this.enabled();
    this.button.setAttribute("aria-pressed", on ? "true" : "false");
    this.button.textContent = on ? t("Notifications on") : t("Notifications off");
    this.button.title = window.Notification && window.Notification.permission === "denied"
      ? t("The browser blocks notifications for this site") : t("Desktop notifications for new messages");
  }

  /** A live message: notify when it is new, inbound, yours or unassigned, and not being read. */
  message(message, isNew) {
    if (!isNew || message.direction !== "in" || !this.enabled()) return;
    const user = message.from_user || "";
    if (!this.isMineOrUnassigned(message.app, user)) return;
    if (document.visibilityState === "visible" && this.isReading(message.app, user)) return;
    const text = message.content || t("New message");
    const note = new window.Notification(message.user_name || user, {
      body: text.length > 120 ? text.slice(0, 120) + "…" : text, tag: message.app + "/" + user,
    });
    note.onclick = () => {
      window.focus();
      window.location.hash = conversationRoute(message.app, user);
    };
  }

  /** "(3) wecomd": the unread inbound messages of the loaded conversations. */
  title(unread) {
    document.title = unread > 0 ? "(" + unread + ") " + this.baseTitle : this.baseTitle;
  }
}
