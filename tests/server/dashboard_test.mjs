// dashboard_test.mjs — the dashboard (GET /) end to end in headless Chromium.
//
//     node tests/server/dashboard_test.mjs TALLYD OUTDIR
//
// Starts tallyd on free ports of 127.0.0.1 (--port 0, --http-port 0, port
// files) with a token, in a temporary directory, and writes three days of
// generated camera events over HTTP, keeping a brute-force model of them.
// Then Debian's /usr/bin/chromium, driven by playwright-core (never a
// downloaded browser), loads the page and the test checks, each against
// both the JSON query API's answer and the model:
//   - the files' answers: content types, gzip, ETag and 304;
//   - the chart's plotted points (window.tallyDash.chart.data) for one key;
//   - picking another camera through the key search redraws with its data;
//   - the every-key table is sorted by average, then by key when asked;
//   - a wider range chooses 1h windows, a drag zooms in to 5m, a
//     double-click zooms back out;
//   - a late event written while auto-refresh is on appears in the chart
//     and the table without reloading the page;
//   - nothing is fetched from anywhere but tallyd, and the page logs no
//     error.
// Saves OUTDIR/dashboard.png (the chart with its hover box) and exits 0;
// 77 (skipped) only when node's playwright-core or /usr/bin/chromium is
// absent (tests/server/dashboard_test.sh checks node itself).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

const [TALLYD, OUTDIR] = process.argv.slice(2);
const CHROMIUM = '/usr/bin/chromium';
const TOKEN = 'dashboard-test-token-0123';
const DAY0 = Date.UTC(2023, 10, 12); // 2023-11-12T00:00:00Z, first of three days
const DAYS = 3;
const KEYS = Array.from({ length: 12 }, (_, i) => 'KV' + String(i + 1).padStart(4, '0'));
const START = Date.now();

function step(what) { console.log(`${((Date.now() - START) / 1000).toFixed(2).padStart(7)}s ${what}`); }
function fail(msg) { throw new Error(msg); }
function check(cond, msg) { if (!cond) fail(msg); }

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  console.log('skipped: playwright-core is not installed in tests/server/node_modules (run tools/setup)');
  process.exit(77);
}
if (!fs.existsSync(CHROMIUM)) {
  console.log(`skipped: ${CHROMIUM} is not installed (Debian package chromium; run tools/setup)`);
  process.exit(77);
}

/* ------------------------------------------------------------ tallyd */

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tally-dash-'));
let tallyd = null;

async function startTallyd() {
  const hpf = path.join(dir, 'http-port');
  const log = fs.openSync(path.join(dir, 'tallyd.log'), 'w');
  tallyd = spawn(TALLYD, ['--data', path.join(dir, 'data'), '--port', '0', '--port-file', path.join(dir, 'port'),
    '--http-port', '0', '--http-port-file', hpf, '--token', TOKEN, '--shards', '2', '--prefault', 'off',
    '--log-level', 'warn', '--sync-interval', '200ms'], { stdio: ['ignore', log, log] });
  let exited = null;
  tallyd.on('exit', (code, sig) => { exited = `exited with ${code ?? sig}`; });
  for (let i = 0; i < 600; i++) {
    if (exited) fail(`tallyd ${exited}: ${fs.readFileSync(path.join(dir, 'tallyd.log'), 'utf8')}`);
    if (fs.existsSync(hpf) && fs.readFileSync(hpf, 'utf8').trim()) return Number(fs.readFileSync(hpf, 'utf8'));
    await new Promise((r) => setTimeout(r, 100));
  }
  fail('tallyd did not write its HTTP port within 60 s');
}

function stopTallyd() {
  if (tallyd && tallyd.exitCode === null) tallyd.kill('SIGTERM');
}

// One raw request (node's fetch would undo gzip behind our back).
function request(port, method, target, headers = {}, body = null) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: target,
      headers: { Authorization: 'Token ' + TOKEN, ...headers } }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts) }));
    });
    req.setTimeout(60000, () => req.destroy(new Error(`${method} ${target}: no answer within 60 s`)));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

async function api(port, endpoint, params) {
  const r = await request(port, 'GET', `/api/v1/${endpoint}?` + new URLSearchParams(params));
  check(r.status === 200, `GET /api/v1/${endpoint}: ${r.status} ${r.body}`);
  return JSON.parse(r.body);
}

/* ------------------------------------------------------------ data and model */

// model[key] = [[ms, speed], ...]; each camera its own mean, so that the
// order by average is not the order of the keys.
const model = Object.fromEntries(KEYS.map((k) => [k, []]));
let seed = 12345;
const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };

function generate() {
  const lines = [];
  KEYS.forEach((k, c) => {
    const base = 50 + ((c * 7) % 12) * 5; // 50..105 km/h, a permutation of the cameras
    for (let t = DAY0; t < DAY0 + DAYS * 86400e3; t += 240e3 + Math.floor(rand() * 120e3)) {
      const v = Math.round((base + rand() * 30 - 15) * 10) / 10;
      model[k].push([t, v]);
      lines.push(`traffic,camera=${k},lane=${1 + (c % 3)} speed=${v} ${t}`);
    }
  });
  return lines;
}

async function write(port, lines) {
  for (let i = 0; i < lines.length; i += 5000) {
    const body = lines.slice(i, i + 5000).join('\n') + '\n';
    const r = await request(port, 'POST', '/write?precision=ms', { 'Content-Type': 'text/plain' }, body);
    check(r.status === 204, `POST /write: ${r.status} ${r.body}`);
  }
}

const STEP_MS = { '5m': 300e3, '1h': 3600e3, '1d': 86400e3 };

// The model's windows of key over [from, to): [[start, count, mean, min, max]].
function modelSeries(key, stepName, from, to) {
  const w = new Map();
  for (const [t, v] of model[key]) {
    if (t < from || t >= to) continue;
    const s = t - (t % STEP_MS[stepName]);
    const a = w.get(s) || { n: 0, sum: 0, min: Infinity, max: -Infinity };
    a.n++; a.sum += v; a.min = Math.min(a.min, v); a.max = Math.max(a.max, v);
    w.set(s, a);
  }
  return [...w.entries()].sort((a, b) => a[0] - b[0]).map(([s, a]) => [s, a.n, a.sum / a.n, a.min, a.max]);
}

function modelMean(key, from, to) {
  const vs = model[key].filter(([t]) => t >= from && t < to).map(([, v]) => v);
  return vs.reduce((a, b) => a + b, 0) / vs.length;
}

const close = (a, b) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));

/* ------------------------------------------------------------ the page */

const pageErrors = [];
const foreign = [];

async function plotted(page) {
  return page.evaluate(() => {
    const d = window.tallyDash;
    return { draws: d.draws, error: d.error, plotted: d.plotted, data: d.chart ? d.chart.data.map((c) => Array.from(c)) : null };
  });
}

// Waits for a draw after `after` draws whose keys, step or count in the
// window starting at `win` are as `want` says (bounded, no timing assert:
// a slow machine only waits longer). A function, not a string: the page's
// Content-Security-Policy forbids eval, and the test keeps it on.
async function waitDraw(page, after, what, want = {}) {
  try {
    await page.waitForFunction(({ after, want }) => {
      const d = window.tallyDash;
      if (!d || d.draws <= after) return false;
      if (want.keys !== undefined && d.plotted.keys.join() !== want.keys) return false;
      if (want.step !== undefined && d.plotted.step !== want.step) return false;
      if (want.win !== undefined) {
        const i = d.chart.data[0].indexOf(want.win);
        if (i < 0 || d.chart.data[4][i] !== want.count) return false;
      }
      return true;
    }, { after, want }, { timeout: 60000 });
  } catch (e) {
    const p = await plotted(page).catch(() => null);
    fail(`${what}: no such draw within 60 s (page error: ${p && p.error}; status: ${await page.textContent('#status').catch(() => '?')})`);
  }
  const p = await plotted(page);
  check(!p.error, `${what}: the page says ${p.error}`);
  return p;
}

// The chart shows exactly the API's series for each drawn key, and the
// API agrees with the model.
async function checkChart(port, p, what) {
  const { keys, step: stepName, from, to } = p.plotted;
  const fromMs = Number(BigInt(from) / 1000000n), toMs = Number(BigInt(to) / 1000000n);
  const answers = [];
  for (const key of keys) {
    const r = await api(port, 'series', { table: 'traffic', field: 'speed', key, step: stepName, from, to, epoch: 'ms' });
    check(r.step === stepName && r.key === key, `${what}: series answer for ${key}: ${JSON.stringify(r).slice(0, 200)}`);
    answers.push(r);
  }
  const times = [...new Set(answers.flatMap((a) => a.values.map((v) => v[0])))].sort((a, b) => a - b);
  check(JSON.stringify(p.data[0]) === JSON.stringify(times),
    `${what}: the chart's times differ from the API's (${p.data[0].length} plotted, ${times.length} answered)`);
  answers.forEach((a, j) => {
    const col = Object.fromEntries(a.columns.map((c, i) => [c, i]));
    const byTime = new Map(a.values.map((v) => [v[0], v]));
    const [mean, min, max, count] = p.data.slice(1 + 4 * j, 5 + 4 * j);
    times.forEach((t, i) => {
      const v = byTime.get(t);
      const want = v ? [v[col.mean], v[col.min], v[col.max], v[col.count]] : [null, null, null, null];
      const got = [mean[i], min[i], max[i], count[i]];
      check(JSON.stringify(got) === JSON.stringify(want),
        `${what}: ${keys[j]} at ${new Date(t).toISOString()}: plotted ${JSON.stringify(got)}, the API says ${JSON.stringify(want)}`);
    });
    // Against the model, the windows wholly inside the range (how a
    // window cut by a zoomed range's edge is counted is the API's to say).
    const inside = (s) => s >= fromMs && s + STEP_MS[stepName] <= toMs;
    const m = modelSeries(keys[j], stepName, fromMs, toMs).filter(([s]) => inside(s));
    const got = a.values.filter((v) => inside(v[col.time]));
    check(m.length === got.length, `${what}: ${keys[j]}: the API has ${got.length} windows, the model ${m.length}`);
    m.forEach(([s, n, avg, lo, hi], i) => {
      const v = got[i];
      check(v[col.time] === s && v[col.count] === n && close(v[col.mean], avg) && v[col.min] === lo && v[col.max] === hi,
        `${what}: ${keys[j]}: window ${i}: the API says ${JSON.stringify(v)}, the model ${JSON.stringify([s, n, avg, lo, hi])}`);
    });
  });
  return times.length;
}

// The every-key table: its rows in order, against the model sorted by cmp.
async function checkTable(page, p, what, cmp) {
  const rows = await page.$$eval('#aggs tbody tr', (trs) => trs.map((tr) => tr.dataset.key));
  const fromMs = Number(BigInt(p.plotted.from) / 1000000n), toMs = Number(BigInt(p.plotted.to) / 1000000n);
  const want = KEYS.map((k) => [k, modelMean(k, fromMs, toMs)]).sort(cmp).map(([k]) => k);
  check(JSON.stringify(rows) === JSON.stringify(want), `${what}: the table's rows are ${rows}, want ${want}`);
}

/* ------------------------------------------------------------ the test */

let browser = null;
let code = 0;
try {
  const port = await startTallyd();
  step(`tallyd on HTTP port ${port}`);
  const lines = generate();
  await write(port, lines);
  step(`wrote ${lines.length} events of ${KEYS.length} cameras`);

  // The files: content types, gzip, 304, nothing else found.
  const index = await request(port, 'GET', '/');
  check(index.status === 200 && /^text\/html/.test(index.headers['content-type']) && /uplot\.min\.js/.test(index.body),
    `GET /: ${index.status} ${index.headers['content-type']}`);
  const gz = await request(port, 'GET', '/ui/uplot.min.js', { 'Accept-Encoding': 'gzip, deflate' });
  check(gz.status === 200 && gz.headers['content-encoding'] === 'gzip' && /javascript/.test(gz.headers['content-type']),
    `GET /ui/uplot.min.js with gzip: ${gz.status} ${JSON.stringify(gz.headers)}`);
  const js = zlib.gunzipSync(gz.body).toString();
  check(js.startsWith('/*! https://github.com/leeoniya/uPlot (v1.6.32) */'), 'the gzip copy is not uPlot 1.6.32');
  const plain = await request(port, 'GET', '/ui/uplot.min.js', { 'Accept-Encoding': 'gzip;q=0' });
  check(plain.status === 200 && !plain.headers['content-encoding'] && plain.body.toString() === js,
    'gzip;q=0 still got gzip, or the plain copy differs');
  const again = await request(port, 'GET', '/ui/app.js', { 'If-None-Match': gz.headers.etag.replace(/"$/, '') });
  check(again.status === 200, 'a wrong ETag got 304');
  const etag = (await request(port, 'GET', '/ui/app.js')).headers.etag;
  const fresh = await request(port, 'GET', '/ui/app.js', { 'If-None-Match': etag });
  check(fresh.status === 304 && fresh.body.length === 0, `If-None-Match ${etag}: ${fresh.status}`);
  const noauth = await request(port, 'GET', '/', { Authorization: '' });
  check(noauth.status === 401 && /Basic/.test(noauth.headers['www-authenticate']), `GET / without the token: ${noauth.status}`);
  check((await request(port, 'GET', '/ui/nothing.js')).status === 404, '/ui/nothing.js was found');
  check((await request(port, 'POST', '/', {}, 'x')).status === 405, 'POST / was not refused');
  step('files: types, gzip, ETag, 304, 401, 404, 405');

  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox'] });
  // The token as a browser sends it once asked (Basic, any user name).
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 1000 }, httpCredentials: { username: 'dash', password: TOKEN } });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
  page.on('request', (r) => { if (!r.url().startsWith(`http://127.0.0.1:${port}/`) && !r.url().startsWith('data:')) foreign.push(r.url()); });

  const day = [DAY0 + 2 * 86400e3, DAY0 + 3 * 86400e3].map((t) => new Date(t).toISOString());
  await page.goto(`http://127.0.0.1:${port}/#table=traffic&field=speed&key=KV0001&from=${day[0]}&to=${day[1]}`);
  let p = await waitDraw(page, 0, 'first load');
  check(p.plotted.step === '5m' && JSON.stringify(p.plotted.keys) === '["KV0001"]', `first load: ${JSON.stringify(p.plotted)}`);
  const n1 = await checkChart(port, p, 'KV0001 over a day');
  check(n1 > 250, `KV0001 over a day: only ${n1} windows`);
  const byMean = (a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1);
  await checkTable(page, p, 'table by average', byMean);
  step(`chart of KV0001 (${n1} windows of 5m) equals the API's answer and the model; table sorted by average`);

  // Another camera, through the search box; then the first one removed.
  let draws = p.draws;
  await page.click('#key-search');
  await page.fill('#key-search', 'KV0007');
  await page.click('#key-results li[data-key="KV0007"]', { timeout: 60000 });
  p = await waitDraw(page, draws, 'KV0007 added', { keys: 'KV0001,KV0007' });
  draws = p.draws;
  await page.click('.chip[data-key="KV0001"] .remove');
  p = await waitDraw(page, draws, 'KV0001 removed', { keys: 'KV0007' });
  const n7 = await checkChart(port, p, 'KV0007 over a day');
  check(p.data.length === 5, `KV0007 alone: ${p.data.length} columns plotted`);
  step(`picked KV0007: the chart redrew with its ${n7} windows`);

  // Sorted by key when its header is clicked.
  draws = p.draws;
  await page.click('#aggs th[data-sort="key"]');
  p = await waitDraw(page, draws, 'sorted by key');
  await checkTable(page, p, 'table by key', (a, b) => (a[0] < b[0] ? -1 : 1));
  step('table sorted by key on request');

  // A week (the data's three days and four before): more than 1,500
  // windows of 5m, so 1h; a drag over a few hours: 5m; double-click: back.
  draws = p.draws;
  await page.fill('#from', new Date(DAY0 - 4 * 86400e3).toISOString());
  await page.locator('#from').dispatchEvent('change');
  p = await waitDraw(page, draws, 'a week', { step: '1h' });
  const nh = await checkChart(port, p, 'KV0007 over a week');
  const box = await page.locator('#chart .u-over').boundingBox();
  draws = p.draws;
  await page.mouse.move(box.x + box.width * 0.70, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.72, box.y + box.height / 2, { steps: 5 });
  await page.mouse.up();
  p = await waitDraw(page, draws, 'zoomed in', { step: '5m' });
  const nz = await checkChart(port, p, 'KV0007 zoomed in');
  draws = p.draws;
  await page.mouse.dblclick(box.x + box.width / 2, box.y + box.height / 2);
  p = await waitDraw(page, draws, 'zoomed out', { step: '1h' });
  step(`a week: ${nh} windows of 1h; zoomed in: ${nz} of 5m; zoomed out: 1h again`);

  // Back to the last day, sorted by average; auto-refresh on; a late
  // event for 03:02 that day arrives and fills in its window.
  draws = p.draws;
  await page.fill('#from', day[0]);
  await page.locator('#from').dispatchEvent('change');
  p = await waitDraw(page, draws, 'last day', { step: '5m' });
  draws = p.draws;
  await page.click('#aggs th[data-sort="mean"]');
  p = await waitDraw(page, draws, 'sorted by average');
  const late = DAY0 + 2 * 86400e3 + 3 * 3600e3 + 2 * 60e3;
  const win = late - (late % 300e3);
  const before = p.data[1][p.data[0].indexOf(win)];
  await page.selectOption('#every', '2');
  draws = p.draws;
  await page.check('#auto');
  // Switching it on loads at once; only the timer's loads come after this
  // one, so the late event can only be seen through them.
  p = await waitDraw(page, draws, 'auto-refresh switched on');
  model.KV0007.push([late, 299.5]);
  await write(port, [`traffic,camera=KV0007,lane=1 speed=299.5 ${late}`]);
  const want = modelSeries('KV0007', '5m', win, win + 300e3)[0];
  p = await waitDraw(page, p.draws, 'the late event', { win, count: want[1] });
  const after = p.data[1][p.data[0].indexOf(win)];
  check(close(after, want[2]) && p.data[3][p.data[0].indexOf(win)] === 299.5,
    `the late event: window ${new Date(win).toISOString()} plots mean ${after} max ${p.data[3][p.data[0].indexOf(win)]}, want ${want[2]} and 299.5`);
  await checkChart(port, p, 'after the late event');
  await checkTable(page, p, 'table after the late event', byMean);
  step(`auto-refresh: the late event moved ${new Date(win).toISOString()} from ${before} to ${after}`);

  // The picture, with the hover box over the late window.
  await page.uncheck('#auto');
  const xs = await page.evaluate((t) => window.tallyDash.chart.valToPos(t, 'x'), win);
  await page.mouse.move(box.x + xs, box.y + box.height / 3);
  await page.waitForSelector('#tip:not([hidden])', { timeout: 60000 });
  const tip = await page.textContent('#tip');
  check(/count\s*\d+/.test(tip) && tip.includes('KV0007'), `the hover box says: ${tip}`);
  fs.mkdirSync(OUTDIR, { recursive: true });
  // Not fullPage: that resizes the window, which redraws the chart
  // without its cursor.
  await page.screenshot({ path: path.join(OUTDIR, 'dashboard.png') });
  step(`hover box: ${tip.replace(/\s+/g, ' ')}; screenshot ${path.join(OUTDIR, 'dashboard.png')}`);

  check(foreign.length === 0, `the page fetched from elsewhere: ${foreign.join(', ')}`);
  check(pageErrors.length === 0, `the page logged errors: ${pageErrors.join(' | ')}`);
  console.log('dashboard: every check passed');
} catch (e) {
  console.log('FAIL: ' + e.message);
  if (pageErrors.length) console.log('page errors: ' + pageErrors.join(' | '));
  code = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
  stopTallyd();
  if (code === 0) fs.rmSync(dir, { recursive: true, force: true });
  else console.log(`tallyd's directory is kept: ${dir}`);
}
process.exit(code);
