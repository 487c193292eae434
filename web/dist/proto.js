// The ringchat native protocol over one WebSocket: encoding requests,
// decoding replies and pushes into plain objects, matching replies to
// requests by req_id. One WebSocket binary message is one size-prefixed
// Envelope, byte for byte a TCP frame (docs/PROTOCOL.md "Framing").
// No UI and no reconnect policy here: app.js owns those.
import * as W from './wire.js';

const Body = W.Body;
export const ErrorCode = W.ErrorCode;
export const FriendState = W.FriendState;
export const FriendEventKind = W.FriendEventKind;
export const GroupEventKind = W.GroupEventKind;
export const Role = W.Role;

/** Direct conversation id: 1<<63 | min<<31 | max (docs/PROTOCOL.md). */
export function directConv(a, b) {
  const [lo, hi] = a < b ? [a, b] : [b, a];
  return (1n << 63n) | (lo << 31n) | hi;
}

const str = (b, s) => b.createString(s ?? '');
const u64 = (v) => BigInt(v ?? 0);

/** Request encoders: (builder, fields) => body offset. */
const ENC = {
  Hello: (b, f) => W.Hello.createHello(b, 1, str(b, f.client ?? 'ringchat-web')),
  Register: (b, f) => W.Register.createRegister(b, str(b, f.username), str(b, f.password)),
  Login: (b, f) => W.Login.createLogin(b, str(b, f.username), str(b, f.password)),
  Resume: (b, f) => {
    const tok = str(b, f.token);
    const since = f.since ?? [];
    W.Resume.startSinceVector(b, since.length);
    for (let i = since.length - 1; i >= 0; i--) {
      W.ConvSeq.createConvSeq(b, u64(since[i][0]), u64(since[i][1]));
    }
    const v = b.endVector();
    return W.Resume.createResume(b, tok, v);
  },
  Logout: (b) => { W.Logout.startLogout(b); return W.Logout.endLogout(b); },
  Ping: (b, f) => W.Ping.createPing(b, u64(f.nonce)),
  SearchUsers: (b, f) => W.SearchUsers.createSearchUsers(b, str(b, f.prefix), u64(f.after), f.limit ?? 0),
  FriendRequest: (b, f) => W.FriendRequest.createFriendRequest(b, u64(f.user), str(b, f.note)),
  FriendRespond: (b, f) => W.FriendRespond.createFriendRespond(b, u64(f.user), !!f.accept),
  FriendRemove: (b, f) => W.FriendRemove.createFriendRemove(b, u64(f.user)),
  ListFriends: (b, f) => W.ListFriends.createListFriends(b, u64(f.after), f.limit ?? 0),
  CreateGroup: (b, f) => W.CreateGroup.createCreateGroup(b, str(b, f.name), !!f.private, !!f.fullHistory),
  JoinGroup: (b, f) => W.JoinGroup.createJoinGroup(b, u64(f.group)),
  LeaveGroup: (b, f) => W.LeaveGroup.createLeaveGroup(b, u64(f.group)),
  GroupMembers: (b, f) => W.GroupMembers.createGroupMembers(b, u64(f.group), u64(f.after), f.limit ?? 0),
  ListGroups: (b, f) => W.ListGroups.createListGroups(b, u64(f.after), f.limit ?? 0),
  SendMessage: (b, f) => W.SendMessage.createSendMessage(b, u64(f.toUser), u64(f.group), u64(f.clientMsgId), str(b, f.body)),
  Ack: (b, f) => {
    const items = f.items ?? [];
    W.Ack.startItemsVector(b, items.length);
    for (let i = items.length - 1; i >= 0; i--) {
      W.ConvSeq.createConvSeq(b, u64(items[i][0]), u64(items[i][1]));
    }
    return W.Ack.createAck(b, b.endVector());
  },
  History: (b, f) => W.History.createHistory(b, u64(f.conv), u64(f.before), f.limit ?? 0),
  ListConversations: (b, f) => W.ListConversations.createListConversations(b, u64(f.after), f.limit ?? 0),
  ReadCursors: (b, f) => W.ReadCursors.createReadCursors(b, u64(f.conv), u64(f.after), f.limit ?? 0),
  Typing: (b, f) => W.Typing.createTyping(b, u64(f.conv), !!f.stopped),
};

/** One frame: a size-prefixed Envelope. */
export function encode(reqId, kind, fields = {}) {
  const b = new W.Builder(256);
  const body = ENC[kind](b, fields);
  const env = W.Envelope.createEnvelope(b, u64(reqId), Body[kind], body);
  b.finishSizePrefixed(env);
  return b.asUint8Array();
}

function chatMessage(m) {
  return {
    conv: m.conversation(), seq: m.seq(), sender: m.sender(), group: m.groupId(),
    ts: Number(m.timestampMs()), clientMsgId: m.clientMsgId(),
    body: m.body() ?? '', senderName: m.senderName() ?? '',
  };
}

function list(n, get) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(get(i));
  return out;
}

/** Reply and push decoders: (table) => fields. */
const DEC = {
  OkReply: () => ({}),
  ErrorReply: (t) => ({ code: t.code(), codeName: ErrorCode[t.code()] ?? String(t.code()), message: t.message() ?? '' }),
  HelloOk: (t) => ({ server: t.server() ?? '', maxFrame: t.maxFrame(), idleTimeoutMs: t.idleTimeoutMs() }),
  RegisterOk: (t) => ({ user: t.userId() }),
  LoginOk: (t) => ({ user: t.userId(), username: t.username() ?? '', token: t.token() ?? '' }),
  Pong: (t) => ({ nonce: t.nonce() }),
  UserList: (t) => ({
    users: list(t.usersLength(), (i) => { const u = t.users(i); return { id: u.userId(), name: u.username() ?? '', online: u.online() }; }),
    next: t.nextAfterId(),
  }),
  FriendList: (t) => ({
    friends: list(t.friendsLength(), (i) => {
      const f = t.friends(i);
      return { id: f.userId(), name: f.username() ?? '', online: f.online(), state: f.state(), note: f.note() ?? '' };
    }),
    next: t.nextAfterId(),
  }),
  GroupCreated: (t) => ({ group: t.groupId(), conv: t.conversation() }),
  MemberList: (t) => ({
    group: t.groupId(),
    members: list(t.membersLength(), (i) => {
      const m = t.members(i);
      return { id: m.userId(), name: m.username() ?? '', role: m.role(), online: m.online() };
    }),
    next: t.nextAfterId(),
  }),
  GroupList: (t) => ({
    groups: list(t.groupsLength(), (i) => {
      const g = t.groups(i);
      return { id: g.groupId(), name: g.name() ?? '', role: g.role(), conv: g.conversation(), private: g.private_(), fullHistory: g.fullHistory() };
    }),
    next: t.nextAfterId(),
  }),
  SendOk: (t) => ({ conv: t.conversation(), seq: t.seq(), ts: Number(t.timestampMs()), duplicate: t.duplicate() }),
  Messages: (t) => ({ messages: list(t.messagesLength(), (i) => chatMessage(t.messages(i))) }),
  SyncDone: (t) => ({ count: t.messages() }),
  Presence: (t) => ({ user: t.userId(), online: t.online() }),
  FriendEvent: (t) => ({ kind: t.kind(), user: t.userId(), username: t.username() ?? '', note: t.note() ?? '' }),
  GroupEvent: (t) => ({ kind: t.kind(), group: t.groupId(), user: t.userId(), actor: t.actor(), name: t.name() ?? '' }),
  Goodbye: (t) => ({ code: t.code(), codeName: ErrorCode[t.code()] ?? String(t.code()), message: t.message() ?? '' }),
  ConversationList: (t) => ({
    conversations: list(t.conversationsLength(), (i) => {
      const c = t.conversations(i);
      const last = c.lastMessage();
      return {
        conv: c.conversation(), group: c.groupId(), peer: c.peer(), name: c.name() ?? '',
        lastSeq: c.lastSeq(), readSeq: c.readSeq(), unread: c.unread(), peerReadSeq: c.peerReadSeq(),
        last: last ? chatMessage(last) : null, online: c.online(),
      };
    }),
    next: t.nextAfter(),
  }),
  ReadUpTo: (t) => ({ conv: t.conversation(), reader: t.reader(), seq: t.seq() }),
  ReadCursorList: (t) => ({
    conv: t.conversation(),
    cursors: list(t.cursorsLength(), (i) => { const c = t.cursors(i); return { user: c.userId(), seq: c.seq() }; }),
    next: t.nextAfterId(),
  }),
  TypingEvent: (t) => ({ conv: t.conversation(), group: t.groupId(), user: t.userId(), username: t.username() ?? '', stopped: t.stopped() }),
};

/** Decodes one frame; `type` is the body's name, unknown bodies give `type: null`. */
export function decode(bytes) {
  const env = W.Envelope.getSizePrefixedRootAsEnvelope(new W.ByteBuffer(bytes));
  const type = Body[env.bodyType()];
  const reqId = env.reqId();
  const dec = DEC[type];
  if (!dec) return { reqId, type: null };
  const table = env.body(new W[type]());
  return { reqId, type, ...dec(table) };
}

/** A server error answering a request. */
export class ServerError extends Error {
  constructor(reply) {
    super(`${reply.codeName}: ${reply.message}`);
    this.code = reply.code;
    this.codeName = reply.codeName;
  }
}

/** The connection closed before the reply came. */
export class ClosedError extends Error {
  constructor() { super('connection closed'); }
}

const REQUEST_TIMEOUT_MS = 15000;

/**
 * One WebSocket connection: `request()` returns a promise of the reply
 * (rejected with ServerError or ClosedError), `push` gets every req_id-0
 * frame, `closed` is called once when the socket ends.
 */
export class Connection {
  constructor(url, { push, closed }) {
    this.ws = new WebSocket(url);
    this.ws.binaryType = 'arraybuffer';
    this.pending = new Map();
    this.nextId = 1n;
    this.push = push;
    this.closedCb = closed;
    this.done = false;
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new ClosedError());
    });
    this.ws.onmessage = (ev) => this.onFrame(new Uint8Array(ev.data));
    this.ws.onclose = () => this.finish();
  }

  onFrame(bytes) {
    let f;
    try {
      f = decode(bytes);
    } catch (e) {
      console.error('undecodable frame', e);
      this.close();
      return;
    }
    if (f.reqId !== 0n && this.pending.has(f.reqId)) {
      const p = this.pending.get(f.reqId);
      this.pending.delete(f.reqId);
      clearTimeout(p.timer);
      if (f.type === 'ErrorReply') p.reject(new ServerError(f));
      else p.resolve(f);
      return;
    }
    if (f.type) this.push(f);
  }

  request(kind, fields = {}) {
    if (this.done) return Promise.reject(new ClosedError());
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ClosedError());
        this.close();
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(encode(id, kind, fields));
    });
  }

  /** A frame without reply (Ack). */
  tell(kind, fields = {}) {
    if (!this.done && this.ws.readyState === WebSocket.OPEN) this.ws.send(encode(0n, kind, fields));
  }

  close() {
    try { this.ws.close(); } catch (_) { /* already closing */ }
    this.finish();
  }

  finish() {
    if (this.done) return;
    this.done = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ClosedError());
    }
    this.pending.clear();
    this.closedCb();
  }
}
