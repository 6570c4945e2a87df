// driver.js -- ClickHouse 26.7 in-process (chDB, npm package `chdb`) as a
// peer of bench/run. One process per variant, one session directory each.
//
//   node driver.js CONFIG.json      (written by bench/peers/chdb.py)
//
// Loading is ClickHouse's bulk path for a file: INSERT INTO raw SELECT ...
// FROM file(path, 'TabSeparated', ...), which parses in parallel. Schema as
// a ClickHouse 26 user would build this job:
//   raw  MergeTree PARTITION BY toDate(ts) ORDER BY (camera, ts),
//        camera LowCardinality(String), ts DateTime64(3, 'UTC'), speed Float64
//   r5m, r1h, r1d  AggregatingMergeTree with SimpleAggregateFunction
//        columns (sum of counts, sum, min, max), fed by materialized views
// Variants: plain (raw only), rollups (+ views; the one queried), best
// (rollups with codecs: DoubleDelta+ZSTD on times, Gorilla+ZSTD on speeds,
// ZSTD elsewhere).
'use strict';
const fs = require('fs');
const path = require('path');
const { Session } = require(path.join(__dirname, 'node_modules', 'chdb'));

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const best = cfg.variant === 'best';
const rollups = cfg.variant !== 'plain';
const LEVELS = [['r5m', '5 MINUTE'], ['r1h', '1 HOUR'], ['r1d', '1 DAY']];

function ioWriteBytes() {
  const m = /write_bytes:\s*(\d+)/.exec(fs.readFileSync('/proc/self/io', 'utf8'));
  return m ? Number(m[1]) : 0;
}
function now() { return Number(process.hrtime.bigint()) / 1e9; }
function sleep(ms) { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); }

const s = new Session(cfg.dir);
const q = (sql) => s.query(sql, 'TabSeparated');
const rows = (sql) => q(sql).split('\n').filter((l) => l.length).map((l) => l.split('\t'));

const version = q('SELECT version()').trim();
const c = (codec) => (best ? ' CODEC(' + codec + ')' : '');
q('CREATE TABLE raw (camera LowCardinality(String)' + c('ZSTD(3)') +
  ", ts DateTime64(3, 'UTC')" + c('DoubleDelta, ZSTD(3)') +
  ', speed Float64' + c('Gorilla, ZSTD(3)') +
  ') ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY (camera, ts)');
if (rollups) {
  for (const [t, w] of LEVELS) {
    q('CREATE TABLE ' + t + ' (camera LowCardinality(String)' + c('ZSTD(3)') +
      ", t DateTime('UTC')" + c('DoubleDelta, ZSTD(3)') +
      ', c SimpleAggregateFunction(sum, UInt64)' + c('ZSTD(3)') +
      ', s SimpleAggregateFunction(sum, Float64)' + c('ZSTD(3)') +
      ', mn SimpleAggregateFunction(min, Float64)' + c('ZSTD(3)') +
      ', mx SimpleAggregateFunction(max, Float64)' + c('ZSTD(3)') +
      ') ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(t) ORDER BY (camera, t)');
    q('CREATE MATERIALIZED VIEW ' + t + '_mv TO ' + t + ' AS SELECT camera, ' +
      "toStartOfInterval(ts, INTERVAL " + w + ", 'UTC') AS t, count() AS c, sum(speed) AS s, " +
      'min(speed) AS mn, max(speed) AS mx FROM raw GROUP BY camera, t');
  }
}
const insert = (file) => q("INSERT INTO raw SELECT camera, fromUnixTimestamp64Milli(ts, 'UTC'), speed " +
  "FROM file('" + file + "', 'TabSeparated', 'camera String, ts Int64, speed Float64')");
const count = () => Number(rows('SELECT count() FROM raw')[0][0]);

function waitMerges(maxS, minS = 0) {
  const t0 = now();
  let last = ioWriteBytes(), still = 0;
  while (now() - t0 < maxS) {
    const m = Number(rows('SELECT count() FROM system.merges')[0][0]);
    sleep(250);
    const w = ioWriteBytes();
    if (m === 0 && w === last) { still += 0.25; if (still >= 1.5 && now() - t0 >= minS) break; } else still = 0;
    last = w;
  }
  return now() - t0;
}

const out = { version, variant: cfg.variant, notes: [] };
let t0 = now();
insert(cfg.ontime_tsv);
const secs = now() - t0;
const n = count();
if (n !== cfg.ontime_events) throw new Error('raw holds ' + n + ' rows after loading ' + cfg.ontime_events);
out.ingest = { events: n, seconds: secs };
waitMerges(cfg.settle_s);

const ms = (x) => 'fromUnixTimestamp64Milli(toInt64(' + x + "), 'UTC')";
const sec = (x) => "toDateTime(" + Math.floor(x / 1000) + ", 'UTC')";
function sql(qq) {
  const k = qq.kind;
  if (k === 's5m' || k === 's1h' || k === 's1d') {
    const t = { s5m: 'r5m', s1h: 'r1h', s1d: 'r1d' }[k];
    return 'SELECT toUnixTimestamp(t) * 1000, sum(c), sum(s), min(mn), max(mx) FROM ' + t +
      " WHERE camera = '" + qq.camera + "' AND t >= " + sec(qq.from_ms) + ' AND t < ' + sec(qq.to_ms) +
      ' GROUP BY t ORDER BY t';
  }
  if (k === 'agg') {
    return "SELECT 'all', count(), sum(speed), min(speed), max(speed) FROM raw WHERE camera = '" +
      qq.camera + "' AND ts >= " + ms(qq.from_ms) + ' AND ts < ' + ms(qq.to_ms);
  }
  if (k === 'keys') {
    return 'SELECT camera, sum(c), sum(s), min(mn), max(mx) FROM r1h WHERE t >= ' + sec(qq.from_ms) +
      ' AND t < ' + sec(qq.to_ms) + ' GROUP BY camera ORDER BY camera';
  }
  if (k === 'v85') {
    // quantileExact over the raw rows, at the level that takes tally's rank (bench/peers/common.py)
    return "SELECT 'v85', n, v, v, v FROM (SELECT count() AS n, quantileExact(" + cfg.v85_level +
      ')(speed) AS v FROM raw WHERE camera = \'' + qq.camera + "' AND ts >= " + ms(qq.from_ms) +
      ' AND ts < ' + ms(qq.to_ms) + ')';
  }
  return 'SELECT toUnixTimestamp64Milli(ts), 1, speed, speed, speed FROM raw WHERE camera = \'' +
    qq.camera + "' AND ts >= " + ms(qq.from_ms) + ' AND ts < ' + ms(qq.to_ms) + ' ORDER BY ts';
}

if (cfg.variant === 'rollups') {
  const ck = cfg.check;
  const seen = () => Number(rows("SELECT sum(c) FROM r1h WHERE camera = '" + ck.camera + "' AND t >= " +
    sec(ck.from_ms) + ' AND t < ' + sec(ck.to_ms))[0][0]);
  const before = seen();
  const io0 = ioWriteBytes();
  t0 = now();
  insert(cfg.late_tsv);
  const lateS = now() - t0;
  let vis = null, polls = 0;
  const tv = now();
  for (;;) {
    polls++;
    if (seen() === ck.after) { vis = now() - tv; break; }
    if (now() - tv > cfg.visible_timeout_s) break;
    sleep(5);
  }
  const settleS = waitMerges(cfg.settle_s, cfg.settle_min_s);
  out.late = { events: cfg.late_events, seconds: lateS, visible_after_s: vis, polls, seen_before: before,
    io_write_bytes: ioWriteBytes() - io0, settle_s: settleS };

  const queries = fs.readFileSync(cfg.queries, 'utf8').split('\n').filter((l) => l && l[0] !== '#')
    .map((l) => { const f = l.split('\t'); return { qid: f[0], kind: f[1], camera: f[2], step_ms: +f[3], from_ms: +f[4], to_ms: +f[5] }; });
  const ans = [];
  for (const qq of queries) {
    for (const r of rows(sql(qq))) {
      if (Number(r[1]) === 0) continue;
      ans.push([qq.qid, r[0], r[1], r[2], r[3], r[4]].join('\t'));
    }
  }
  fs.writeFileSync(cfg.answers, ans.join('\n') + (ans.length ? '\n' : ''));
  const lat = {};
  for (const qq of queries) {
    const text = sql(qq);
    const a = process.hrtime.bigint();
    q(text);
    const d = Number(process.hrtime.bigint() - a) / 1e9;
    (lat[qq.kind] = lat[qq.kind] || []).push(d);
  }
  out.queries = {};
  for (const k of Object.keys(lat)) {
    const v = lat[k].sort((x, y) => x - y);
    const nn = v.length;
    out.queries[k] = { n: nn, p50_us: v[Math.floor((nn - 1) / 2)] * 1e6,
      p99_us: v[Math.max(0, Math.ceil(0.99 * nn) - 1)] * 1e6,
      mean_us: v.reduce((x, y) => x + y, 0) / nn * 1e6 };
  }
  out.answers = cfg.answers;
}

for (const t of ['raw'].concat(rollups ? LEVELS.map((l) => l[0]) : [])) q('OPTIMIZE TABLE ' + t + ' FINAL');
const parts = rows("SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active AND database = currentDatabase() GROUP BY table");
const by = {};
for (const [t, b] of parts) by[t] = Number(b);
out.disk = { bytes: Object.values(by).reduce((x, y) => x + y, 0), raw_bytes: by.raw || 0, events: count() };
out.status = 'ok';
fs.writeFileSync(cfg.out, JSON.stringify(out, null, 1));
if (typeof s.close === "function") s.close();
