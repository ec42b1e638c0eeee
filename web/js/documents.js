// The GraphQL documents the client sends: a readable catalogue of how a frontend uses the API.
// Every document is a plain string; urql parses it (with @0no-co/graphql.web) and caches the parse.

// ---- Accounts (HTTP only: these set or clear the HttpOnly session cookie) ----

export const SIGN_UP = `mutation SignUp($name: String!, $password: String!) {
  signUp(name: $name, password: $password) { user { id name } expiresAt }
}`;

export const SIGN_IN = `mutation SignIn($name: String!, $password: String!) {
  signIn(name: $name, password: $password) { user { id name } expiresAt }
}`;

export const SIGN_OUT = `mutation SignOut { signOut }`;
// Revokes another of your sessions (a lost device); signOut is for this one.
export const REVOKE_SESSION = `mutation RevokeSession($id: ID!) { revokeSession(id: $id) }`;

// Replaces the session's token (new cookie, new expiry); open sockets keep running.
export const REFRESH = `mutation Refresh { refreshToken { user { id name } expiresAt } }`;

// `me` is null without a valid cookie: how the page learns whether it is signed in.
export const ME = `query Me {
  me { id name }
  sessions { id createdAt expiresAt current userAgent }
}`;

export const SESSIONS = `query Sessions { sessions { id createdAt expiresAt current userAgent } }`;

// ---- Rooms ----

const ROOM_FIELDS = `
  id kind name lastSeq unreadCount readCursor createdAt
  members { id name }
  lastMessage { id seq data sender { name } createdAt }
  memberships { user { id name } role readSeq }
`;

// The room list, most recent activity first.
export const ROOMS = `query Rooms($after: String) {
  rooms(first: 50, after: $after) {
    edges { node { ${ROOM_FIELDS} } }
    pageInfo { hasNextPage endCursor }
  }
}`;

export const ROOM = `query Room($id: ID!) { room(id: $id) { ${ROOM_FIELDS} } }`;

// A direct room's id exists before its first message.
export const DIRECT_ROOM = `query DirectRoom($with: String!) { directRoom(with: $with) { ${ROOM_FIELDS} } }`;

export const CREATE_ROOM = `mutation CreateRoom($name: String!, $members: [String!]!) {
  createRoom(name: $name, members: $members) { ${ROOM_FIELDS} }
}`;
export const ADD_MEMBERS = `mutation AddMembers($roomId: ID!, $names: [String!]!) {
  addMembers(roomId: $roomId, names: $names) { ${ROOM_FIELDS} }
}`;
export const REMOVE_MEMBER = `mutation RemoveMember($roomId: ID!, $name: String!) {
  removeMember(roomId: $roomId, name: $name) { ${ROOM_FIELDS} }
}`;
export const SET_ROLE = `mutation SetRole($roomId: ID!, $name: String!, $role: Role!) {
  setRole(roomId: $roomId, name: $name, role: $role) { ${ROOM_FIELDS} }
}`;
export const RENAME_ROOM = `mutation RenameRoom($roomId: ID!, $name: String!) {
  renameRoom(roomId: $roomId, name: $name) { ${ROOM_FIELDS} }
}`;
export const LEAVE_ROOM = `mutation LeaveRoom($roomId: ID!) { leaveRoom(roomId: $roomId) }`;

// ---- Messages ----

const MESSAGE_FIELDS = `
  id roomId seq cursor type data createdAt editedAt deletedAt clientMessageId
  sender { id name }
  reactions { emoji count me }
`;

// History pages back in time: `last` + `before` (edges oldest first within the page).
export const MESSAGES = `query Messages($roomId: ID!, $before: String) {
  messages(roomId: $roomId, last: 30, before: $before) {
    edges { cursor node { ${MESSAGE_FIELDS} } }
    pageInfo { hasPreviousPage startCursor }
  }
}`;

// The room's log head: the position live entries resume after when a room is opened.
export const LOG_HEAD = `query LogHead($roomId: ID!) {
  roomEvents(roomId: $roomId, last: 1) { edges { cursor node { seq } } }
}`;

// clientMessageId makes a retried send idempotent (the server skips a second copy).
export const SEND = `mutation Send($roomId: ID!, $data: String!, $clientMessageId: String) {
  sendMessage(roomId: $roomId, data: $data, clientMessageId: $clientMessageId) { ${MESSAGE_FIELDS} }
}`;
export const EDIT = `mutation Edit($messageId: ID!, $data: String!) {
  editMessage(messageId: $messageId, data: $data) { ${MESSAGE_FIELDS} }
}`;
export const DELETE = `mutation Delete($messageId: ID!) { deleteMessage(messageId: $messageId) { ${MESSAGE_FIELDS} } }`;
export const ADD_REACTION = `mutation React($messageId: ID!, $emoji: String!) {
  addReaction(messageId: $messageId, emoji: $emoji) { ${MESSAGE_FIELDS} }
}`;
export const REMOVE_REACTION = `mutation Unreact($messageId: ID!, $emoji: String!) {
  removeReaction(messageId: $messageId, emoji: $emoji) { ${MESSAGE_FIELDS} }
}`;

// ---- Signals ----

// Only moves forward; answers with the new unread count.
export const MARK_READ = `mutation MarkRead($roomId: ID!, $cursor: String!) {
  markRead(roomId: $roomId, cursor: $cursor) { id unreadCount readCursor }
}`;
// Lapses after 6 s on the server unless repeated; `typing: false` clears it at once.
export const SET_TYPING = `mutation SetTyping($roomId: ID!, $typing: Boolean!) { setTyping(roomId: $roomId, typing: $typing) }`;

// ---- Subscriptions (graphql-ws over the same /graphql endpoint) ----

// Every log entry of one room after `after`: first the stored ones, then live ones; none
// missing, none twice, in seq order. Resubscribing with the last cursor shown resumes exactly.
export const ROOM_EVENTS = `subscription RoomEvents($roomId: ID!, $after: String) {
  roomEvents(roomId: $roomId, after: $after) {
    __typename seq cursor roomId createdAt actor { id name }
    ... on MessagePosted { message { ${MESSAGE_FIELDS} } }
    ... on MessageEdited { message { ${MESSAGE_FIELDS} } }
    ... on MessageDeleted { messageId }
    ... on ReactionAdded { messageId emoji }
    ... on ReactionRemoved { messageId emoji }
    ... on MemberJoined { member { id name } role }
    ... on MemberLeft { member { id name } }
    ... on RoleChanged { member { id name } role }
    ... on RoomRenamed { name }
  }
}`;

// Every log entry of every room of the user, rooms joined later included: drives the room list.
export const INBOX_EVENTS = `subscription InboxEvents {
  inboxEvents {
    __typename seq cursor roomId actor { id name }
    ... on MemberJoined { member { id name } }
    ... on MemberLeft { member { id name } }
  }
}`;

// The room list's presence dots: only Presence matters there. (A document of its own, so urql
// does not share it with the open room's ROOM_SIGNALS: a shared operation would not replay the
// current state to its second subscriber.)
export const PRESENCE_SIGNALS = `subscription PresenceSignals($roomId: ID!) {
  roomSignals(roomId: $roomId) { __typename ... on Presence { roomId user { id name } online } }
}`;

// Ephemeral state: the current state first (who is online, who is typing), then changes.
export const ROOM_SIGNALS = `subscription RoomSignals($roomId: ID!) {
  roomSignals(roomId: $roomId) {
    __typename
    ... on Typing { roomId user { id name } typing }
    ... on Presence { roomId user { id name } online }
    ... on ReadPosition { roomId user { id name } seq cursor }
  }
}`;
