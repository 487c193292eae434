// The gap-proof cursor of one device (the JS twin of src/client/inbox.rs;
// docs/PROTOCOL.md "Writing a client", 5). Pure: no DOM, no network, so
// web/test/inbox.test.js runs it under `node --test`.
//
// Per conversation the device keeps `held`, the highest *contiguous* seq it
// holds: every seq up to it is stored (shown, or its own sent message).
// That is what it acknowledges and what it resumes from. Seqs above a gap
// are remembered in `ahead` and the gap is asked for with History; when a
// fill brings nothing the device stops waiting and moves over the gap (a
// seq that was never stored must not block a conversation forever).
//
// Unlike the Rust inbox this one holds only seqs, not messages: the web
// client renders each conversation sorted by seq from its message store, so
// a message above a gap can be shown at once in its place and the gap's
// messages slot in below it when they come. The cursor rule is the same.

export const FILL_LIMIT = 200;

export class Inbox {
  constructor() {
    /** conv (string) -> { held: bigint, ahead: Set<bigint>, filling: bool } */
    this.convs = new Map();
  }

  /** conv (string) -> held (bigint), for Ack and Resume.since. */
  cursors() {
    const out = new Map();
    for (const [k, c] of this.convs) out.set(k, c.held);
    return out;
  }

  held(conv) {
    const c = this.convs.get(String(conv));
    return c ? c.held : null;
  }

  /** The device holds everything of `conv` up to `seq` (kept from an earlier page load). */
  seed(conv, seq) {
    if (seq === 0n) return;
    const k = String(conv);
    let c = this.convs.get(k);
    if (!c) {
      c = { held: seq, ahead: new Set(), filling: false };
      this.convs.set(k, c);
    }
    if (seq > c.held) {
      c.held = seq;
      for (const s of c.ahead) if (s <= seq) c.ahead.delete(s);
      this.release(c);
    }
  }

  clear() {
    this.convs.clear();
  }

  /**
   * Seq `seq` of `conv` arrived (a push, catch-up, a gap fill, or the
   * device's own SendOk). Returns { isNew, advanced, fill }: `isNew` false
   * for a duplicate, `advanced` when `held` moved (acknowledge it), `fill`
   * a History request { conv, before, limit } to make for a gap.
   */
  arrive(conv, seq) {
    const k = String(conv);
    let c = this.convs.get(k);
    if (!c) {
      c = { held: seq - 1n, ahead: new Set(), filling: false };
      this.convs.set(k, c);
    }
    const eff = { isNew: false, advanced: false, fill: null };
    if (seq <= c.held || c.ahead.has(seq)) return eff;
    eff.isNew = true;
    if (seq === c.held + 1n) {
      c.held = seq;
      this.release(c);
      eff.advanced = true;
      return eff;
    }
    c.ahead.add(seq);
    eff.fill = this.fill(k, c);
    return eff;
  }

  /** A fill for `conv` came back; `gotNew` says whether it brought any seq that was new. */
  fillDone(conv, gotNew) {
    const c = this.convs.get(String(conv));
    const eff = { advanced: false, fill: null };
    if (!c) return eff;
    c.filling = false;
    if (c.ahead.size === 0) return eff;
    if (gotNew) {
      eff.fill = this.fill(String(conv), c);
    } else {
      // Nothing came for the gap: stop waiting, hold everything above it.
      for (const s of c.ahead) if (s > c.held) c.held = s;
      c.ahead.clear();
      eff.advanced = true;
    }
    return eff;
  }

  lowest(c) {
    let lo = null;
    for (const s of c.ahead) if (lo === null || s < lo) lo = s;
    return lo;
  }

  release(c) {
    while (c.ahead.has(c.held + 1n)) {
      c.held += 1n;
      c.ahead.delete(c.held);
    }
  }

  fill(k, c) {
    if (c.filling || c.ahead.size === 0) return null;
    const lo = this.lowest(c);
    c.filling = true;
    let gap = lo - (c.held + 1n);
    if (gap < 1n) gap = 1n;
    if (gap > BigInt(FILL_LIMIT)) gap = BigInt(FILL_LIMIT);
    return { conv: BigInt(k), before: lo, limit: Number(gap) };
  }
}
