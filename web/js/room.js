// One open room: history (infinite scroll back), its live log, the composer, typing, read ticks.
import { ApiError } from "./api.js";
import * as Q from "./documents.js";
import { attempt, cursors, h, notify, roomTitle, time } from "./dom.js";

const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];
const TYPING_REPEAT_MS = 3000; // the server lapses a typing state 6 s after the last one
const TYPING_SHOWN_MS = 7000; // a lapse the server's Typing(false) did not reach us for
const MARK_READ_DELAY_MS = 250;

export class RoomView {
  constructor({ api, me, room, onRoom, onLeft, onRead }) {
    Object.assign(this, { api, me, room, onRoom, onLeft, onRead });
    this.entries = new Map(); // message id or "seq:N" -> { data, el }
    this.lastSeq = 0; // the newest log entry applied: live entries resume after it
    this.readSeqs = new Map(); // user id -> { name, seq }: read ticks
    this.myReadSeq = 0;
    this.readTimer = null;
    this.pendingRead = null; // { seq, cursor } waiting to be sent by markRead
    this.typers = new Map(); // user name -> timer
    this.typingSentAt = 0;
    this.oldest = null; // cursor of the oldest message shown: `before` of the next page back
    this.hasOlder = false;
    this.loadingOlder = false;
    this.stopped = false;
    this.stops = [];
    this.draft = null; // { text, clientMessageId }: a failed send is retried with the same id
    this.element = this.#render();
    this.roomChanged(room);
  }

  // ------------------------------------------------------------ lifecycle

  async start() {
    const roomId = this.room.id;
    try {
      // 1. The log head first, then the newest page: an entry committed in between is both in
      //    the page and replayed below, and replays are idempotent (by message id and seq).
      const head = await this.api.query(Q.LOG_HEAD, { roomId });
      const page = await this.api.query(Q.MESSAGES, { roomId });
      if (this.stopped) return;
      const headEdge = head.roomEvents.edges.at(-1);
      this.#advance(headEdge?.node.seq ?? 0, headEdge?.cursor ?? null);
      this.#prependPage(page.messages);
      const newest = page.messages.edges.at(-1);
      if (newest) this.#advance(newest.node.seq, newest.cursor);
      this.#scrollToBottom();
    } catch (error) {
      notify(error.message);
      return;
    }
    // 2. Live entries after the last cursor shown, kept in localStorage. The variables are a
    //    function: after a reconnect the subscription resumes from the newest cursor, so
    //    nothing is missing and nothing comes twice.
    this.stops.push(
      this.api.follow(
        Q.ROOM_EVENTS,
        () => ({ roomId, after: cursors.get(this.me, roomId) }),
        ({ roomEvents }) => this.#apply(roomEvents),
        (error) => this.#ended(error),
      ),
    );
    // 3. Typing, presence and read positions: current state first, then changes.
    this.stops.push(
      this.api.follow(Q.ROOM_SIGNALS, () => ({ roomId }), ({ roomSignals }) => this.#signal(roomSignals)),
    );
    this.topObserver.observe(this.top);
  }

  stop() {
    this.stopped = true;
    for (const stop of this.stops) stop();
    this.readObserver.disconnect();
    this.topObserver.disconnect();
    clearTimeout(this.readTimer);
    for (const timer of this.typers.values()) clearTimeout(timer);
    if (this.typingSentAt) this.#typing(false);
  }

  /** The room as the server last described it (name, members, read positions). */
  roomChanged(room) {
    if (room.id !== this.room.id) return;
    this.room = room;
    for (const m of room.memberships) {
      const known = this.readSeqs.get(m.user.id)?.seq ?? 0;
      this.readSeqs.set(m.user.id, { name: m.user.name, seq: Math.max(known, m.readSeq) });
      if (m.user.id === this.me.id) this.myReadSeq = Math.max(this.myReadSeq, m.readSeq);
    }
    this.title.textContent = roomTitle(room, this.me);
    this.#renderMembers();
    this.#renderTicks();
  }

  presenceChanged(roomId, user, online) {
    if (roomId !== this.room.id || this.room.kind !== "DIRECT") return;
    this.presence.textContent = online ? "online" : "offline";
    this.presence.className = `presence${online ? " online" : ""}`;
  }

  // ------------------------------------------------------------ the log

  #advance(seq, cursor) {
    if (seq <= this.lastSeq || !cursor) return;
    this.lastSeq = seq;
    cursors.set(this.me, this.room.id, cursor);
  }

  #apply(event) {
    if (event.seq <= this.lastSeq) return; // already shown (the page, or before a reconnect)
    switch (event.__typename) {
      case "MessagePosted":
        if (this.typers.has(event.actor.name)) this.#showTyping(event.actor.name, false); // sent
        this.#upsertMessage(event.message);
        break;
      case "MessageEdited":
        this.#upsertMessage(event.message);
        break;
      case "MessageDeleted": {
        const entry = this.entries.get(event.messageId);
        if (entry) this.#upsertMessage({ ...entry.data, data: "", deletedAt: event.createdAt, reactions: [] });
        break;
      }
      case "ReactionAdded":
      case "ReactionRemoved":
        this.#react(event);
        break;
      default:
        this.#system(event);
    }
    this.#advance(event.seq, event.cursor);
  }

  #react(event) {
    const entry = this.entries.get(event.messageId);
    if (!entry) return; // older than anything shown: its page will come with its reactions
    const added = event.__typename === "ReactionAdded";
    const mine = event.actor.id === this.me.id;
    const reactions = entry.data.reactions.map((r) => ({ ...r }));
    let reaction = reactions.find((r) => r.emoji === event.emoji);
    if (mine && (reaction?.me ?? false) === added) return; // already counted
    if (!reaction) reactions.push((reaction = { emoji: event.emoji, count: 0, me: false }));
    reaction.count += added ? 1 : -1;
    if (mine) reaction.me = added;
    this.#upsertMessage({ ...entry.data, reactions: reactions.filter((r) => r.count > 0) });
  }

  #system(event) {
    const actor = event.actor.name;
    const member = event.member?.name;
    const self = event.member && event.member.id === event.actor.id;
    const text = {
      MemberJoined: self ? `${member} created the room` : `${actor} added ${member}`,
      MemberLeft: self ? `${member} left` : `${actor} removed ${member}`,
      RoleChanged: `${actor} made ${member} ${String(event.role).toLowerCase()}`,
      RoomRenamed: `${actor} renamed the room to “${event.name}”`,
    }[event.__typename];
    if (!text) return;
    const key = `seq:${event.seq}`;
    if (this.entries.has(key)) return;
    const el = h("div", { class: "system", dataset: { seq: event.seq, cursor: event.cursor } }, text, " · ", time(event.createdAt));
    this.entries.set(key, { data: event, el });
    this.#insert(el, event.seq);
    if (event.__typename === "MemberLeft" && event.member.id === this.me.id) this.onLeft();
  }

  #ended(error) {
    // FORBIDDEN: removed from the room (or left it on another device).
    if (error instanceof ApiError && error.code === "FORBIDDEN") this.onLeft();
    else notify(error.message);
  }

  // ------------------------------------------------------------ messages

  #upsertMessage(message) {
    const entry = this.entries.get(message.id);
    const el = this.#messageElement(message);
    if (entry) {
      entry.el.replaceWith(el);
      this.readObserver.unobserve(entry.el);
      this.readObserver.observe(el);
      entry.el = el;
      entry.data = message;
    } else {
      this.entries.set(message.id, { data: message, el });
      this.#insert(el, message.seq);
    }
    this.#renderTicks();
  }

  // Entries stay in seq order whatever order they arrive in (a send's answer may beat the log).
  #insert(el, seq) {
    const stick = this.#nearBottom();
    const after = [...this.list.children].find((child) => Number(child.dataset.seq) > seq);
    this.list.insertBefore(el, after ?? null);
    this.readObserver.observe(el);
    if (stick && !after) this.#scrollToBottom();
  }

  #messageElement(m) {
    const mine = m.sender.id === this.me.id;
    const deleted = Boolean(m.deletedAt);
    return h("article", {
      class: `message${mine ? " mine" : ""}${deleted ? " deleted" : ""}`,
      dataset: { id: m.id, seq: m.seq, cursor: m.cursor, sender: m.sender.name },
    },
      h("header", {},
        h("span", { class: "sender" }, m.sender.name),
        h("time", { datetime: m.createdAt }, time(m.createdAt)),
        m.editedAt && !deleted ? h("span", { class: "edited", title: time(m.editedAt) }, "(edited)") : null,
      ),
      h("div", { class: "body" }, deleted ? "message deleted" : m.data),
      deleted ? null : h("div", { class: "reactions" },
        m.reactions.map((r) => h("button", {
          class: `reaction${r.me ? " me" : ""}`,
          dataset: { emoji: r.emoji },
          title: r.me ? "remove your reaction" : "react too",
          onclick: () => this.#toggleReaction(m.id, r.emoji, r.me),
        }, `${r.emoji} ${r.count}`)),
      ),
      deleted ? null : h("div", { class: "actions" },
        QUICK_REACTIONS.map((emoji) => h("button", {
          class: "add-reaction", dataset: { emoji }, title: `react ${emoji}`,
          onclick: () => this.#toggleReaction(m.id, emoji, m.reactions.some((r) => r.emoji === emoji && r.me)),
        }, emoji)),
        mine ? h("button", { class: "edit", onclick: (e) => this.#edit(m, e.target.closest("article")) }, "Edit") : null,
        mine || this.#myRole() !== "MEMBER" ? h("button", { class: "delete", onclick: () => this.#delete(m) }, "Delete") : null,
      ),
      mine ? h("div", { class: "seen" }) : null,
    );
  }

  async #toggleReaction(messageId, emoji, mine) {
    // The answer is not applied: the ReactionAdded/Removed entry of the log updates the counts
    // for every member alike, this one included.
    await attempt(() => this.api.mutate(mine ? Q.REMOVE_REACTION : Q.ADD_REACTION, { messageId, emoji }));
  }

  #edit(message, el) {
    const input = h("input", { class: "edit-input", value: message.data, "aria-label": "edit message" });
    const form = h("form", { class: "edit-form inline", onsubmit: async (e) => {
      e.preventDefault();
      const data = await attempt(() => this.api.mutate(Q.EDIT, { messageId: message.id, data: input.value }));
      if (data) this.#upsertMessage(data.editMessage);
    } }, input, h("button", { type: "submit" }, "Save"), h("button", { type: "button", class: "secondary", onclick: () => this.#upsertMessage(this.entries.get(message.id).data) }, "Cancel"));
    el.querySelector(".body").replaceWith(form);
    input.focus();
  }

  async #delete(message) {
    const data = await attempt(() => this.api.mutate(Q.DELETE, { messageId: message.id }));
    if (data) this.#upsertMessage(data.deleteMessage);
  }

  async #send(event) {
    event.preventDefault();
    const text = this.input.value;
    if (!text.trim()) return;
    // One clientMessageId per text: a send retried after a network failure is not doubled.
    if (this.draft?.text !== text) this.draft = { text, clientMessageId: newId() };
    const data = await attempt(() => this.api.mutate(Q.SEND, { roomId: this.room.id, data: text, clientMessageId: this.draft.clientMessageId }));
    if (!data) return;
    this.draft = null;
    this.input.value = "";
    this.#typing(false);
    this.#upsertMessage(data.sendMessage);
    this.#scrollToBottom();
  }

  // ------------------------------------------------------------ history

  #prependPage(connection) {
    const before = this.log.scrollHeight;
    for (const { node } of connection.edges) {
      if (!this.entries.has(node.id)) {
        const el = this.#messageElement(node);
        this.entries.set(node.id, { data: node, el });
        this.#insert(el, node.seq);
      }
    }
    this.oldest = connection.pageInfo.startCursor ?? this.oldest;
    this.hasOlder = connection.pageInfo.hasPreviousPage;
    this.top.textContent = this.hasOlder ? "" : "This is the beginning of the conversation.";
    this.log.scrollTop += this.log.scrollHeight - before; // keep what was on screen in place
    this.#renderTicks();
  }

  async #loadOlder() {
    if (!this.hasOlder || this.loadingOlder || !this.oldest) return;
    this.loadingOlder = true;
    this.top.textContent = "Loading older messages…";
    try {
      const page = await attempt(() => this.api.query(Q.MESSAGES, { roomId: this.room.id, before: this.oldest }));
      if (page && !this.stopped) this.#prependPage(page.messages);
    } finally {
      this.loadingOlder = false;
    }
    // Still at the top (a short page): keep going.
    if (this.hasOlder && this.log.scrollTop < 40) this.#loadOlder();
  }

  // ------------------------------------------------------------ signals

  #signal(signal) {
    switch (signal.__typename) {
      case "Typing":
        if (signal.user.id !== this.me.id) this.#showTyping(signal.user.name, signal.typing);
        break;
      case "Presence":
        this.presenceChanged(signal.roomId, signal.user, signal.online);
        break;
      case "ReadPosition": {
        const known = this.readSeqs.get(signal.user.id)?.seq ?? 0;
        this.readSeqs.set(signal.user.id, { name: signal.user.name, seq: Math.max(known, signal.seq) });
        if (signal.user.id === this.me.id) this.myReadSeq = Math.max(this.myReadSeq, signal.seq);
        this.#renderTicks();
        break;
      }
    }
  }

  #showTyping(name, typing) {
    clearTimeout(this.typers.get(name));
    this.typers.delete(name);
    if (typing) this.typers.set(name, setTimeout(() => this.#showTyping(name, false), TYPING_SHOWN_MS));
    const names = [...this.typers.keys()];
    this.typingLine.textContent =
      names.length === 0 ? "" : `${names.join(" and ")} ${names.length === 1 ? "is" : "are"} typing…`;
  }

  #typing(typing) {
    const now = Date.now();
    if (typing && now - this.typingSentAt < TYPING_REPEAT_MS) return;
    if (!typing && !this.typingSentAt) return;
    this.typingSentAt = typing ? now : 0;
    this.api.mutate(Q.SET_TYPING, { roomId: this.room.id, typing }).catch(() => {}); // best effort
  }

  // "✓ sent" or "✓✓ seen by …" on my messages, from the members' read positions.
  #renderTicks() {
    for (const { data, el } of this.entries.values()) {
      const seen = el.querySelector(".seen");
      if (!seen) continue;
      const readers = [...this.readSeqs.entries()]
        .filter(([id, r]) => id !== this.me.id && r.seq >= data.seq)
        .map(([, r]) => r.name);
      seen.textContent = readers.length ? `✓✓ seen by ${readers.join(", ")}` : "✓ sent";
      seen.classList.toggle("read", readers.length > 0);
    }
  }

  // markRead as entries scroll into view (only while the page is visible), at most one call
  // per MARK_READ_DELAY_MS, always forward.
  #visible(entries) {
    if (document.visibilityState !== "visible") return;
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      const seq = Number(entry.target.dataset.seq);
      if (seq > this.myReadSeq && seq > (this.pendingRead?.seq ?? 0)) {
        this.pendingRead = { seq, cursor: entry.target.dataset.cursor };
      }
    }
    if (this.pendingRead && !this.readTimer) {
      this.readTimer = setTimeout(() => this.#markRead(), MARK_READ_DELAY_MS);
    }
  }

  async #markRead() {
    this.readTimer = null;
    const pending = this.pendingRead;
    this.pendingRead = null;
    if (!pending || pending.seq <= this.myReadSeq || this.stopped) return;
    this.myReadSeq = pending.seq;
    const data = await attempt(() => this.api.mutate(Q.MARK_READ, { roomId: this.room.id, cursor: pending.cursor }));
    if (data) this.onRead(this.room.id, data.markRead.unreadCount);
  }

  // ------------------------------------------------------------ group administration

  #myRole() {
    return this.room.memberships.find((m) => m.user.id === this.me.id)?.role ?? "MEMBER";
  }

  // The member list is redrawn on every change; the forms are built once (#membersForms), so
  // what someone is typing survives a change that arrives meanwhile.
  #renderMembers() {
    if (this.room.kind !== "GROUP") {
      this.membersButton.hidden = true;
      return;
    }
    this.membersButton.hidden = false;
    this.membersButton.textContent = `Members (${this.room.memberships.length})`;
    const role = this.#myRole();
    const admin = role === "OWNER" || role === "ADMIN";
    const rows = this.room.memberships.map((m) => {
      const removable = admin && m.role !== "OWNER" && m.user.id !== this.me.id && (role === "OWNER" || m.role === "MEMBER");
      return h("li", { class: "member", dataset: { name: m.user.name, role: m.role } },
        h("span", {}, m.user.name), h("span", { class: "role" }, m.role.toLowerCase()),
        role === "OWNER" && m.role !== "OWNER"
          ? h("button", { class: "set-role link", onclick: () => this.#admin(Q.SET_ROLE, { name: m.user.name, role: m.role === "ADMIN" ? "MEMBER" : "ADMIN" }) },
              m.role === "ADMIN" ? "make member" : "make admin")
          : null,
        removable ? h("button", { class: "remove-member link", onclick: () => this.#admin(Q.REMOVE_MEMBER, { name: m.user.name }) }, "remove") : null,
      );
    });
    this.memberList.replaceChildren(...rows);
    this.addForm.hidden = !admin;
    this.renameForm.hidden = !admin;
    if (document.activeElement !== this.renameInput) this.renameInput.value = this.room.name;
  }

  // addMembers, removeMember, setRole and renameRoom answer with the room as it is now.
  async #admin(document, variables) {
    const data = await attempt(() => this.api.mutate(document, { roomId: this.room.id, ...variables }));
    if (data) this.onRoom(Object.values(data)[0]);
    return Boolean(data);
  }

  #membersForms() {
    this.memberList = h("ul", { class: "members" });
    const addInput = h("input", { class: "add-members-input", placeholder: "names: dave, erin", "aria-label": "names to add" });
    this.renameInput = h("input", { class: "rename-input", "aria-label": "room name" });
    this.addForm = h("form", { class: "add-members inline", onsubmit: async (e) => {
      e.preventDefault();
      const names = addInput.value.split(",").map((n) => n.trim()).filter(Boolean);
      if (await this.#admin(Q.ADD_MEMBERS, { names })) addInput.value = "";
    } }, addInput, h("button", { type: "submit" }, "Add"));
    this.renameForm = h("form", { class: "rename inline", onsubmit: (e) => {
      e.preventDefault();
      this.#admin(Q.RENAME_ROOM, { name: this.renameInput.value.trim() });
      this.renameInput.blur();
    } }, this.renameInput, h("button", { type: "submit" }, "Rename"));
    const leave = h("button", { class: "leave danger", onclick: async () => {
      const data = await attempt(() => this.api.mutate(Q.LEAVE_ROOM, { roomId: this.room.id }));
      if (data) this.onLeft();
    } }, "Leave room");
    return [this.memberList, this.addForm, this.renameForm, leave];
  }

  // ------------------------------------------------------------ DOM

  #render() {
    this.title = h("h2", { id: "room-title" });
    this.presence = h("span", { class: "presence", id: "room-presence" });
    this.membersButton = h("button", { id: "toggle-members", class: "link", onclick: () => (this.membersPanel.hidden = !this.membersPanel.hidden) });
    this.membersPanel = h("div", { id: "members-panel", class: "panel", hidden: true }, this.#membersForms());
    this.top = h("div", { id: "history-top", class: "muted" });
    this.list = h("div", { class: "entries" });
    this.log = h("div", { id: "log", class: "log" }, this.top, this.list);
    this.typingLine = h("div", { id: "typing", class: "typing muted", "aria-live": "polite" });
    this.input = h("input", { id: "message-input", autocomplete: "off", placeholder: "Write a message", "aria-label": "message" });
    this.input.addEventListener("input", () => this.#typing(this.input.value.length > 0));
    this.readObserver = new IntersectionObserver((entries) => this.#visible(entries), { root: this.log, threshold: 0.5 });
    this.topObserver = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) this.#loadOlder();
    }, { root: this.log });
    return h("section", { id: "room", class: "room-view", dataset: { id: this.room.id, kind: this.room.kind } },
      h("header", { class: "room-header" }, this.title, this.room.kind === "DIRECT" ? this.presence : null, this.membersButton),
      this.membersPanel,
      this.log,
      this.typingLine,
      h("form", { id: "composer", class: "inline", onsubmit: (e) => this.#send(e) }, this.input, h("button", { type: "submit", id: "send" }, "Send")),
    );
  }

  #nearBottom() {
    return this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 80;
  }

  #scrollToBottom() {
    this.log.scrollTop = this.log.scrollHeight;
  }
}

function newId() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}
