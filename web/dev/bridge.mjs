// Development aid, not used by the server or the tests: serves web/dist and
// bridges WebSocket /ws to a ringchat native TCP port, one binary message
// per frame. The server's own `--ws-listen` does this for real; the bridge
// lets the page be tried against any server build. Node stdlib only.
//   node web/dev/bridge.mjs 127.0.0.1:8080 127.0.0.1:7000
import http from 'node:http';
import net from 'node:net';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const [listen = '127.0.0.1:8080', target = '127.0.0.1:7000'] = process.argv.slice(2);
const dist = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'dist');
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.png': 'image/png' };

const server = http.createServer((req, res) => {
  const p = req.url.split('?')[0];
  const file = path.join(dist, p === '/' ? 'index.html' : path.normalize(p).replace(/^(\.\.[/\\])+/, ''));
  fs.readFile(file, (err, data) => {
    if (err) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
    res.end(data);
  });
});

server.on('upgrade', (req, sock) => {
  const key = req.headers['sec-websocket-key'];
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  const [h, port] = target.split(':');
  const tcp = net.connect(Number(port), h);
  let inbuf = Buffer.alloc(0); // from the browser
  let tbuf = Buffer.alloc(0); // from the server
  const close = () => { tcp.destroy(); sock.destroy(); };
  tcp.on('data', (d) => {
    tbuf = Buffer.concat([tbuf, d]);
    while (tbuf.length >= 4) {
      const n = tbuf.readUInt32LE(0) + 4;
      if (tbuf.length < n) break;
      const frame = tbuf.subarray(0, n);
      tbuf = tbuf.subarray(n);
      let head;
      if (n < 126) head = Buffer.from([0x82, n]);
      else if (n < 65536) { head = Buffer.alloc(4); head[0] = 0x82; head[1] = 126; head.writeUInt16BE(n, 2); }
      else { head = Buffer.alloc(10); head[0] = 0x82; head[1] = 127; head.writeBigUInt64BE(BigInt(n), 2); }
      sock.write(Buffer.concat([head, frame]));
    }
  });
  sock.on('data', (d) => {
    inbuf = Buffer.concat([inbuf, d]);
    for (;;) {
      if (inbuf.length < 2) return;
      const op = inbuf[0] & 0x0f;
      let len = inbuf[1] & 0x7f;
      let off = 2;
      if (len === 126) { if (inbuf.length < 4) return; len = inbuf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (inbuf.length < 10) return; len = Number(inbuf.readBigUInt64BE(2)); off = 10; }
      const mask = inbuf.subarray(off, off + 4);
      off += 4;
      if (inbuf.length < off + len) return;
      const payload = Buffer.from(inbuf.subarray(off, off + len));
      for (let i = 0; i < len; i++) payload[i] ^= mask[i % 4];
      inbuf = inbuf.subarray(off + len);
      if (op === 8) { close(); return; }
      if (op === 9) { sock.write(Buffer.concat([Buffer.from([0x8a, payload.length]), payload])); continue; }
      if (op === 2) tcp.write(payload);
    }
  });
  tcp.on('close', close);
  sock.on('close', close);
  tcp.on('error', close);
  sock.on('error', close);
});

const [lh, lp] = listen.split(':');
server.listen(Number(lp), lh, () => console.log(`bridge on http://${listen}/ -> ${target}`));
