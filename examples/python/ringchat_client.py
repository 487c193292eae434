#!/usr/bin/env python3
"""A ringchat client written from docs/PROTOCOL.md and schema/ringchat.fbs alone.

It exists to prove that the protocol as written is the protocol as served:
everything here follows the document, nothing is copied from the Rust code.
`ringchat_generated.py` next to it is `flatc --python --gen-onefile` output
for schema/ringchat.fbs (scripts/gen-flatbuffers.sh regenerates it); the
only other dependency is the `flatbuffers` runtime from PyPI.

Usage: ringchat_client.py HOST:PORT

Walks through a whole session against a running server and exits non-zero
(with a message on stderr) at the first thing that does not match the
document:

  Hello -> HelloOk; Ping (nonce 2^64-1) -> Pong; Register two users;
  Login both (catch-up, then SyncDone); SearchUsers; FriendRequest /
  FriendRespond with the FriendEvent pushes; SendMessage -> SendOk and the
  Messages push to the friend; a resend (same client_msg_id) ->
  duplicate; an empty body -> BadRequest; Ack; the friend disconnects,
  more messages are sent, and the friend comes back with Resume + since
  and gets exactly what it missed; History (before_seq 0, 2, 2^63, 2^64-1);
  Logout -> OkReply and the close.

Request ids start above 2^63 on purpose: every u64 field uses its full range.
"""

import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flatbuffers  # noqa: E402  (pip install flatbuffers)
import ringchat_generated as w  # noqa: E402

U64_MAX = (1 << 64) - 1
TIMEOUT_S = 10.0

ERROR_NAMES = {v: k for k, v in vars(w.ErrorCode).items() if not k.startswith("_")}
BODY_NAMES = {v: k for k, v in vars(w.Body).items() if not k.startswith("_")}


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class ServerError(Failure):
    def __init__(self, code, message):
        super().__init__(f"server error {ERROR_NAMES.get(code, code)}: {message}")
        self.code = code


def as_table(env, cls):
    """The envelope's union body viewed as `cls` (a generated table class)."""
    tab = env.Body()
    obj = cls()
    obj.Init(tab.Bytes, tab.Pos)
    return obj


def text(b):
    return b.decode("utf-8") if b is not None else ""


def direct_conv(a, b):
    """PROTOCOL.md, "Conversation ids"."""
    lo, hi = min(a, b), max(a, b)
    return (1 << 63) | (lo << 31) | hi


class Conn:
    """One TCP connection. Frames are FlatBuffers *size-prefixed* buffers:
    the u32 length prefix is part of the buffer, and alignment counts from
    its first byte (PROTOCOL.md, "Framing")."""

    def __init__(self, addr, name):
        host, port = addr.rsplit(":", 1)
        self.name = name
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_req = (1 << 63) + 1
        self.pushes = []  # frames with req_id 0, in arrival order
        self.max_frame = 65536

    # ---------------------------------------------------------------- frames

    def send_frame(self, req_id, body_type, build_body):
        """Builds an Envelope around the body `build_body(builder)` returns
        and writes it. `FinishSizePrefixed` writes the u32 length itself and
        aligns the buffer so that offsets count from that prefix: the output
        is the frame, byte for byte."""
        b = flatbuffers.Builder(256)
        body = build_body(b)
        w.EnvelopeStart(b)
        w.EnvelopeAddReqId(b, req_id)
        w.EnvelopeAddBodyType(b, body_type)
        w.EnvelopeAddBody(b, body)
        b.FinishSizePrefixed(w.EnvelopeEnd(b))
        frame = bytes(b.Output())
        (length,) = struct.unpack_from("<I", frame, 0)
        check(length == len(frame) - 4, "FinishSizePrefixed wrote the frame length")
        check(len(frame) - 4 <= self.max_frame, "frame within max_frame")
        self.sock.sendall(frame)

    def read_exact(self, n):
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                return None
            out += chunk
        return bytes(out)

    def read_frame(self):
        """The next Envelope, or None when the server closed the connection.
        The root offset sits right after the 4-byte prefix."""
        head = self.read_exact(4)
        if head is None:
            return None
        (length,) = struct.unpack("<I", head)
        check(0 < length <= 16 << 20, f"sane frame length {length}")
        payload = self.read_exact(length)
        check(payload is not None, "connection closed mid-frame")
        frame = bytearray(head + payload)
        buf, off = flatbuffers.util.RemoveSizePrefix(frame, 0)
        return w.Envelope.GetRootAs(buf, off)

    # ---------------------------------------------------------------- requests

    def request(self, body_type, build_body, want):
        """Sends a request and waits for its one reply (pushes that arrive
        meanwhile are queued). Returns the reply envelope if its body is
        `want`; raises ServerError for an ErrorReply."""
        req_id = self.next_req
        self.next_req += 1
        self.send_frame(req_id, body_type, build_body)
        while True:
            env = self.read_frame()
            check(env is not None, f"{self.name}: closed while waiting for reply {req_id}")
            if env.ReqId() == 0:
                self.pushes.append(env)
                continue
            check(env.ReqId() == req_id, f"reply for unknown req_id {env.ReqId()}")
            if env.BodyType() == w.Body.ErrorReply:
                e = as_table(env, w.ErrorReply)
                raise ServerError(e.Code(), text(e.Message()))
            check(
                env.BodyType() == want,
                f"{self.name}: expected {BODY_NAMES[want]}, got {BODY_NAMES.get(env.BodyType())}",
            )
            return env

    def expect_error(self, code, body_type, build_body):
        try:
            self.request(body_type, build_body, w.Body.OkReply)
        except ServerError as e:
            check(e.code == code, f"expected {ERROR_NAMES[code]}, got {ERROR_NAMES.get(e.code)}")
            return
        raise Failure(f"expected {ERROR_NAMES[code]}, the request succeeded")

    def push(self, body_type):
        """The next push of `body_type` (earlier pushes of other types are
        skipped and dropped)."""
        while True:
            while self.pushes:
                env = self.pushes.pop(0)
                if env.BodyType() == body_type:
                    return env
            env = self.read_frame()
            check(env is not None, f"{self.name}: closed while waiting for {BODY_NAMES[body_type]}")
            check(env.ReqId() == 0, f"{self.name}: unexpected reply {env.ReqId()}")
            self.pushes.append(env)

    # ---------------------------------------------------------------- messages

    def hello(self):
        def body(b):
            name = b.CreateString("python-example")
            w.HelloStart(b)
            w.HelloAddProtocolVersion(b, 1)
            w.HelloAddClientName(b, name)
            return w.HelloEnd(b)

        env = self.request(w.Body.Hello, body, w.Body.HelloOk)
        ok = as_table(env, w.HelloOk)
        check(ok.ProtocolVersion() == 1, "HelloOk.protocol_version == 1")
        check(ok.MaxFrame() >= 1024, "HelloOk.max_frame")
        self.max_frame = ok.MaxFrame()
        return ok

    def ping(self, nonce):
        def body(b):
            w.PingStart(b)
            w.PingAddNonce(b, nonce)
            return w.PingEnd(b)

        env = self.request(w.Body.Ping, body, w.Body.Pong)
        return as_table(env, w.Pong).Nonce()

    def register(self, user, password):
        def body(b):
            u, p = b.CreateString(user), b.CreateString(password)
            w.RegisterStart(b)
            w.RegisterAddUsername(b, u)
            w.RegisterAddPassword(b, p)
            return w.RegisterEnd(b)

        env = self.request(w.Body.Register, body, w.Body.RegisterOk)
        return as_table(env, w.RegisterOk).UserId()

    def _until_sync_done(self):
        """Catch-up after LoginOk: Messages pushes, then SyncDone."""
        got = []
        while True:
            env = self.push_any((w.Body.Messages, w.Body.SyncDone))
            if env.BodyType() == w.Body.SyncDone:
                n = as_table(env, w.SyncDone).Messages()
                check(n == len(got), f"SyncDone.messages {n} == {len(got)} received")
                return got
            got.extend(messages_of(env))

    def push_any(self, types):
        while True:
            for i, env in enumerate(self.pushes):
                if env.BodyType() in types:
                    return self.pushes.pop(i)
            env = self.read_frame()
            check(env is not None, f"{self.name}: closed while waiting for a push")
            check(env.ReqId() == 0, f"{self.name}: unexpected reply {env.ReqId()}")
            self.pushes.append(env)

    def login(self, user, password):
        def body(b):
            u, p = b.CreateString(user), b.CreateString(password)
            w.LoginStart(b)
            w.LoginAddUsername(b, u)
            w.LoginAddPassword(b, p)
            return w.LoginEnd(b)

        env = self.request(w.Body.Login, body, w.Body.LoginOk)
        ok = as_table(env, w.LoginOk)
        check(text(ok.Username()) == user, "LoginOk.username")
        return ok.UserId(), text(ok.Token()), self._until_sync_done()

    def resume(self, token, since):
        def body(b):
            t = b.CreateString(token)
            w.ResumeStartSinceVector(b, len(since))
            for conv, seq in reversed(since):
                w.CreateConvSeq(b, conv, seq)
            v = b.EndVector()
            w.ResumeStart(b)
            w.ResumeAddToken(b, t)
            w.ResumeAddSince(b, v)
            return w.ResumeEnd(b)

        env = self.request(w.Body.Resume, body, w.Body.LoginOk)
        ok = as_table(env, w.LoginOk)
        return ok.UserId(), self._until_sync_done()

    def search_users(self, prefix, after_id=0, limit=0):
        def body(b):
            p = b.CreateString(prefix)
            w.SearchUsersStart(b)
            w.SearchUsersAddPrefix(b, p)
            w.SearchUsersAddAfterId(b, after_id)
            w.SearchUsersAddLimit(b, limit)
            return w.SearchUsersEnd(b)

        env = self.request(w.Body.SearchUsers, body, w.Body.UserList)
        ul = as_table(env, w.UserList)
        users = [(ul.Users(i).UserId(), text(ul.Users(i).Username())) for i in range(ul.UsersLength())]
        return users, ul.NextAfterId()

    def friend_request(self, user_id, note):
        def body(b):
            n = b.CreateString(note)
            w.FriendRequestStart(b)
            w.FriendRequestAddUserId(b, user_id)
            w.FriendRequestAddNote(b, n)
            return w.FriendRequestEnd(b)

        self.request(w.Body.FriendRequest, body, w.Body.OkReply)

    def friend_respond(self, user_id, accept):
        def body(b):
            w.FriendRespondStart(b)
            w.FriendRespondAddUserId(b, user_id)
            w.FriendRespondAddAccept(b, accept)
            return w.FriendRespondEnd(b)

        self.request(w.Body.FriendRespond, body, w.Body.OkReply)

    @staticmethod
    def _send_body(to_user, client_msg_id, text_):
        def body(b):
            t = b.CreateString(text_)
            w.SendMessageStart(b)
            w.SendMessageAddToUser(b, to_user)
            w.SendMessageAddClientMsgId(b, client_msg_id)
            w.SendMessageAddBody(b, t)
            return w.SendMessageEnd(b)

        return body

    def send(self, to_user, client_msg_id, text_):
        env = self.request(w.Body.SendMessage, self._send_body(to_user, client_msg_id, text_), w.Body.SendOk)
        ok = as_table(env, w.SendOk)
        return ok.Conversation(), ok.Seq(), ok.Duplicate()

    def ack(self, items):
        def body(b):
            w.AckStartItemsVector(b, len(items))
            for conv, seq in reversed(items):
                w.CreateConvSeq(b, conv, seq)
            v = b.EndVector()
            w.AckStart(b)
            w.AckAddItems(b, v)
            return w.AckEnd(b)

        self.send_frame(0, w.Body.Ack, body)  # req_id 0, no reply

    def history(self, conv, before_seq, limit=0):
        def body(b):
            w.HistoryStart(b)
            w.HistoryAddConversation(b, conv)
            w.HistoryAddBeforeSeq(b, before_seq)
            w.HistoryAddLimit(b, limit)
            return w.HistoryEnd(b)

        env = self.request(w.Body.History, body, w.Body.Messages)
        return messages_of(env)

    def logout(self):
        def body(b):
            w.LogoutStart(b)
            return w.LogoutEnd(b)

        self.request(w.Body.Logout, body, w.Body.OkReply)
        # The server closes after the reply (pushes such as Goodbye may come first).
        while True:
            env = self.read_frame()
            if env is None:
                return
            check(env.ReqId() == 0, "only pushes after the Logout reply")

    def close(self):
        self.sock.close()


def messages_of(env):
    m = as_table(env, w.Messages)
    out = []
    for i in range(m.MessagesLength()):
        c = m.Messages(i)
        out.append(
            {
                "conversation": c.Conversation(),
                "seq": c.Seq(),
                "sender": c.Sender(),
                "group_id": c.GroupId(),
                "client_msg_id": c.ClientMsgId(),
                "body": text(c.Body()),
                "sender_name": text(c.SenderName()),
            }
        )
    return out


def run(addr):
    tag = f"{os.getpid() % 100000}x{int.from_bytes(os.urandom(3), 'little')}"
    alice_name, bob_name = f"py_a{tag}", f"py_b{tag}"
    password = "python client pw"

    a = Conn(addr, "alice")
    a.hello()
    for nonce in (0, 1, (1 << 63) - 1, 1 << 63, U64_MAX):
        got = a.ping(nonce)
        check(got == nonce, f"Pong nonce {got} == {nonce}")

    alice = a.register(alice_name, password)
    bob = a.register(bob_name, password)
    check(alice != 0 and bob != 0 and alice != bob, "two user ids")
    try:
        a.register(alice_name, password)
        raise Failure("registering a taken name succeeded")
    except ServerError as e:
        check(e.code == w.ErrorCode.UsernameTaken, "UsernameTaken")

    me, _token_a, caught_up = a.login(alice_name, password)
    check(me == alice and caught_up == [], "alice logged in, nothing to catch up")

    b = Conn(addr, "bob")
    b.hello()
    me, token_b, _ = b.login(bob_name, password)
    check(me == bob, "bob logged in")

    users, next_after = a.search_users(bob_name.upper())
    check(users == [(bob, bob_name)] and next_after == 0, f"search finds bob: {users}")
    users, _ = a.search_users(bob_name, after_id=U64_MAX)
    check(users == [], "search after_id 2^64-1 finds nobody")

    # Friends: request, the push, accept, the push back.
    a.friend_request(bob, "hi from python")
    ev = as_table(b.push(w.Body.FriendEvent), w.FriendEvent)
    check(
        (ev.Kind(), ev.UserId(), text(ev.Note())) == (w.FriendEventKind.Requested, alice, "hi from python"),
        "bob got the friend request",
    )
    b.friend_respond(alice, True)
    ev = as_table(a.push(w.Body.FriendEvent), w.FriendEvent)
    check((ev.Kind(), ev.UserId()) == (w.FriendEventKind.Accepted, bob), "alice got Accepted")

    # A message, its delivery, and a resend.
    msg_id = (1 << 63) | int.from_bytes(os.urandom(7), "little")
    conv, seq, dup = a.send(bob, msg_id, "hello from python")
    check(conv == direct_conv(alice, bob), "conversation id is direct_conv(alice, bob)")
    check((seq, dup) == (1, False), f"first message has seq 1 ({seq}, {dup})")
    got = messages_of(b.push(w.Body.Messages))
    check(len(got) == 1, "one message pushed")
    m = got[0]
    check(
        (m["conversation"], m["seq"], m["sender"], m["group_id"], m["client_msg_id"], m["body"], m["sender_name"])
        == (conv, 1, alice, 0, msg_id, "hello from python", alice_name),
        f"bob received the message as sent: {m}",
    )
    b.ack([(conv, 1)])
    check(a.send(bob, msg_id, "hello from python") == (conv, 1, True), "resend is a duplicate")

    # An empty body is a bad request (a field missing), not "too large".
    a.expect_error(w.ErrorCode.BadRequest, w.Body.SendMessage, Conn._send_body(bob, msg_id + 1, ""))
    a.expect_error(w.ErrorCode.BadRequest, w.Body.SendMessage, Conn._send_body(bob, 0, "no id"))

    # Bob goes away; alice sends two more; bob resumes with `since`.
    b.close()
    check(a.send(bob, msg_id + 2, "second")[1] == 2, "seq 2")
    check(a.send(bob, msg_id + 3, "third")[1] == 3, "seq 3")
    b = Conn(addr, "bob again")
    b.hello()
    me, missed = b.resume(token_b, [(conv, 1)])
    check(me == bob, "resume is bob")
    check([(x["seq"], x["body"]) for x in missed] == [(2, "second"), (3, "third")], f"resume replays 2, 3: {missed}")
    b.close()
    # `since` beyond everything: nothing to replay.
    b = Conn(addr, "bob third")
    b.hello()
    _, missed = b.resume(token_b, [(conv, U64_MAX)])
    check(missed == [], f"since 2^64-1 replays nothing: {missed}")

    # History pages backwards from before_seq (0 = the latest).
    def hist(before, limit=0):
        return [x["seq"] for x in b.history(conv, before, limit)]

    check(hist(0) == [1, 2, 3], "history from the latest")
    check(hist(0, 2) == [2, 3], "history limit 2")
    check(hist(2) == [1], "history before seq 2")
    check(hist(1) == [], "history before seq 1")
    for before in (1 << 63, U64_MAX):
        check(hist(before) == [1, 2, 3], f"history before_seq {before}")

    b.logout()
    b = Conn(addr, "bob after logout")
    b.hello()
    try:
        b.resume(token_b, [])
        raise Failure("resume with a logged-out token succeeded")
    except ServerError as e:
        check(e.code == w.ErrorCode.BadToken, "BadToken after Logout")
    a.close()
    b.close()


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        run(sys.argv[1])
    except (Failure, OSError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print("python client: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
