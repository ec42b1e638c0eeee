// The chat client's shell: accounts, the room list, sessions, and the open room (room.js).
import { Api } from "./api.js";
import * as Q from "./documents.js";
import { $, attempt, h, notify, roomTitle, time } from "./dom.js";
import { RoomView } from "./room.js";

const PRESENCE_ROOMS = 20; // direct rooms whose presence dot is followed (one subscription each)

const state = {
  api: null,
  me: null,
  rooms: new Map(), // id -> Room, as the server last described it
  order: [], // room ids, most recent activity first
  presence: new Map(), // direct room id -> online (the other member)
  signals: new Map(), // room id -> stop(), for presence dots
  stopInbox: null,
  open: null, // the RoomView
  refreshTimer: null,
  refetching: new Map(), // room id -> timer (inbox events refetch the room, debounced)
  left: new Set(), // rooms the user left or was removed from: a late answer must not revive them
};

function setStatus(status, previous) {
  const banner = $("#status");
  banner.hidden = status !== "reconnecting";
  banner.textContent = "Reconnecting…";
  document.body.dataset.connection = status;
  // inboxEvents has no cursor: after a reconnect, catch up by reading the list again.
  if (status === "online" && previous === "reconnecting") loadRooms();
}

// ---------------------------------------------------------------- accounts

function newApi() {
  state.api?.dispose();
  state.api = new Api({ onStatus: setStatus, onSessionEnded: sessionEnded });
  return state.api;
}

async function boot() {
  const api = newApi();
  try {
    const { me } = await api.query(Q.ME);
    if (me) await signedIn(me);
    else showAuth();
  } catch (error) {
    showAuth(error.message);
  }
}

function showAuth(message = "") {
  state.me = null;
  clearTimeout(state.refreshTimer);
  // The old Api's followers died with it.
  state.signals.clear();
  state.presence.clear();
  state.rooms.clear();
  state.left.clear();
  state.order = [];
  state.stopInbox = null;
  $("#app").replaceChildren();
  $("#whoami").replaceChildren();
  const name = h("input", { id: "auth-name", name: "username", autocomplete: "username", required: true, placeholder: "name" });
  const password = h("input", { id: "auth-password", name: "password", type: "password", autocomplete: "current-password", required: true, placeholder: "password (8+ characters)" });
  const error = h("p", { id: "auth-error", class: "error", role: "alert" }, message);
  const submit = (document) => async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      // Over HTTP: the answer sets the HttpOnly session cookie.
      const data = await state.api.mutate(document, { name: name.value, password: password.value });
      const payload = data.signUp ?? data.signIn;
      await signedIn(payload.user, payload.expiresAt);
    } catch (e) {
      error.textContent = e.message;
    }
  };
  const form = h(
    "form",
    { id: "auth", class: "auth", onsubmit: submit(Q.SIGN_IN) },
    h("h1", {}, "Chat"),
    h("label", {}, "Name", name),
    h("label", {}, "Password", password),
    h("div", { class: "row" },
      h("button", { id: "sign-in", type: "submit" }, "Sign in"),
      h("button", { id: "sign-up", type: "button", class: "secondary", onclick: submit(Q.SIGN_UP) }, "Sign up"),
    ),
    error,
  );
  $("#app").append(form);
  document.body.dataset.screen = "auth";
  name.focus();
}

async function signedIn(me, expiresAt = null) {
  state.me = me;
  state.api.signedIn = true;
  document.body.dataset.screen = "chat";
  $("#whoami").replaceChildren(
    h("span", { id: "me" }, me.name),
    h("button", { id: "show-sessions", class: "link", onclick: showSessions }, "Sessions"),
    h("button", { id: "sign-out", class: "link", onclick: signOut }, "Sign out"),
  );
  renderShell();
  if (!expiresAt) {
    const { sessions } = await state.api.query(Q.SESSIONS);
    expiresAt = sessions.find((s) => s.current)?.expiresAt;
  }
  scheduleRefresh(expiresAt);
  await loadRooms();
  // Every log entry of every room the user is in (rooms joined later too).
  state.stopInbox = state.api.follow(Q.INBOX_EVENTS, () => ({}), ({ inboxEvents }) => onInboxEvent(inboxEvents));
}

// The session cookie expires at expiresAt: refresh it on our own well before then.
function scheduleRefresh(expiresAt) {
  clearTimeout(state.refreshTimer);
  if (!expiresAt) return;
  const left = new Date(expiresAt).getTime() - Date.now();
  const delay = Math.max(1000, left - Math.min(10 * 60_000, left * 0.2));
  state.refreshTimer = setTimeout(async () => {
    const data = await attempt(() => state.api.mutate(Q.REFRESH));
    if (data) scheduleRefresh(data.refreshToken.expiresAt);
  }, Math.min(delay, 2 ** 31 - 1));
}

async function signOut() {
  const api = state.api;
  closeRoom();
  // signOut revokes the session and clears the cookie; the server closes our sockets (4401).
  api.signedIn = false;
  api.dispose();
  await attempt(() => api.mutate(Q.SIGN_OUT));
  newApi();
  showAuth();
}

async function revokeSession(id) {
  if (await attempt(() => state.api.mutate(Q.REVOKE_SESSION, { id }))) await showSessions();
}

function sessionEnded() {
  closeRoom();
  newApi();
  showAuth("Your session has ended. Please sign in again.");
}

// ---------------------------------------------------------------- sessions (devices)

async function showSessions() {
  const data = await attempt(() => state.api.query(Q.SESSIONS));
  if (!data) return;
  closeRoom();
  const rows = data.sessions.map((s) =>
    h("li", { class: "session", dataset: { current: s.current } },
      h("div", {},
        h("strong", {}, s.current ? "This device" : "Another device"),
        h("div", { class: "muted" }, s.userAgent ?? "unknown browser"),
        h("div", { class: "muted" }, `signed in ${time(s.createdAt)}, expires ${time(s.expiresAt)}`),
      ),
      // This device signs out (signOut clears our cookie); another device is revoked by id
      // (revokeSession): its sockets close with 4401 on whichever server holds them.
      s.current
        ? h("button", { class: "sign-out-session", onclick: signOut }, "Sign out")
        : h("button", { class: "sign-out-session", onclick: () => revokeSession(s.id) }, "Sign out"),
    ),
  );
  $("#main").replaceChildren(h("section", { id: "sessions", class: "panel" }, h("h2", {}, "Your sessions"), h("ul", {}, rows)));
  document.body.dataset.view = "sessions";
}

// ---------------------------------------------------------------- the room list

function renderShell() {
  const direct = h("input", { id: "direct-name", placeholder: "name", required: true });
  const groupName = h("input", { id: "group-name", placeholder: "group name", required: true });
  const groupMembers = h("input", { id: "group-members", placeholder: "members: bob, carol", required: true });
  $("#app").replaceChildren(
    h("aside", { id: "sidebar" },
      h("form", { id: "new-direct", class: "inline", onsubmit: (e) => { e.preventDefault(); startDirect(direct.value.trim()); direct.value = ""; } },
        direct, h("button", { type: "submit" }, "Chat")),
      h("details", { id: "new-group" },
        h("summary", {}, "New group"),
        h("form", { class: "stack", onsubmit: (e) => { e.preventDefault(); createGroup(groupName.value.trim(), groupMembers.value); } },
          groupName, groupMembers, h("button", { type: "submit" }, "Create"))),
      h("ul", { id: "rooms" }),
    ),
    h("main", { id: "main" }, h("p", { class: "empty" }, "Pick a conversation, or start one with a name.")),
  );
}

async function loadRooms() {
  const data = await attempt(() => state.api.query(Q.ROOMS));
  if (!data) return;
  state.rooms = new Map(data.rooms.edges.map((e) => [e.node.id, e.node]));
  state.order = data.rooms.edges.map((e) => e.node.id);
  renderRooms();
}

function activity(room) {
  return room.lastMessage?.createdAt ?? room.createdAt;
}

function upsertRoom(room) {
  if (state.left.has(room.id)) return;
  state.rooms.set(room.id, room);
  state.order = [...state.rooms.values()].sort((a, b) => activity(b).localeCompare(activity(a))).map((r) => r.id);
  renderRooms();
  state.open?.roomChanged(room);
}

function removeRoom(id) {
  state.left.add(id);
  clearTimeout(state.refetching.get(id));
  state.refetching.delete(id);
  state.rooms.delete(id);
  state.order = state.order.filter((r) => r !== id);
  if (state.open?.room.id === id) closeRoom("You are no longer in this room.");
  renderRooms();
}

function renderRooms() {
  const list = $("#rooms");
  if (!list) return;
  list.replaceChildren(...state.order.map((id) => {
    const room = state.rooms.get(id);
    const open = state.open?.room.id === id;
    const unread = open ? 0 : room.unreadCount; // the open room is being read
    const last = room.lastMessage;
    return h("li", {},
      h("button", {
        class: `room${open ? " open" : ""}`,
        dataset: { id, name: roomTitle(room, state.me), kind: room.kind },
        onclick: () => openRoom(id),
      },
        room.kind === "DIRECT"
          ? h("span", { class: `dot${state.presence.get(id) ? " online" : ""}`, title: state.presence.get(id) ? "online" : "offline" })
          : h("span", { class: "dot group", title: "group" }, "#"),
        h("span", { class: "room-name" }, roomTitle(room, state.me)),
        unread > 0 ? h("span", { class: "badge", title: `${unread} unread` }, unread >= 1000 ? "999+" : String(unread)) : null,
        h("span", { class: "preview" }, last ? `${last.sender.name}: ${last.data}` : "no messages yet"),
      ));
  }));
  followPresence();
}

// One roomSignals per direct room in the list: its Presence signals light the dot.
function followPresence() {
  const wanted = new Set(state.order.filter((id) => state.rooms.get(id).kind === "DIRECT").slice(0, PRESENCE_ROOMS));
  for (const [id, stop] of state.signals) {
    if (!wanted.has(id)) { stop(); state.signals.delete(id); state.presence.delete(id); }
  }
  for (const id of wanted) {
    if (state.signals.has(id)) continue;
    state.signals.set(id, state.api.follow(Q.PRESENCE_SIGNALS, () => ({ roomId: id }), ({ roomSignals: s }) => {
      if (s.__typename === "Presence" && s.user.id !== state.me.id) {
        state.presence.set(id, s.online);
        const dot = $(`#rooms .room[data-id="${CSS.escape(id)}"] .dot`);
        if (dot) { dot.classList.toggle("online", s.online); dot.title = s.online ? "online" : "offline"; }
        state.open?.presenceChanged(id, s.user, s.online);
      }
    }));
  }
}

function onInboxEvent(event) {
  const self = event.member?.id === state.me.id;
  if (event.__typename === "MemberLeft" && self) {
    removeRoom(event.roomId);
    return;
  }
  if (event.__typename === "MemberJoined" && self) state.left.delete(event.roomId); // (re)added
  // Whatever happened, the room's list entry (last message, unread count) is read again;
  // several events in a burst cost one read.
  clearTimeout(state.refetching.get(event.roomId));
  state.refetching.set(event.roomId, setTimeout(async () => {
    state.refetching.delete(event.roomId);
    try {
      const { room } = await state.api.query(Q.ROOM, { id: event.roomId });
      if (room) upsertRoom(room);
    } catch {
      // FORBIDDEN: left meanwhile; its MemberLeft removes it. Anything else: the next event.
    }
  }, 100));
}

// ---------------------------------------------------------------- rooms

async function startDirect(name) {
  if (!name) return;
  const data = await attempt(() => state.api.query(Q.DIRECT_ROOM, { with: name }));
  if (!data) return;
  if (!state.rooms.has(data.directRoom.id)) upsertRoom(data.directRoom);
  openRoom(data.directRoom.id);
}

async function createGroup(name, members) {
  const names = members.split(",").map((n) => n.trim()).filter(Boolean);
  const data = await attempt(() => state.api.mutate(Q.CREATE_ROOM, { name, members: names }));
  if (!data) return;
  $("#new-group").open = false;
  upsertRoom(data.createRoom);
  openRoom(data.createRoom.id);
}

function openRoom(id) {
  if (state.open?.room.id === id) return;
  closeRoom();
  const room = state.rooms.get(id);
  state.open = new RoomView({
    api: state.api,
    me: state.me,
    room,
    onRoom: upsertRoom,
    onLeft: () => removeRoom(id),
    onRead: (roomId, unreadCount) => {
      const r = state.rooms.get(roomId);
      if (r) { r.unreadCount = unreadCount; renderRooms(); }
    },
  });
  $("#main").replaceChildren(state.open.element);
  document.body.dataset.view = "room";
  state.open.start();
  renderRooms();
}

function closeRoom(message) {
  state.open?.stop();
  state.open = null;
  const main = $("#main");
  if (main) main.replaceChildren(h("p", { class: "empty" }, message ?? "Pick a conversation, or start one with a name."));
  document.body.dataset.view = "";
  renderRooms();
}

boot();
