// The thread's reply box: what kind of message it sends (text, markdown, a textcard, news), a file
// pasted, dropped or picked (with a preview and WeCom's limits), and quick replies picked by typing
// "/" (saved snippets whose {user_name} and {from_user} are filled in). Sending goes through the
// JSON API or, for a file, a multipart form (handlers/thread.py MessagesHandler).

import { api } from "./api.js";
import { el, formatSize, t } from "./dom.js";

const MB = 1024 * 1024;
// WeCom's media/upload limits (wecomd/wecom/outbound.py); the server checks them again, by content.
export const LIMITS = { image: 10 * MB, voice: 2 * MB, video: 10 * MB, file: 20 * MB };
const MIN_BYTES = 5;
const MAX_ARTICLES = 8;
const TYPES = ["text", "markdown", "textcard", "news"];
const BOT_TYPES = ["text", "markdown"]; // what a bot's response_url takes
const KF_TYPES = ["text"]; // what this box sends a 微信客服 customer besides files (kf/send_msg)
const PICKER_ROWS = 8;

/** How WeCom will take a file: image (JPG, PNG), voice (AMR), video (MP4), or any other file. */
export function fileKind(file) {
  const name = (file.name || "").toLowerCase();
  const type = (file.type || "").toLowerCase();
  if (type === "image/png" || type === "image/jpeg" || /\.(png|jpe?g)$/.test(name)) return "image";
  if (type === "audio/amr" || /\.amr$/.test(name)) return "voice";
  if (type === "video/mp4" || /\.mp4$/.test(name)) return "video";
  return "file";
}

/** A quick reply's text for this conversation: {user_name} (the UserID while no name is known) and {from_user}. */
export function fillPlaceholders(text, context) {
  const user = (context && context.user) || "";
  const name = (context && context.userName) || user;
  return String(text).split("{user_name}").join(name).split("{from_user}").join(user);
}

/** The "/word" being typed just before the caret (at the start or after a space), or null. */
export function slashToken(before) {
  const match = /(?:^|\s)\/([^\s/]*)$/u.exec(before);
  return match ? { query: match[1], start: before.length - match[1].length - 1 } : null;
}

function kindLabel(kind) {
  return { image: t("Image"), voice: t("Voice"), video: t("Video"), file: t("File") }[kind];
}

export class Composer {
  /**
   * hooks: context() → {app, user, userName} of the open conversation, or null;
   * sent(message, since, context) once a reply is stored; error(text) shows an error ("" clears it).
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.form = document.getElementById("composer");
    this.input = document.getElementById("reply");
    this.sendButton = document.getElementById("send");
    this.type = "text";
    this.attachment = null;
    this.available = true;
    this.sending = false;
    this.replies = []; // the quick replies the picker shows, fetched each time it opens
    this.picker = { open: false, matches: [], index: 0, loading: null };
    this.me = null;
    this.build();
    this.bind();
    api.me().then((me) => {
      this.me = me;
      document.body.dataset.role = me.role; // a viewer's page shows no write actions (wecomd.css)
      this.renderManager();
    }, () => {});
  }

  // ---------------------------------------------------------------- building and binding

  build() {
    this.typeSelect = el("select", { id: "compose-type", "aria-label": t("Message type") },
      TYPES.map((type) => el("option", { value: type }, {
        text: t("Text"), markdown: t("Markdown"), textcard: t("Text card"), news: t("News"),
      }[type])));
    this.fileInput = el("input", { id: "attach-input", type: "file", hidden: true });
    this.attachButton = el("button", { id: "attach", type: "button", class: "ghost" }, t("Attach file"));
    this.manageButton = el("button", { id: "quick-manage-toggle", type: "button", class: "ghost", "aria-expanded": "false" },
      t("Quick replies"));
    const limits = el("span", { class: "composer-limits" },
      t("Files: images up to 10 MB (JPG, PNG), voice up to 2 MB (AMR), video up to 10 MB (MP4), other files up to 20 MB"));
    this.warning = el("p", { id: "markdown-warning", class: "composer-warning", hidden: true },
      t("Markdown is not shown to people who use WeCom through WeChat (the WeChat plugin): they see nothing."));
    this.cardTitle = el("input", { id: "card-title", type: "text", maxlength: 128, placeholder: t("Title"), "aria-label": t("Title") });
    this.cardUrl = el("input", { id: "card-url", type: "url", placeholder: t("Link (https://…)"), "aria-label": t("Link") });
    this.cardButton = el("input", { id: "card-button", type: "text", maxlength: 4, placeholder: t("Button text (optional)"),
      "aria-label": t("Button text") });
    this.cardFields = el("div", { id: "textcard-fields", class: "card-fields", hidden: true },
      this.cardTitle, this.cardUrl, this.cardButton);
    this.articles = el("ol", { id: "news-articles", class: "news-fields" });
    this.addArticleButton = el("button", { id: "add-article", type: "button", class: "ghost" }, t("Add article"));
    this.newsFields = el("div", { id: "news-fields", class: "card-fields", hidden: true }, this.articles, this.addArticleButton);
    this.attachmentBox = el("div", { id: "attachment", class: "attachment", hidden: true });
    this.pickerList = el("ul", { id: "quick-picker", class: "quick-picker", role: "listbox", "aria-label": t("Quick replies"), hidden: true });
    this.manager = this.buildManager();
    const tools = el("div", { class: "composer-tools" }, this.typeSelect, this.attachButton, this.manageButton, this.fileInput, limits);
    const row = this.form.querySelector(".composer-row");
    for (const node of [tools, this.warning, this.manager, this.cardFields, this.newsFields, this.attachmentBox, this.pickerList]) {
      this.form.insertBefore(node, row);
    }
    this.addArticle();
  }

  buildManager() {
    this.manageList = el("ul", { class: "quick-list" });
    this.newShortcut = el("input", { id: "quick-shortcut", type: "text", maxlength: 32, placeholder: t("Shortcut, e.g. vpn"),
      "aria-label": t("Shortcut") });
    this.newText = el("textarea", { id: "quick-text", rows: 2, maxlength: 10000, "aria-label": t("Quick reply text"),
      placeholder: t("Text; {user_name} and {from_user} are filled in") });
    this.newShared = el("input", { id: "quick-shared", type: "checkbox" });
    this.sharedLabel = el("label", { class: "quick-shared", hidden: true }, this.newShared, " ", t("Shared with everyone"));
    this.manageError = el("p", { class: "composer-error", role: "alert", hidden: true });
    const form = el("div", { class: "quick-form" }, this.newShortcut, this.newText, this.sharedLabel,
      el("button", { id: "quick-add", type: "button", onclick: () => this.addQuickReply() }, t("Save quick reply")));
    return el("div", { id: "quick-manage", class: "quick-manage", hidden: true },
      el("p", { class: "composer-hint" }, t("Type / in the reply box to insert one.")), this.manageList, this.manageError, form);
  }

  bind() {
    this.input.addEventListener("keydown", (event) => this.keydown(event));
    this.input.addEventListener("input", () => {
      this.autosize();
      this.updatePicker();
    });
    this.input.addEventListener("click", () => this.updatePicker());
    this.input.addEventListener("blur", () => window.setTimeout(() => this.closePicker(), 150));
    this.input.addEventListener("paste", (event) => {
      const files = event.clipboardData ? [...event.clipboardData.files] : [];
      if (files.length === 0) return; // text pastes as text
      event.preventDefault();
      this.attach(files[0]);
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.typeSelect.addEventListener("change", () => this.setType(this.typeSelect.value));
    this.attachButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      if (this.fileInput.files.length) this.attach(this.fileInput.files[0]);
      this.fileInput.value = "";
    });
    this.addArticleButton.addEventListener("click", () => this.addArticle());
    this.manageButton.addEventListener("click", () => this.toggleManager());
    // A file dropped anywhere on the open conversation goes into the reply box.
    const area = document.getElementById("thread-view") || this.form;
    area.addEventListener("dragover", (event) => {
      if (!this.canTakeFiles(event)) return;
      event.preventDefault();
      this.form.classList.add("dropping");
    });
    area.addEventListener("dragleave", (event) => {
      if (!area.contains(event.relatedTarget)) this.form.classList.remove("dropping");
    });
    area.addEventListener("drop", (event) => {
      this.form.classList.remove("dropping");
      if (!this.canTakeFiles(event)) return;
      event.preventDefault();
      this.attach(event.dataTransfer.files[0]);
    });
    this.pickerList.addEventListener("mousedown", (event) => event.preventDefault()); // keep the caret
  }

  canTakeFiles(event) {
    const types = event.dataTransfer ? [...event.dataTransfer.types] : [];
    return this.available && !this.sending && types.includes("Files");
  }

  keydown(event) {
    const composing = event.isComposing || event.keyCode === 229; // an IME (pinyin) is still composing
    if (this.picker.open && !composing) {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        const step = event.key === "ArrowDown" ? 1 : -1;
        const count = this.picker.matches.length;
        if (count) this.picker.index = (this.picker.index + step + count) % count;
        this.renderPicker();
        return;
      }
      if ((event.key === "Enter" || event.key === "Tab") && this.picker.matches.length) {
        event.preventDefault();
        this.insertReply(this.picker.matches[this.picker.index]);
        return;
      }
      if (event.key === "Escape") {
        event.preventDefault();
        this.closePicker();
        return;
      }
    }
    // Enter sends, Shift+Enter is a newline; never send while an IME is composing.
    if (event.key === "Enter" && !event.shiftKey && !composing) {
      event.preventDefault();
      this.submit();
    }
  }

  // ---------------------------------------------------------------- the conversation changes

  /** A conversation was opened: no file carried over from the last one. */
  reset() {
    this.detach();
    this.closePicker();
    this.hooks.error("");
  }

  /** A 智能机器人's conversation takes text or markdown only: no cards, news or files. A 微信客服
   * customer (`kf`) takes text and files (kf/send_msg has no markdown, textcard or news). */
  setBot(bot, kf = false) {
    const types = bot ? BOT_TYPES : kf ? KF_TYPES : TYPES;
    for (const option of this.typeSelect.options) {
      option.hidden = !types.includes(option.value);
    }
    this.attachButton.hidden = bot;
    if (!types.includes(this.type)) this.setType("text");
    if (bot && this.attachment) this.detach();
  }

  /** Whether this conversation can be answered at all (thread.setComposer decides). */
  setAvailable(available) {
    this.available = available;
    this.applyDisabled();
  }

  applyDisabled() {
    const off = !this.available || this.sending;
    for (const node of [this.input, this.sendButton, this.typeSelect, this.attachButton, this.cardTitle, this.cardUrl,
      this.cardButton, this.addArticleButton, ...this.articles.querySelectorAll("input, textarea, button")]) {
      node.disabled = off;
    }
    if (!off && this.attachment) this.typeSelect.disabled = true; // a file goes as what it is
    this.form.classList.toggle("sending", this.sending);
  }

  setType(type) {
    this.type = TYPES.includes(type) ? type : "text";
    this.typeSelect.value = this.type;
    this.warning.hidden = this.type !== "markdown";
    this.cardFields.hidden = this.type !== "textcard";
    this.newsFields.hidden = this.type !== "news";
    this.input.hidden = this.type === "news";
    this.input.placeholder = this.type === "textcard" ? t("Card description…") : t("Reply…");
    this.closePicker();
  }

  autosize() {
    const lines = this.input.value.split("\n").length;
    this.input.rows = Math.min(6, Math.max(1, lines));
  }

  // ---------------------------------------------------------------- files

  attach(file) {
    if (!file || !this.available) return;
    const kind = fileKind(file);
    let problem = null;
    if (file.size <= MIN_BYTES) problem = t("A file must be larger than 5 bytes.");
    else if (file.size > LIMITS[kind]) {
      problem = t("Too large: WeCom takes {kind} files of at most {size}.", { kind: kindLabel(kind), size: formatSize(LIMITS[kind]) });
    }
    this.detach();
    const name = file.name || (kind === "image" ? "image.png" : "file");
    this.attachment = { file, kind, name, problem, url: kind === "image" && !problem ? URL.createObjectURL(file) : null };
    this.renderAttachment();
  }

  detach() {
    if (this.attachment && this.attachment.url) URL.revokeObjectURL(this.attachment.url);
    this.attachment = null;
    this.renderAttachment();
  }

  renderAttachment() {
    const a = this.attachment;
    this.attachmentBox.hidden = !a;
    this.attachmentBox.replaceChildren();
    this.applyDisabled();
    if (!a) return;
    const meta = [kindLabel(a.kind), formatSize(a.file.size), t("up to {size}", { size: formatSize(LIMITS[a.kind]) })];
    this.attachmentBox.dataset.kind = a.kind;
    this.attachmentBox.append(
      a.url ? el("img", { class: "attachment-thumb", src: a.url, alt: a.name })
        : el("span", { class: "file-icon file-icon-" + a.kind, "aria-hidden": "true" }),
      el("span", { class: "attachment-text" },
        el("span", { class: "attachment-name" }, a.name),
        el("span", { class: "attachment-meta" }, meta.join(" · ")),
        a.problem ? el("span", { class: "attachment-problem", role: "alert" }, a.problem)
          : el("span", { class: "attachment-note" }, t("Sent on its own when you press Send; the text stays in the box."))),
      el("button", { type: "button", class: "attachment-remove", "aria-label": t("Remove the file"), onclick: () => this.detach() }, "×"));
  }

  // ---------------------------------------------------------------- news articles

  addArticle() {
    if (this.articles.children.length >= MAX_ARTICLES) return;
    const remove = el("button", { type: "button", class: "ghost article-remove", "aria-label": t("Remove the article") }, "×");
    const item = el("li", { class: "article" },
      el("input", { type: "text", class: "article-title", maxlength: 128, placeholder: t("Title"), "aria-label": t("Title") }),
      el("input", { type: "url", class: "article-url", placeholder: t("Link (https://…)"), "aria-label": t("Link") }),
      el("input", { type: "text", class: "article-description", placeholder: t("Description (optional)"), "aria-label": t("Description") }),
      el("input", { type: "url", class: "article-picurl", placeholder: t("Picture link (optional)"), "aria-label": t("Picture link") }),
      remove);
    remove.addEventListener("click", () => {
      if (this.articles.children.length > 1) item.remove();
      this.addArticleButton.hidden = this.articles.children.length >= MAX_ARTICLES;
    });
    this.articles.append(item);
    this.addArticleButton.hidden = this.articles.children.length >= MAX_ARTICLES;
  }

  newsArticles() {
    return [...this.articles.children].map((item) => {
      const value = (cls) => item.querySelector("." + cls).value.trim();
      const article = { title: value("article-title"), url: value("article-url") };
      if (value("article-description")) article.description = value("article-description");
      if (value("article-picurl")) article.picurl = value("article-picurl");
      return article;
    }).filter((article) => article.title || article.url);
  }

  // ---------------------------------------------------------------- sending

  /** The request for what the box holds, and how to clear it afterwards; null when there is nothing. */
  outgoing(context) {
    const { app, user } = context;
    const content = this.input.value;
    if (this.attachment) {
      const a = this.attachment;
      if (a.problem) return { problem: a.problem };
      return { send: () => api.sendFile(app, user, a.kind, a.file, a.name), clear: () => this.detach() };
    }
    const clearText = () => {
      if (this.input.value === content) this.input.value = "";
      this.autosize();
    };
    if (this.type === "news") {
      const articles = this.newsArticles();
      if (!articles.length) return null;
      return {
        send: () => api.sendRich(app, user, "news", { news: { articles } }),
        clear: () => {
          this.articles.replaceChildren();
          this.addArticle();
        },
      };
    }
    if (this.type === "textcard") {
      const textcard = { title: this.cardTitle.value.trim(), description: content, url: this.cardUrl.value.trim() };
      if (this.cardButton.value.trim()) textcard.btntxt = this.cardButton.value.trim();
      if (!textcard.title && !content.trim()) return null;
      return {
        send: () => api.sendRich(app, user, "textcard", { textcard }),
        clear: () => {
          clearText();
          for (const input of [this.cardTitle, this.cardUrl, this.cardButton]) input.value = "";
        },
      };
    }
    if (!content.trim()) return null;
    if (this.type === "markdown") return { send: () => api.sendRich(app, user, "markdown", { content }), clear: clearText };
    return { send: () => api.send(app, user, content), clear: clearText };
  }

  async submit() {
    const context = this.hooks.context();
    if (!context || !this.available || this.sending) return;
    this.closePicker();
    const outgoing = this.outgoing(context);
    if (!outgoing) return;
    if (outgoing.problem) {
      this.hooks.error(t("Not sent: {error}", { error: outgoing.problem }));
      return;
    }
    this.sending = true;
    this.applyDisabled();
    this.hooks.error("");
    const since = performance.now();
    try {
      const message = await outgoing.send();
      outgoing.clear();
      this.hooks.sent(message, since, context);
    } catch (err) {
      this.hooks.error(t("Not sent: {error}", { error: err.message }));
    } finally {
      this.sending = false;
      this.applyDisabled();
      if (!this.input.hidden) this.input.focus();
    }
  }

  // ---------------------------------------------------------------- quick replies: the "/" picker

  updatePicker() {
    const token = this.type === "text" || this.type === "markdown"
      ? slashToken(this.input.value.slice(0, this.input.selectionStart)) : null;
    if (!token) {
      this.closePicker();
      return;
    }
    if (!this.picker.open) {
      this.picker.open = true;
      this.picker.index = 0;
      // Fetched each time the picker opens: a colleague may have saved one meanwhile.
      const loading = api.quickReplies().then((data) => {
        if (this.picker.loading !== loading) return;
        this.replies = data.quick_replies || [];
        this.filterPicker(token.query);
      }, () => {});
      this.picker.loading = loading;
    }
    this.filterPicker(token.query);
  }

  filterPicker(query) {
    const q = query.toLowerCase();
    const scored = this.replies
      .map((reply) => ({ reply, at: reply.shortcut.toLowerCase().indexOf(q) }))
      .filter((entry) => entry.at >= 0 || (q && entry.reply.text.toLowerCase().includes(q)))
      .sort((a, b) => (a.at < 0) - (b.at < 0) || a.at - b.at || a.reply.shortcut.localeCompare(b.reply.shortcut));
    this.picker.matches = scored.slice(0, PICKER_ROWS).map((entry) => entry.reply);
    this.picker.index = Math.min(this.picker.index, Math.max(0, this.picker.matches.length - 1));
    this.renderPicker();
  }

  renderPicker() {
    const { matches, index, open } = this.picker;
    this.pickerList.hidden = !open;
    if (!open) return;
    const context = this.hooks.context();
    const rows = matches.map((reply, i) => el("li", {
      role: "option", class: "quick-option" + (i === index ? " active" : ""), "aria-selected": i === index ? "true" : "false",
      dataset: { shortcut: reply.shortcut }, onclick: () => this.insertReply(reply),
    },
    el("span", { class: "quick-shortcut" }, "/" + reply.shortcut),
    reply.team ? el("span", { class: "quick-badge" }, t("shared")) : null,
    el("span", { class: "quick-preview" }, fillPlaceholders(reply.text, context))));
    if (!rows.length) rows.push(el("li", { class: "quick-empty" }, t("No quick reply matches. Save one under Quick replies.")));
    this.pickerList.replaceChildren(...rows);
  }

  closePicker() {
    this.picker = { open: false, matches: [], index: 0, loading: null };
    this.pickerList.hidden = true;
  }

  insertReply(reply) {
    const caret = this.input.selectionStart;
    const before = this.input.value.slice(0, caret);
    const token = slashToken(before);
    if (!token) return;
    const text = fillPlaceholders(reply.text, this.hooks.context());
    this.input.value = before.slice(0, token.start) + text + this.input.value.slice(caret);
    const at = token.start + text.length;
    this.input.setSelectionRange(at, at);
    this.closePicker();
    this.autosize();
    this.input.focus();
  }

  // ---------------------------------------------------------------- quick replies: saving them

  toggleManager() {
    const open = this.manager.hidden;
    this.manager.hidden = !open;
    this.manageButton.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) this.loadManager();
  }

  async loadManager() {
    try {
      this.replies = (await api.quickReplies()).quick_replies || [];
      this.manageError.hidden = true;
    } catch (err) {
      this.manageError.textContent = err.message;
      this.manageError.hidden = false;
    }
    this.renderManager();
  }

  renderManager() {
    const admin = !!this.me && this.me.role === "admin";
    this.sharedLabel.hidden = !admin;
    this.manageList.replaceChildren(...this.replies.map((reply) => {
      const mine = !reply.team && this.me && reply.owner === this.me.name;
      return el("li", { class: "quick-item", dataset: { shortcut: reply.shortcut } },
        el("span", { class: "quick-shortcut" }, "/" + reply.shortcut),
        reply.team ? el("span", { class: "quick-badge" }, t("shared")) : null,
        el("span", { class: "quick-preview" }, reply.text),
        mine || (reply.team && admin)
          ? el("button", { type: "button", class: "ghost quick-delete", onclick: () => this.deleteQuickReply(reply) }, t("Delete"))
          : null);
    }));
  }

  async addQuickReply() {
    const shortcut = this.newShortcut.value.trim().replace(/^\//, "");
    const text = this.newText.value;
    if (!shortcut || !text.trim()) return;
    try {
      await api.addQuickReply(shortcut, text, this.newShared.checked);
      this.newShortcut.value = "";
      this.newText.value = "";
      this.newShared.checked = false;
      await this.loadManager();
    } catch (err) {
      this.manageError.textContent = t("Not saved: {error}", { error: err.message });
      this.manageError.hidden = false;
    }
  }

  async deleteQuickReply(reply) {
    try {
      await api.deleteQuickReply(reply.id);
      await this.loadManager();
    } catch (err) {
      this.manageError.textContent = err.message;
      this.manageError.hidden = false;
    }
  }
}
