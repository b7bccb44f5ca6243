// The live feed panel: WS /api/live with reconnect and exponential backoff, and its indicator in
// the top bar. app.js hands each event to the panels that show it.

import { api } from "./api.js";
import { t } from "./dom.js";

const MIN_DELAY = 1000;
const MAX_DELAY = 30000;

/**
 * Connect and stay connected. Callbacks:
 *   onEvent(data)           every event ({"type": "message" | "status", ...}), in order; a frame is a
 *                           JSON array of the events published since the previous one
 *   onOpen()                after each (re)connect: the caller re-fetches what it may have missed
 *   onState(state, delayMs) "connecting" | "live" | "offline" (delay until the next attempt)
 *   onDrop()                after a close, e.g. to check whether the session is still valid
 */
export function connectLive({ onEvent, onOpen, onState, onDrop }) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const url = scheme + "//" + window.location.host + "/api/live";
  let failures = 0;
  let timer = null;
  let socket = null;

  function connect() {
    timer = null;
    onState("connecting", 0);
    try {
      socket = new WebSocket(url);
    } catch (err) {
      schedule();
      return;
    }
    socket.addEventListener("open", () => {
      failures = 0;
      onState("live", 0);
      onOpen();
    });
    socket.addEventListener("message", (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      for (const item of Array.isArray(data) ? data : [data]) {
        if (!item || typeof item !== "object") continue;
        try {
          onEvent(item);
        } catch (err) {
          window.setTimeout(() => { throw err; }); // still reported, without losing the rest of the frame
        }
      }
    });
    socket.addEventListener("close", () => {
      socket = null;
      if (onDrop) onDrop();
      schedule();
    });
  }

  function schedule() {
    if (timer !== null) return;
    // 1 s, 2 s, 4 s ... 30 s, with jitter so many dashboards do not reconnect in lockstep.
    const base = Math.min(MAX_DELAY, MIN_DELAY * 2 ** failures);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    failures += 1;
    onState("offline", delay);
    timer = window.setTimeout(connect, delay);
  }

  /** Reconnect now (e.g. the tab became visible or the network came back). */
  function retryNow() {
    if (socket !== null || timer === null) return;
    window.clearTimeout(timer);
    connect();
  }

  window.addEventListener("online", retryNow);
  connect();
  return { retryNow };
}

const CONNECTION_TEXT = {
  connecting: () => t("Connecting…"),
  live: () => t("Live"),
  offline: (delay) => t("Offline, retrying in {n} s", { n: Math.max(1, Math.round(delay / 1000)) }),
};

/** The top bar's indicator: connecting, live, or offline until the next attempt. */
export class LiveStatus {
  constructor() {
    this.indicator = document.getElementById("conn");
    this.text = document.getElementById("conn-text");
  }

  render(name, delay) {
    this.indicator.className = "conn conn-" + name;
    this.indicator.dataset.state = name;
    this.text.textContent = CONNECTION_TEXT[name](delay);
  }
}

/** The feed as the dashboard uses it: `onEvent(data)` for each event, `onOpen()` after each (re)connect. */
export function startLive({ onEvent, onOpen }) {
  const status = new LiveStatus();
  return connectLive({
    onEvent,
    onOpen,
    onState: (name, delay) => status.render(name, delay),
    // A closed socket may mean the session ended: a cheap API call redirects to the login page.
    onDrop: () => api.apps().catch(() => {}),
  });
}
