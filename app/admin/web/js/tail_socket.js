// The live tail's connection: Centrifugo's JSON client protocol spoken directly over the
// server's own WebSocket endpoint (no SDK: only connect, ping and publication pushes matter).
//
// admin/tail mints a connection token whose `subs` claim names the channel, so the connect
// reply already means "subscribed" (server-side subscription) and publications arrive as
// {"push": {"channel", "pub": {...}}}. A frame may carry several newline-separated replies.
// The server pings with an empty reply {} and expects {} back. On close the reason is shown
// and the socket reconnects after a backoff with a fresh token (the old one may have expired).

import * as api from "./api.js";
import * as json from "./json.js";

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;

/**
 * Whether a close code means "do not reconnect": Centrifugo's terminal disconnect codes
 * (3500-3999, 4500-4999), as its SDKs treat them (e.g. 3500 invalid token, 3501 bad request).
 */
export const terminal = (code) => (code >= 3500 && code < 4000) || (code >= 4500 && code < 5000);

/**
 * States reported through onState(state, detail): connecting → subscribed (detail: the
 * connection's client id) → closed (detail: code and reason; a reconnect follows) →
 * connecting ...; failed (detail: why) is final, as is stop().
 */
export class TailSocket {
  /**
   * @param {string} channel
   * @param {{onState: (state: string, detail: string) => void,
   *          onPublication: (pub: object, channel: string) => void}} handlers
   */
  constructor(channel, { onState, onPublication }) {
    this.channel = channel;
    this.onState = onState;
    this.onPublication = onPublication;
    this.ws = null;
    this.timer = null;
    this.attempt = 0;
    this.stopped = false;
  }

  async start() {
    this.timer = null;
    this.onState("connecting", this.attempt ? `attempt ${this.attempt + 1}` : "");
    let grant;
    try {
      grant = await api.tail(this.channel);
    } catch (e) {
      if (e instanceof api.Unauthorized || this.stopped) return;
      if (e.status === 400) {
        // A bad channel will stay bad: no retry.
        this.stopped = true;
        this.onState("failed", e.message);
        return;
      }
      this.onState("closed", e.message);
      this.retry();
      return;
    }
    if (this.stopped) return;
    const url = new URL(grant.url, location.href);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ id: 1, connect: { token: grant.token, name: "admin-ui" } }));
    };
    ws.onmessage = (event) => this.receive(ws, event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      const why = `${event.code}${event.reason ? ` ${event.reason}` : ""}`;
      if (terminal(event.code)) {
        this.stopped = true;
        this.onState("failed", `the server closed the connection for good (${why})`);
        return;
      }
      this.onState("closed", why);
      this.retry();
    };
  }

  receive(ws, text) {
    for (const line of String(text).split("\n")) {
      if (!line.trim()) continue;
      const reply = json.parse(line); // publication data shown exactly, big integers too
      if (reply.id === 1) {
        if (reply.error) {
          this.onState("closed", `connect refused: ${reply.error.message} (${reply.error.code})`);
          ws.close();
        } else {
          this.attempt = 0;
          this.onState("subscribed", reply.connect?.client ?? "");
        }
      } else if (reply.push?.pub) {
        this.onPublication(reply.push.pub, reply.push.channel);
      } else if (reply.push?.unsubscribe) {
        this.onState("closed", `unsubscribed: ${reply.push.unsubscribe.reason ?? ""}`);
        ws.close();
      } else if (reply.push?.disconnect) {
        // The close event that follows carries the same code and reason.
      } else if (Object.keys(reply).length === 0) {
        ws.send("{}"); // pong
      }
    }
  }

  retry() {
    if (this.stopped) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    this.attempt += 1;
    const delay = base / 2 + Math.random() * (base / 2); // jitter: tabs do not reconnect in step
    this.timer = setTimeout(() => this.start(), delay);
  }

  stop() {
    this.stopped = true;
    if (this.timer !== null) clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, "admin ui closed the tail");
  }
}
