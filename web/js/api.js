// The connection layer: urql for queries and mutations over HTTP, graphql-ws for subscriptions
// on the same /graphql endpoint, and the reconnect policy of the README's close-code table.
import {
  Client,
  fetchExchange,
  subscriptionExchange,
} from "../vendor/urql-core-6.0.3/dist/urql-core.mjs";
import { pipe, subscribe } from "../vendor/wonka-6.3.6/dist/wonka.mjs";
import { createClient as createWsClient } from "../vendor/graphql-ws-6.4.2/dist/client.js";

// Close codes (README, "What clients do when a socket closes").
const SESSION_ENDED = new Set([4401, 4403]); // 4401 signed out/expired, 4403 no session at init
// 1012 server restart, 1006 network lost (both in the README), 1013 the socket fell behind,
// 1001 going away, 1011 server error: reconnect and resume from the last cursor.
const RECONNECT = new Set([1001, 1006, 1011, 1012, 1013]);

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 8000;

// Human words for extensions.code (README, "Using the API").
const HUMAN = {
  UNAUTHENTICATED: "You are signed out. Please sign in again.",
  FORBIDDEN: "You are not allowed to do that here.",
  NOT_FOUND: "Not found.",
  BAD_USER_INPUT: "That input is not valid.",
  CONFLICT: "That name is taken.",
  RATE_LIMITED: "Too many attempts.",
  SERVICE_UNAVAILABLE: "The server's database is unavailable right now; try again shortly.",
  GRAPHQL_VALIDATION_FAILED: "The client sent a request the server does not accept.",
  BAD_REQUEST: "The client sent a malformed request.",
  INTERNAL_SERVER_ERROR: "Something went wrong on the server.",
  NETWORK: "Cannot reach the server. Check your connection and try again.",
};

/** An operation's failure, with the server's code and a sentence for people. */
export class ApiError extends Error {
  constructor(combined) {
    const first = combined.graphQLErrors?.[0];
    const code = first?.extensions?.code ?? (combined.networkError ? "NETWORK" : "INTERNAL_SERVER_ERROR");
    super(humanize(code, first));
    this.code = code;
    this.retryAfterMs = first?.extensions?.retryAfterMs ?? null;
  }
}

function humanize(code, error) {
  const base = HUMAN[code] ?? "Something went wrong.";
  const ext = error?.extensions ?? {};
  if (code === "RATE_LIMITED" && ext.retryAfterMs != null) {
    const seconds = Math.max(1, Math.ceil(ext.retryAfterMs / 1000));
    const at = new Date(Date.now() + ext.retryAfterMs).toLocaleTimeString();
    return `${base} Try again in ${seconds} s (at ${at}).`;
  }
  if (code === "INTERNAL_SERVER_ERROR" && ext.correlationId) {
    return `${base} (reference ${ext.correlationId})`;
  }
  // These messages name the input at fault ("no user named …"), so show them too.
  if (["BAD_USER_INPUT", "NOT_FOUND", "CONFLICT", "FORBIDDEN"].includes(code) && error?.message) {
    return `${base} ${error.message}`;
  }
  return base;
}

/** The close event inside an urql error, when a subscription ended because its socket closed. */
function closeEventOf(combined) {
  const cause = combined?.networkError;
  if (cause && typeof cause.code === "number") return cause; // a CloseEvent from graphql-ws
  if (cause) return { code: 1006, reason: String(cause.message ?? cause) }; // socket error
  return null;
}

export class Api {
  /**
   * onStatus("online" | "reconnecting" | "offline") drives the "reconnecting…" banner;
   * onSessionEnded(code) sends the user to the sign-in screen (4401, 4403, UNAUTHENTICATED).
   */
  constructor({ onStatus, onSessionEnded }) {
    this.onStatus = onStatus;
    this.onSessionEnded = onSessionEnded;
    this.status = "offline";
    this.followers = new Set();
    this.waiting = new Set();
    this.attempt = 0;
    this.retryTimer = null;
    this.disposed = false;
    this.signedIn = false;

    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.ws = createWsClient({
      url: `${scheme}://${location.host}/graphql`,
      // The browser sends the HttpOnly session cookie on the handshake: no connectionParams.
      lazy: true, // a socket only while something is followed
      // Reconnects are ours, not graphql-ws's: its retry would resubscribe with the variables
      // of the first subscribe, and resuming needs each room's newest cursor (see #interrupted).
      retryAttempts: 0,
      on: {
        connected: () => {
          this.attempt = 0;
          this.#setStatus("online");
        },
        closed: (event) => {
          if (!this.disposed && SESSION_ENDED.has(event?.code)) this.#sessionEnded(event.code);
        },
      },
    });

    this.client = new Client({
      url: "/graphql",
      // The server runs operations only from POST (GET is refused, so no cross-site request
      // can run one); urql would send queries as GET by default.
      preferGetMethod: false,
      fetchOptions: { credentials: "same-origin" }, // the session cookie goes along
      requestPolicy: "network-only",
      exchanges: [
        // Subscriptions go over the socket; queries and mutations fall through to fetch
        // (signUp, signIn and refreshToken must: they set the cookie, which a socket cannot).
        subscriptionExchange({
          forwardSubscription: (request) => ({
            subscribe: (sink) => ({
              unsubscribe: this.ws.subscribe({ ...request, query: request.query || "" }, sink),
            }),
          }),
        }),
        fetchExchange,
      ],
    });
  }

  async query(document, variables = {}) {
    return this.#run(this.client.query(document, variables));
  }

  async mutate(document, variables = {}) {
    return this.#run(this.client.mutation(document, variables));
  }

  async #run(source) {
    const result = await source.toPromise();
    if (result.error) {
      const error = new ApiError(result.error);
      // Signed in, UNAUTHENTICATED means the session ended (signIn's own failure is not that).
      if (error.code === "UNAUTHENTICATED" && this.signedIn) this.#sessionEnded(4401);
      throw error;
    }
    return result.data;
  }

  /**
   * Follows a subscription across reconnects. `variables` is a function, called at every
   * (re)subscribe, so a resumed subscription asks for entries after the newest cursor shown.
   * `onError` gets GraphQL errors (FORBIDDEN once removed from a room): those end it.
   * Returns a function that stops following.
   */
  follow(document, variables, onData, onError = () => {}) {
    const follower = { document, variables, onData, onError, unsubscribe: null, stopped: false };
    this.followers.add(follower);
    this.#start(follower);
    return () => {
      follower.stopped = true;
      this.followers.delete(follower);
      this.waiting.delete(follower);
      follower.unsubscribe?.();
    };
  }

  #start(follower) {
    const source = this.client.subscription(follower.document, follower.variables());
    const { unsubscribe } = pipe(
      source,
      subscribe((result) => {
        if (follower.stopped) return;
        if (!result.error) {
          follower.onData(result.data);
          return;
        }
        const close = closeEventOf(result.error);
        if (!close) {
          follower.stopped = true;
          this.followers.delete(follower);
          follower.onError(new ApiError(result.error));
        } else if (SESSION_ENDED.has(close.code)) {
          this.#sessionEnded(close.code);
        } else if (RECONNECT.has(close.code)) {
          this.#interrupted(follower);
        } else {
          // 4400, 4408, 4429, 1009: a client bug; reconnecting would repeat it.
          console.warn("socket closed", close.code, close.reason);
          this.#interrupted(follower);
        }
      }),
    );
    follower.unsubscribe = unsubscribe;
  }

  // Every follower on the socket lands here when it closes; one timer reconnects them all,
  // with exponential backoff and jitter so a restarted server is not hit by every tab at once.
  #interrupted(follower) {
    follower.unsubscribe = null;
    this.waiting.add(follower);
    if (this.retryTimer !== null || this.disposed) return;
    this.#setStatus("reconnecting");
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    this.attempt += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      const resume = [...this.waiting];
      this.waiting.clear();
      for (const f of resume) if (!f.stopped) this.#start(f);
    }, delay);
  }

  #setStatus(status) {
    if (status === this.status) return;
    const previous = this.status;
    this.status = status;
    this.onStatus(status, previous);
  }

  #sessionEnded(code) {
    if (this.disposed) return;
    this.dispose();
    this.onSessionEnded(code);
  }

  /** Stops everything (sign-out, session ended): no more reconnects. */
  dispose() {
    this.disposed = true;
    clearTimeout(this.retryTimer);
    for (const f of this.followers) {
      f.stopped = true;
      f.unsubscribe?.();
    }
    this.followers.clear();
    this.waiting.clear();
    this.ws.dispose();
  }
}
