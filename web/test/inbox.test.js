// node --test web/test : the pure cursor logic of the web client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Inbox } from '../dist/inbox.js';

test('in-order arrivals advance the contiguous cursor', () => {
  const ib = new Inbox();
  for (const s of [5n, 6n, 7n]) {
    const e = ib.arrive(9n, s);
    assert.ok(e.isNew && e.advanced && !e.fill);
  }
  assert.equal(ib.held(9n), 7n);
});

test('a duplicate is not new', () => {
  const ib = new Inbox();
  ib.seed(9n, 4n);
  assert.equal(ib.arrive(9n, 4n).isNew, false);
  assert.equal(ib.arrive(9n, 2n).isNew, false);
});

test('a gap holds the cursor and asks for the missing seqs', () => {
  const ib = new Inbox();
  ib.seed(9n, 3n);
  const e = ib.arrive(9n, 6n);
  assert.ok(e.isNew && !e.advanced);
  assert.deepEqual(e.fill, { conv: 9n, before: 6n, limit: 2 });
  assert.equal(ib.held(9n), 3n);
  assert.equal(ib.arrive(9n, 6n).isNew, false, 'held back counts as held');
  ib.arrive(9n, 4n);
  const e5 = ib.arrive(9n, 5n);
  assert.ok(e5.advanced);
  assert.equal(ib.held(9n), 6n, 'moves over what was held back');
  assert.deepEqual(ib.fillDone(9n, true), { advanced: false, fill: null });
});

test('an empty fill gives up on the gap', () => {
  const ib = new Inbox();
  ib.seed(9n, 3n);
  ib.arrive(9n, 6n);
  const e = ib.fillDone(9n, false);
  assert.ok(e.advanced);
  assert.equal(ib.held(9n), 6n);
});

test('a fill that brought part of the gap asks for the rest', () => {
  const ib = new Inbox();
  ib.seed(9n, 1n);
  ib.arrive(9n, 10n);
  ib.arrive(9n, 9n);
  const e = ib.fillDone(9n, true);
  assert.deepEqual(e.fill, { conv: 9n, before: 9n, limit: 7 });
});
