// ringchat web client: state, persistence, reconnect and the DOM.
// State model (docs/WEB.md): a message store keyed by (conversation, seq)
// is what is shown (dedup is by that key, so nothing shows twice); the
// Inbox holds the contiguous cursor per conversation (what is acked and
// what Resume.since names, so nothing is lost across reloads, drops and
// server restarts). Both are saved to localStorage per user.
import { Connection, ServerError, ClosedError, directConv, FriendState, FriendEventKind, GroupEventKind, Role, ErrorCode } from './proto.js';
import { Inbox } from './inbox.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const WS_URL = params.get('ws') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const KEEP_PER_CONV = 300; // messages per conversation kept in localStorage
const PAGE = 50; // History page
const TYPING_RENEW_MS = 3000;
const TYPING_IDLE_MS = 4000;
const TYPING_SHOW_MS = 5000;
const BACKOFF_MS = [300, 1000, 2000, 4000, 8000];

const S = {
  me: null, // { id: bigint, name }
  token: null,
  conn: null,
  status: 'offline',
  synced: false,
  retry: 0,
  retryTimer: null,
  pingTimer: null,
  convs: new Map(), // convKey -> conversation meta
  friends: new Map(), // userKey -> { id, name, online, state, note }
  groups: new Map(), // groupKey -> { id, name, role, conv }
  invites: new Map(), // groupKey -> { id, name }
  msgs: new Map(), // convKey -> Map(seqKey -> msg)
  outbox: [], // { cid, conv, toUser, group, body, failed }
  inbox: new Inbox(),
  typing: new Map(), // convKey -> Map(userKey -> { name, until })
  open: null, // convKey of the open chat
  members: new Map(), // groupKey -> [member]
  groupCursors: new Map(), // convKey -> Map(userKey -> seq)
  search: [],
  older: new Map(), // convKey -> true when History reached the start
};

// ------------------------------------------------------------------ persistence

const LS = window.localStorage;
const userKey = (suffix) => `ringchat:u${S.me.id}:${suffix}`;
const ser = (o) => JSON.stringify(o, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
const de = (s) => JSON.parse(s, (_, v) => (typeof v === 'string' && /^\d+n$/.test(v) ? BigInt(v.slice(0, -1)) : v));

function loadSession() {
  try { return de(LS.getItem('ringchat:session')); } catch (_) { return null; }
}

let saveTimer = null;
function save() {
  if (saveTimer) return;
  saveTimer = setTimeout(saveNow, 150);
}

/** Cursors and messages are written together, so a saved cursor never covers an unsaved message. */
function saveNow() {
  clearTimeout(saveTimer);
  saveTimer = null;
  if (!S.me) return;
  try {
    LS.setItem('ringchat:session', ser({ token: S.token, id: S.me.id, name: S.me.name }));
    const held = {};
    for (const [k, v] of S.inbox.cursors()) held[k] = v;
    const msgs = {};
    for (const [k, m] of S.msgs) msgs[k] = sortedMsgs(k).slice(-KEEP_PER_CONV);
    LS.setItem(userKey('state'), ser({ held, msgs, outbox: S.outbox }));
  } catch (e) {
    console.warn('could not save state', e);
  }
}

function loadUserState() {
  S.inbox.clear();
  S.msgs.clear();
  S.outbox = [];
  let st = null;
  try { st = de(LS.getItem(userKey('state'))); } catch (_) { st = null; }
  if (!st) return;
  for (const [k, list] of Object.entries(st.msgs || {})) {
    const m = new Map();
    for (const msg of list) m.set(String(msg.seq), msg);
    S.msgs.set(k, m);
  }
  for (const [k, v] of Object.entries(st.held || {})) S.inbox.seed(BigInt(k), v);
  S.outbox = (st.outbox || []).filter((o) => !o.failed);
}

function forgetUser() {
  if (S.me) LS.removeItem(userKey('state'));
  LS.removeItem('ringchat:session');
}

window.addEventListener('pagehide', saveNow);

// ------------------------------------------------------------------ connection

function setStatus(s, text) {
  S.status = s;
  const el = $('conn-status');
  el.className = `status ${s}`;
  el.textContent = text || s;
}

async function connect() {
  clearTimeout(S.retryTimer);
  if (S.conn) return;
  setStatus('connecting', 'connecting…');
  const conn = new Connection(WS_URL, { push: (f) => onPush(conn, f), closed: () => onClosed(conn) });
  S.conn = conn;
  S.synced = false;
  try {
    await conn.opened;
    const hello = await conn.request('Hello');
    const ping = Math.max(1000, Math.floor(hello.idleTimeoutMs / 3));
    S.pingTimer = setInterval(() => conn.request('Ping', { nonce: 1 }).catch(() => {}), ping);
    if (S.token) {
      const since = [...S.inbox.cursors()].map(([k, v]) => [BigInt(k), v]);
      const ok = await conn.request('Resume', { token: S.token, since });
      await loggedIn(conn, ok);
    } else {
      showLogin();
    }
  } catch (e) {
    if (e instanceof ServerError && (e.code === ErrorCode.BadToken || e.code === ErrorCode.AccountDisabled)) {
      forgetSession(`Session ended (${e.codeName}): log in again.`);
      return;
    }
    conn.close();
  }
}

function onClosed(conn) {
  if (S.conn !== conn) return;
  S.conn = null;
  S.synced = false;
  clearInterval(S.pingTimer);
  if (!S.token && !$('login').hidden) {
    // Not logged in: reconnect only to have a connection for the form.
  }
  const delay = BACKOFF_MS[Math.min(S.retry, BACKOFF_MS.length - 1)] * (1 + Math.random() * 0.3);
  S.retry++;
  setStatus('offline', `offline, retrying in ${Math.ceil(delay / 1000)} s`);
  $('login-status').textContent = 'Not connected to the server, retrying…';
  S.retryTimer = setTimeout(connect, delay);
  render();
}

window.addEventListener('online', () => { if (!S.conn) { S.retry = 0; connect(); } });

async function loggedIn(conn, ok) {
  const same = S.me && S.me.id === ok.user;
  S.me = { id: ok.user, name: ok.username };
  S.token = ok.token;
  if (!same) loadUserState();
  S.retry = 0;
  saveNow();
  setStatus('online', 'online');
  showApp();
  await Promise.all([refreshConversations(conn), refreshFriends(conn), refreshGroups(conn)]).catch(() => {});
  render();
}

function forgetSession(why) {
  forgetUser();
  S.me = null;
  S.token = null;
  S.convs.clear(); S.friends.clear(); S.groups.clear(); S.invites.clear(); S.msgs.clear();
  S.inbox.clear(); S.outbox = []; S.open = null; S.typing.clear();
  $('login-error').textContent = why || '';
  showLogin();
}

async function allPages(conn, kind, key, nextKey, fields = {}) {
  const out = [];
  let after = 0n;
  for (;;) {
    const r = await conn.request(kind, { ...fields, after });
    out.push(...r[key]);
    if (!r[nextKey]) return out;
    after = r[nextKey];
  }
}

async function refreshConversations(conn = S.conn) {
  if (!conn) return;
  const list = await allPages(conn, 'ListConversations', 'conversations', 'next');
  for (const c of list) {
    const k = String(c.conv);
    const old = S.convs.get(k) || {};
    S.convs.set(k, {
      conv: c.conv, group: c.group, peer: c.peer, name: c.name,
      lastSeq: max(old.lastSeq, c.lastSeq), readSeq: max(old.readSeq, c.readSeq),
      floor: c.lastSeq - c.unread, peerReadSeq: max(old.peerReadSeq, c.peerReadSeq),
      last: pickLast(old.last, c.last), online: c.online,
    });
  }
  render();
}

async function refreshFriends(conn = S.conn) {
  if (!conn) return;
  const list = await allPages(conn, 'ListFriends', 'friends', 'next');
  S.friends.clear();
  for (const f of list) S.friends.set(String(f.id), f);
  render();
}

async function refreshGroups(conn = S.conn) {
  if (!conn) return;
  const list = await allPages(conn, 'ListGroups', 'groups', 'next');
  S.groups.clear();
  for (const g of list) {
    S.groups.set(String(g.id), g);
    S.invites.delete(String(g.id));
  }
  render();
}

const debounced = new Map();
function later(name, fn, ms = 300) {
  if (debounced.has(name)) return;
  debounced.set(name, setTimeout(() => { debounced.delete(name); fn(); }, ms));
}

const max = (a, b) => { a = a ?? 0n; b = b ?? 0n; return a > b ? a : b; };
const pickLast = (a, b) => (!a ? b : !b ? a : (b.seq >= a.seq ? b : a));

// ------------------------------------------------------------------ messages

function sortedMsgs(k) {
  const m = S.msgs.get(k);
  if (!m) return [];
  return [...m.values()].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
}

/** Adds a message to the store and the cursor; true when it was new to the store. */
function take(m) {
  const k = String(m.conv);
  let store = S.msgs.get(k);
  if (!store) { store = new Map(); S.msgs.set(k, store); }
  const fresh = !store.has(String(m.seq));
  if (fresh) store.set(String(m.seq), m);
  const eff = S.inbox.arrive(m.conv, m.seq);
  if (eff.fill) fill(eff.fill);
  const c = convMeta(m);
  c.lastSeq = max(c.lastSeq, m.seq);
  c.last = pickLast(c.last, m);
  if (m.sender === S.me.id) {
    c.readSeq = max(c.readSeq, m.seq);
    const i = S.outbox.findIndex((o) => o.cid === m.clientMsgId && String(o.conv) === k);
    if (i >= 0) S.outbox.splice(i, 1);
  }
  if (fresh && m.sender !== S.me.id) stopShowingTyping(k, String(m.sender));
  return fresh || eff.isNew;
}

/** The conversation entry for a message, made up until ListConversations says better. */
function convMeta(m) {
  const k = String(m.conv);
  let c = S.convs.get(k);
  if (!c) {
    const direct = m.group === 0n;
    const peer = direct ? (m.sender === S.me.id ? 0n : m.sender) : 0n;
    c = {
      conv: m.conv, group: m.group, peer, name: direct ? m.senderName : (S.groups.get(String(m.group))?.name ?? `group ${m.group}`),
      lastSeq: 0n, readSeq: 0n, floor: m.seq - 1n, peerReadSeq: 0n, last: null, online: false,
    };
    S.convs.set(k, c);
    later('convs', () => refreshConversations().catch(() => {}));
  }
  return c;
}

function onMessages(list) {
  let any = false;
  for (const m of list) any = take(m) || any;
  if (any) {
    markRead();
    save();
    render();
    if (S.open && list.some((m) => String(m.conv) === S.open && m.group !== 0n)) later('cursors', () => loadGroupCursors(S.open), 800);
  }
  return any;
}

/** A gap in a conversation: ask for it with History. */
async function fill(f) {
  const conn = S.conn;
  if (!conn) { S.inbox.fillDone(f.conv, true); return; }
  let gotNew = false;
  try {
    const r = await conn.request('History', { conv: f.conv, before: f.before, limit: f.limit });
    for (const m of r.messages) gotNew = take(m) || gotNew;
  } catch (e) {
    if (e instanceof ClosedError) {
      // The resume asks for the gap again (the cursor stayed below it).
      S.inbox.fillDone(f.conv, true);
      return;
    }
  }
  const eff = S.inbox.fillDone(f.conv, gotNew);
  if (eff.fill) fill(eff.fill);
  markRead();
  save();
  render();
}

/** Scroll-back: the page of messages before the oldest one shown. */
async function loadOlder(k) {
  if (!S.conn || !S.synced && !S.conn) return;
  const shown = sortedMsgs(k);
  const before = shown.length ? shown[0].seq : 0n;
  if (before === 1n) { S.older.set(k, true); render(); return; }
  try {
    const r = await S.conn.request('History', { conv: BigInt(k), before, limit: PAGE });
    if (r.messages.length === 0) S.older.set(k, true);
    const box = $('messages');
    const fromBottom = box.scrollHeight - box.scrollTop;
    onMessages(r.messages);
    if (before !== 0n) box.scrollTop = box.scrollHeight - fromBottom;
  } catch (e) {
    showError('chat-error', e);
  }
  render();
}

/** Ack the open conversation's cursor when the user can see it: the read receipt. */
function markRead() {
  if (!S.open || !S.conn || document.visibilityState !== 'visible') return;
  const c = S.convs.get(S.open);
  const held = S.inbox.held(BigInt(S.open));
  if (!c || held === null || held <= (c.readSeq ?? 0n)) return;
  c.readSeq = held;
  S.conn.tell('Ack', { items: [[c.conv, held]] });
}
document.addEventListener('visibilitychange', () => { markRead(); render(); });
window.addEventListener('focus', () => { markRead(); render(); });

// ------------------------------------------------------------------ sending

let cidBase = null;
let cidNext = 0n;
function newCid() {
  if (cidBase === null) {
    const r = crypto.getRandomValues(new Uint32Array(2));
    cidBase = ((BigInt(r[0]) << 32n) | BigInt(r[1] & 0xfff00000)) || 1n;
  }
  cidNext += 1n;
  return cidBase + cidNext;
}

function sendText(k, body) {
  const c = S.convs.get(k) || openTargets.get(k);
  if (!c) return;
  S.outbox.push({ cid: newCid(), conv: c.conv, toUser: c.group === 0n ? c.peer : 0n, group: c.group, body, ts: Date.now() });
  save();
  render();
  flushOutbox();
}

let flushing = false;
/** Sends the outbox in order, one at a time; what gets no SendOk stays and is resent with the same id. */
async function flushOutbox() {
  if (flushing) return;
  flushing = true;
  try {
    while (S.conn && S.synced) {
      const o = S.outbox.find((x) => !x.failed);
      if (!o) break;
      const conn = S.conn;
      try {
        const ok = await conn.request('SendMessage', { toUser: o.toUser, group: o.group, clientMsgId: o.cid, body: o.body });
        take({ conv: ok.conv, seq: ok.seq, sender: S.me.id, group: o.group, ts: ok.ts, clientMsgId: o.cid, body: o.body, senderName: S.me.name });
        const i = S.outbox.indexOf(o);
        if (i >= 0) S.outbox.splice(i, 1);
      } catch (e) {
        if (e instanceof ServerError && e.code !== ErrorCode.Internal && e.code !== ErrorCode.RateLimited) {
          o.failed = e.message || e.codeName;
        } else if (e instanceof ServerError) {
          await new Promise((r) => setTimeout(r, 1000));
        } else {
          break; // closed: the next connection resends
        }
      }
      save();
      render();
    }
  } finally {
    flushing = false;
  }
}

// ------------------------------------------------------------------ typing

let typingConv = null;
let typingAt = 0;
let typingIdle = null;
function onComposerInput() {
  const text = $('composer-input').value;
  if (!S.open || !S.conn) return;
  if (!text) { stopTyping(); return; }
  const now = Date.now();
  if (typingConv !== S.open || now - typingAt > TYPING_RENEW_MS) {
    if (typingConv && typingConv !== S.open) stopTyping();
    typingConv = S.open;
    typingAt = now;
    S.conn.request('Typing', { conv: BigInt(S.open) }).catch(() => {});
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdle);
  if (typingConv && S.conn) S.conn.request('Typing', { conv: BigInt(typingConv), stopped: true }).catch(() => {});
  typingConv = null;
  typingAt = 0;
}

function stopShowingTyping(k, user) {
  S.typing.get(k)?.delete(user);
}

function typists(k) {
  const t = S.typing.get(k);
  if (!t) return [];
  const now = Date.now();
  for (const [u, v] of t) if (v.until < now) t.delete(u);
  return [...t.values()].map((v) => v.name);
}
setInterval(() => { if (S.typing.size) render(); }, 1000);

// ------------------------------------------------------------------ pushes

function onPush(conn, f) {
  if (S.conn !== conn) return;
  switch (f.type) {
    case 'Messages': onMessages(f.messages); break;
    case 'SyncDone':
      S.synced = true;
      flushOutbox();
      save();
      break;
    case 'Presence': {
      const fr = S.friends.get(String(f.user));
      if (fr) fr.online = f.online;
      for (const c of S.convs.values()) if (c.peer === f.user) c.online = f.online;
      if (!f.online) for (const t of S.typing.values()) t.delete(String(f.user));
      break;
    }
    case 'FriendEvent': {
      const k = String(f.user);
      if (f.kind === FriendEventKind.Requested) {
        S.friends.set(k, { id: f.user, name: f.username, online: false, state: FriendState.IncomingRequest, note: f.note });
      } else if (f.kind === FriendEventKind.Accepted) {
        const old = S.friends.get(k);
        S.friends.set(k, { id: f.user, name: f.username || old?.name || `user ${f.user}`, online: old?.online ?? false, state: FriendState.Friend, note: '' });
        later('friends', () => refreshFriends().catch(() => {}));
      } else {
        S.friends.delete(k);
      }
      break;
    }
    case 'GroupEvent': {
      const g = String(f.group);
      if (f.kind === GroupEventKind.Invited && f.user === S.me.id) S.invites.set(g, { id: f.group, name: f.name });
      const mine = f.user === S.me.id;
      if (f.kind === GroupEventKind.Dissolved || (mine && (f.kind === GroupEventKind.Left || f.kind === GroupEventKind.Removed))) {
        S.groups.delete(g);
        S.convs.delete(g);
        if (S.open === g) closeChat();
      }
      later('groups', () => { refreshGroups().catch(() => {}); refreshConversations().catch(() => {}); });
      if (S.members.has(g)) later(`members${g}`, () => loadMembers(g));
      break;
    }
    case 'ReadUpTo': {
      const c = S.convs.get(String(f.conv));
      if (!c) break;
      if (f.reader === S.me.id) c.readSeq = max(c.readSeq, f.seq);
      else c.peerReadSeq = max(c.peerReadSeq, f.seq);
      break;
    }
    case 'TypingEvent': {
      const k = String(f.conv);
      if (!S.typing.has(k)) S.typing.set(k, new Map());
      if (f.stopped) S.typing.get(k).delete(String(f.user));
      else S.typing.get(k).set(String(f.user), { name: f.username, until: Date.now() + TYPING_SHOW_MS });
      break;
    }
    case 'Goodbye':
      if (f.code === ErrorCode.BadToken) forgetSession('Logged out from elsewhere.');
      break;
    default:
      break;
  }
  render();
}

// ------------------------------------------------------------------ groups

async function loadMembers(g) {
  if (!S.conn) return;
  try {
    const list = await allPages(S.conn, 'GroupMembers', 'members', 'next', { group: BigInt(g) });
    S.members.set(g, list);
  } catch (e) {
    showError('chat-error', e);
  }
  render();
}

async function loadGroupCursors(k) {
  const c = S.convs.get(k);
  if (!S.conn || !c || c.group === 0n) return;
  try {
    const list = await allPages(S.conn, 'ReadCursors', 'cursors', 'next', { conv: c.conv });
    S.groupCursors.set(k, new Map(list.map((x) => [String(x.user), x.seq])));
    render();
  } catch (_) { /* not a member any more */ }
}

// ------------------------------------------------------------------ UI

/** Conversations that exist for the UI before they have a message: friends and groups. */
const openTargets = new Map();

function sidebarEntries() {
  openTargets.clear();
  const out = new Map();
  for (const g of S.groups.values()) {
    const k = String(g.conv);
    const c = S.convs.get(k) || { conv: g.conv, group: g.id, peer: 0n, name: g.name, lastSeq: 0n, readSeq: 0n, floor: 0n, peerReadSeq: 0n, last: null };
    c.name = g.name;
    out.set(k, c);
  }
  for (const f of S.friends.values()) {
    if (f.state !== FriendState.Friend) continue;
    const conv = directConv(S.me.id, f.id);
    const k = String(conv);
    const c = S.convs.get(k) || { conv, group: 0n, peer: f.id, name: f.name, lastSeq: 0n, readSeq: 0n, floor: 0n, peerReadSeq: 0n, last: null };
    c.online = f.online;
    c.peer = f.id;
    c.name = f.name;
    out.set(k, c);
  }
  for (const [k, c] of S.convs) if (!out.has(k) && c.group === 0n) out.set(k, c);
  for (const [k, c] of out) openTargets.set(k, c);
  return [...out.entries()].sort(([, a], [, b]) => {
    const ta = a.last?.ts ?? 0; const tb = b.last?.ts ?? 0;
    return tb - ta || a.name.localeCompare(b.name);
  });
}

function unread(c) {
  const base = max(c.readSeq, c.floor);
  return c.lastSeq > base ? Number(c.lastSeq - base) : 0;
}

function el(tag, props = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const kid of kids) if (kid) e.append(kid);
  return e;
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderNow(); });
}

function renderNow() {
  if (!S.me) return;
  $('me').textContent = S.me.name;
  renderSearch();
  renderRequests();
  renderConvList();
  renderChat();
}

function renderSearch() {
  const ul = $('search-results');
  ul.replaceChildren(...S.search.map((u) => {
    const f = S.friends.get(String(u.id));
    let action;
    if (u.id === S.me.id) action = el('span', { class: 'muted', text: 'you' });
    else if (f?.state === FriendState.Friend) action = el('span', { class: 'muted', text: 'friend' });
    else if (f?.state === FriendState.OutgoingRequest) action = el('span', { class: 'muted', text: 'requested' });
    else action = el('button', { class: 'small add-friend', text: 'Add', 'data-user': String(u.id), onclick: () => friendRequest(u) });
    return el('li', { class: 'req', 'data-user': String(u.id) }, el('span', { class: 'who', text: u.name }), action);
  }));
}

function renderRequests() {
  const box = $('requests');
  const items = [];
  for (const f of S.friends.values()) {
    if (f.state === FriendState.IncomingRequest) {
      items.push(el('li', { class: 'req incoming', 'data-user': String(f.id), 'data-name': f.name },
        el('span', { class: 'who', text: `${f.name} wants to be friends${f.note ? `: “${f.note}”` : ''}` }),
        el('button', { class: 'small accept', text: 'Accept', onclick: () => respond(f, true) }),
        el('button', { class: 'small secondary reject', text: 'Reject', onclick: () => respond(f, false) })));
    } else if (f.state === FriendState.OutgoingRequest) {
      items.push(el('li', { class: 'req outgoing', 'data-user': String(f.id) }, el('span', { class: 'who muted', text: `Request sent to ${f.name}` })));
    }
  }
  for (const g of S.invites.values()) {
    items.push(el('li', { class: 'req invite' }, el('span', { class: 'who', text: `Invited to ${g.name}` }),
      el('button', { class: 'small', text: 'Join', onclick: () => joinGroup(g.id) })));
  }
  box.replaceChildren(...(items.length ? [el('h2', { text: 'Requests' }), el('ul', { class: 'list' }, ...items)] : []));
}

function renderConvList() {
  const entries = sidebarEntries();
  $('conv-list').replaceChildren(...entries.map(([k, c]) => {
    const n = k === S.open && document.visibilityState === 'visible' ? 0 : unread(c);
    const typing = typists(k);
    const preview = typing.length ? `${typing.join(', ')} typing…` : c.last ? `${c.group !== 0n && c.last.sender !== 0n ? `${c.last.senderName}: ` : ''}${c.last.body}` : (c.group !== 0n ? `group #${c.group}` : '');
    const dot = c.group !== 0n ? el('span', { class: 'dot group', text: '👥' }) : el('span', { class: `dot${c.online ? ' online' : ''}`, title: c.online ? 'online' : 'offline' });
    return el('li', { class: `conv${k === S.open ? ' active' : ''}${c.online ? ' online' : ''}`, 'data-conv': k, 'data-name': c.name, onclick: () => openChat(k) },
      dot,
      el('div', { class: 'who' }, el('div', { class: 'name', text: c.name }), el('div', { class: 'preview', text: preview })),
      n ? el('span', { class: 'badge', text: String(n) }) : null);
  }));
}

function renderChat() {
  const k = S.open;
  $('chat-empty').hidden = !!k;
  $('chat-view').hidden = !k;
  document.body.classList.toggle('chat-open', !!k);
  if (!k) return;
  const c = S.convs.get(k) || openTargets.get(k);
  if (!c) return;
  const isGroup = c.group !== 0n;
  $('chat-name').textContent = c.name;
  $('chat-view').dataset.conv = k;
  const pres = $('chat-presence');
  pres.textContent = isGroup ? `group #${c.group}` : c.online ? 'online' : 'offline';
  pres.className = `presence${!isGroup && c.online ? ' online' : ''}`;
  const t = typists(k);
  $('typing').textContent = t.length ? `${t.join(', ')} ${t.length > 1 ? 'are' : 'is'} typing…` : '';
  $('members-btn').hidden = !isGroup;
  $('leave-btn').hidden = !isGroup;
  const members = S.members.get(String(c.group));
  $('members').hidden = !isGroup || !members;
  if (isGroup && members) {
    $('members').replaceChildren(el('ul', { class: 'list' }, ...members.map((m) => el('li', { 'data-user': String(m.id) },
      el('span', { class: `dot${m.online ? ' online' : ''}` }), ` ${m.name}`,
      m.role !== Role.Member ? el('span', { class: 'muted', text: ` (${Role[m.role].toLowerCase()})` }) : null))));
  }
  $('older-btn').hidden = !!S.older.get(k);

  const box = $('messages');
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const readers = S.groupCursors.get(k);
  const items = sortedMsgs(k).map((m) => {
    const mine = m.sender === S.me.id;
    if (m.sender === 0n) return el('li', { class: 'msg system', 'data-seq': String(m.seq), text: m.body });
    let receipt = null;
    if (mine) {
      let read;
      if (isGroup) {
        let n = 0;
        if (readers) for (const [u, s] of readers) if (u !== String(S.me.id) && s >= m.seq) n++;
        read = n > 0 ? `✓✓ ${n}` : null;
      } else {
        read = m.seq <= c.peerReadSeq ? '✓✓' : null;
      }
      receipt = el('span', { class: `receipt${read ? ' read' : ''}`, text: read || '✓', title: read ? 'read' : 'delivered to the server' });
    }
    return el('li', { class: `msg${mine ? ' mine' : ''}`, 'data-seq': String(m.seq), 'data-sender': String(m.sender) },
      isGroup && !mine ? el('div', { class: 'from', text: m.senderName }) : null,
      el('div', { class: 'body', text: m.body }),
      el('div', { class: 'meta' }, fmtTime(m.ts), receipt));
  });
  for (const o of S.outbox) {
    if (String(o.conv) !== k) continue;
    items.push(el('li', { class: `msg mine pending${o.failed ? ' failed' : ''}`, 'data-cid': String(o.cid) },
      el('div', { class: 'body', text: o.body }),
      el('div', { class: 'meta', text: o.failed ? `not sent: ${o.failed}` : 'sending…' })));
  }
  $('msg-list').replaceChildren(...items);
  if (atBottom || renderChat.justOpened) box.scrollTop = box.scrollHeight;
  renderChat.justOpened = false;
}

function fmtTime(ts) {
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function openChat(k) {
  if (S.open !== k) stopTyping();
  S.open = k;
  renderChat.justOpened = true;
  $('chat-error').textContent = '';
  const c = S.convs.get(k) || openTargets.get(k);
  if (c && !S.convs.has(k)) S.convs.set(k, c);
  markRead();
  render();
  if (sortedMsgs(k).length < 20 && !S.older.get(k)) loadOlder(k);
  if (c && c.group !== 0n) loadGroupCursors(k);
  setTimeout(() => $('composer-input').focus(), 0);
}

function closeChat() {
  stopTyping();
  S.open = null;
  render();
}

function showError(id, e) {
  $(id).textContent = e instanceof ServerError ? e.message || e.codeName : e instanceof ClosedError ? 'Not connected; try again in a moment.' : String(e);
}

async function friendRequest(u) {
  try {
    await S.conn.request('FriendRequest', { user: u.id });
    const f = S.friends.get(String(u.id));
    if (!f || f.state !== FriendState.Friend) S.friends.set(String(u.id), { id: u.id, name: u.name, online: false, state: FriendState.OutgoingRequest, note: '' });
    render();
  } catch (e) { showError('side-error', e); }
}

async function respond(f, accept) {
  try {
    await S.conn.request('FriendRespond', { user: f.id, accept });
    if (accept) { f.state = FriendState.Friend; refreshFriends().catch(() => {}); } else S.friends.delete(String(f.id));
    render();
  } catch (e) { showError('side-error', e); }
}

async function joinGroup(id) {
  try {
    await S.conn.request('JoinGroup', { group: BigInt(id) });
    S.invites.delete(String(id));
    await refreshGroups();
    await refreshConversations();
    openChat(String(BigInt(id)));
  } catch (e) { showError('side-error', e); }
}

function showLogin() {
  $('app').hidden = true;
  $('login').hidden = false;
  $('login-status').textContent = S.conn && S.status !== 'offline' ? '' : 'Connecting…';
}

function showApp() {
  $('login').hidden = true;
  $('app').hidden = false;
}

// ------------------------------------------------------------------ wiring

async function loginWith(register) {
  const username = $('login-user').value.trim();
  const password = $('login-pass').value;
  $('login-error').textContent = '';
  if (!S.conn) { $('login-error').textContent = 'Not connected to the server yet.'; return; }
  try {
    if (register) await S.conn.request('Register', { username, password });
    const ok = await S.conn.request('Login', { username, password });
    await loggedIn(S.conn, ok);
  } catch (e) {
    showError('login-error', e);
  }
}

$('login-form').addEventListener('submit', (ev) => { ev.preventDefault(); loginWith(false); });
$('register-btn').addEventListener('click', () => { if ($('login-form').reportValidity()) loginWith(true); });
$('logout-btn').addEventListener('click', async () => {
  const conn = S.conn;
  forgetSession('');
  if (conn) await conn.request('Logout').catch(() => {});
});
$('search-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const prefix = $('search-input').value.trim();
  if (!prefix || !S.conn) return;
  try {
    S.search = (await S.conn.request('SearchUsers', { prefix })).users;
    $('side-error').textContent = S.search.length ? '' : 'Nobody by that name.';
  } catch (e) { showError('side-error', e); }
  render();
});
$('create-group-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const name = $('create-group-name').value.trim();
  if (!name || !S.conn) return;
  try {
    const r = await S.conn.request('CreateGroup', { name });
    $('create-group-name').value = '';
    await refreshGroups();
    openChat(String(r.conv));
  } catch (e) { showError('side-error', e); }
});
$('join-group-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const id = $('join-group-id').value.trim();
  if (!/^\d+$/.test(id)) { $('side-error').textContent = 'A group id is a number.'; return; }
  $('join-group-id').value = '';
  joinGroup(id);
});
$('composer').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $('composer-input');
  const body = input.value;
  if (!body.trim() || !S.open) return;
  input.value = '';
  stopTyping();
  sendText(S.open, body);
});
$('composer-input').addEventListener('input', onComposerInput);
$('older-btn').addEventListener('click', () => S.open && loadOlder(S.open));
$('back-btn').addEventListener('click', closeChat);
$('members-btn').addEventListener('click', () => {
  const c = S.convs.get(S.open) || openTargets.get(S.open);
  const g = String(c.group);
  if (S.members.has(g)) { S.members.delete(g); render(); } else loadMembers(g);
});
$('leave-btn').addEventListener('click', async () => {
  const c = S.convs.get(S.open) || openTargets.get(S.open);
  try {
    await S.conn.request('LeaveGroup', { group: c.group });
    S.groups.delete(String(c.group));
    S.convs.delete(String(c.conv));
    closeChat();
  } catch (e) { showError('chat-error', e); }
});

// Start: a remembered session resumes at once; otherwise the login form.
const saved = loadSession();
if (saved && saved.token) {
  S.me = { id: saved.id, name: saved.name };
  S.token = saved.token;
  loadUserState();
  showApp();
  render();
} else {
  showLogin();
}
connect();
