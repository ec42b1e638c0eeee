// A few DOM helpers: the client needs no framework.

/** h("div", { class: "x", onclick: fn }, "text", child) builds an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function time(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

/** The name to show for a room: a direct room is named after the other member. */
export function roomTitle(room, me) {
  if (room.kind !== "DIRECT") return room.name;
  const other = room.members.find((m) => m.id !== me.id);
  return other ? other.name : room.name;
}

/** localStorage, per user, for the last cursor shown in each room. */
export const cursors = {
  key: (me, roomId) => `chat.cursor.${me.id}.${roomId}`,
  get(me, roomId) {
    return localStorage.getItem(this.key(me, roomId));
  },
  set(me, roomId, cursor) {
    localStorage.setItem(this.key(me, roomId), cursor);
  },
};

// Messages for people: the one line where failures show, in the words ApiError gives them.

export function notify(text, kind = "error") {
  const box = $("#notice");
  box.textContent = text;
  box.className = `notice ${kind}`;
  box.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => (box.hidden = true), kind === "error" ? 8000 : 3000);
}

/** Runs an action and shows its failure in human words (ApiError carries them). */
export async function attempt(action) {
  try {
    return await action();
  } catch (error) {
    notify(error.message ?? String(error));
    return undefined;
  }
}

