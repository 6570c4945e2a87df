/*
 * app.js — tally's dashboard: pick a table, field, keys and a time range;
 * see each key's average per window as a line with its min-max band,
 * counts on hover, and every key of the range in a table sorted by average.
 *
 * It reads only the JSON query API (/api/v1/tables, keys, series, aggs;
 * docs/http.md), as any client would. The one idea: the window (step) is
 * chosen from the span on screen, so zooming in asks the rollups for finer
 * windows (1d, then 1h, then 5m) and every drawn point is an exact rollup
 * of tally's, never resampled here. What is drawn is kept on
 * window.tallyDash for tests and the curious.
 */
'use strict';

const STEPS = [['5m', 300e3], ['1h', 3600e3], ['1d', 86400e3]];
const MAX_WINDOWS = 1500; // auto step: the finest giving at most this many
const MAX_KEYS = 8; // keys drawn at once
const AGG_ROWS = 1000; // rows of the every-key table
const UNIT_MS = { ms: 1, s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 604800e3 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

const $ = (id) => document.getElementById(id);

const S = {
  tables: [], table: '', field: '', keys: [],
  from: 'now-24h', to: 'now', step: 'auto',
  view: null, // [from, to] in ms while zoomed in
  auto: false, every: 5,
  sort: 'mean', order: 'desc',
};

// What the page shows, for tests: the chart (its .data is what is
// plotted), the request that filled it, and a count of draws.
const dash = window.tallyDash = { chart: null, plotted: null, aggs: null, draws: 0, error: null };

let generation = 0; // a load newer than the one that answers wins
let timer = null;

/* ------------------------------------------------------------ API */

async function api(path, params) {
  const q = new URLSearchParams(params);
  const r = await fetch('/api/v1/' + path + '?' + q, { headers: { Accept: 'application/json' }, cache: 'no-store' });
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON: said below */ }
  if (!r.ok) {
    const why = body && (body.error || body.message);
    throw new Error(`/api/v1/${path}: ${r.status} ${why || r.statusText}`);
  }
  if (body === null) throw new Error(`/api/v1/${path}: the answer is not JSON`);
  return body;
}

/* ------------------------------------------------------------ times */

// A time as the API takes it (RFC 3339, integer ns, now, now-6h) into ms.
function parseTime(s, now) {
  s = String(s).trim();
  if (s === 'now') return now;
  const m = /^now\s*-\s*(\d+)\s*(ms|s|m|h|d|w)$/.exec(s);
  if (m) return now - Number(m[1]) * UNIT_MS[m[2]];
  if (/^-?\d+$/.test(s)) return Number(BigInt(s) / 1000000n);
  const t = Date.parse(s);
  if (/^\d{4}-\d\d-\d\d/.test(s) && !Number.isNaN(t)) return t;
  throw new Error(`'${s}' is not a time: RFC 3339 (2025-06-02T00:00:00Z), integer nanoseconds, now or now-6h`);
}

const ns = (ms) => String(BigInt(Math.round(ms)) * 1000000n);
const iso = (ms) => new Date(ms).toISOString().replace('.000Z', 'Z');

// The range on screen, in ms.
function range() {
  if (S.view) return S.view;
  const now = Date.now();
  const f = parseTime(S.from, now), t = parseTime(S.to, now);
  if (!(f < t)) throw new Error(`the range is empty: from ${iso(f)} is not before to ${iso(t)}`);
  return [f, t];
}

function chooseStep(span) {
  if (S.step !== 'auto') return S.step;
  for (const [name, ms] of STEPS) if (span / ms <= MAX_WINDOWS) return name;
  return STEPS[STEPS.length - 1][0];
}

/* ------------------------------------------------------------ numbers */

// Two decimals for readings like speeds; four significant digits for the
// very large or very small. The table and hover box only: the chart's data
// are the API's numbers as they came.
function fmt(v) {
  if (v === null || v === undefined) return '–';
  const a = Math.abs(v);
  if (a >= 1e6 || (a !== 0 && a < 0.01)) return v.toPrecision(4);
  return String(Math.round(v * 100) / 100);
}
const fmtCount = (v) => (v === null || v === undefined ? '–' : v.toLocaleString('en-US'));

function status(msg, bad) {
  const el = $('status');
  el.textContent = msg;
  el.className = bad ? 'bad' : '';
}

/* ------------------------------------------------------------ the URL */

// The page's state lives in the URL's fragment, so a view can be linked.
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get('table')) S.table = h.get('table');
  if (h.get('field')) S.field = h.get('field');
  if (h.getAll('key').length) S.keys = h.getAll('key').slice(0, MAX_KEYS);
  if (h.get('from')) S.from = h.get('from');
  if (h.get('to')) S.to = h.get('to');
  if (h.get('step')) S.step = h.get('step');
  if (h.get('refresh')) { S.auto = true; S.every = Number(h.get('refresh')) || S.every; }
}

function writeHash() {
  const h = new URLSearchParams();
  h.set('table', S.table);
  h.set('field', S.field);
  for (const k of S.keys) h.append('key', k);
  h.set('from', S.view ? iso(S.view[0]) : S.from);
  h.set('to', S.view ? iso(S.view[1]) : S.to);
  if (S.step !== 'auto') h.set('step', S.step);
  if (S.auto) h.set('refresh', String(S.every));
  history.replaceState(null, '', '#' + h);
}

/* ------------------------------------------------------------ controls */

function option(sel, value, text) {
  const o = document.createElement('option');
  o.value = value;
  o.textContent = text;
  sel.append(o);
}

function fillTables() {
  const sel = $('table');
  sel.replaceChildren();
  for (const t of S.tables) option(sel, t.name, t.name);
  if (!S.tables.some((t) => t.name === S.table)) S.table = S.tables.length ? S.tables[0].name : '';
  sel.value = S.table;
  fillFields();
}

function fillFields() {
  const sel = $('field');
  sel.replaceChildren();
  const t = S.tables.find((x) => x.name === S.table);
  const fields = t ? t.fields : [];
  for (const f of fields) option(sel, f.name, `${f.name} (${f.type})`);
  if (!fields.some((f) => f.name === S.field)) {
    const num = fields.find((f) => /float|int|uint|double/.test(f.type));
    S.field = num ? num.name : fields.length ? fields[0].name : '';
  }
  sel.value = S.field;
  $('key-search').placeholder = t ? `search ${t.key}…` : 'search keys…';
}

function fillRange() {
  const preset = [...$('range').options].find((o) => o.value === S.from && S.to === 'now');
  $('range').value = preset && !S.view ? preset.value : 'custom';
  $('from').value = S.view ? iso(S.view[0]) : S.from;
  $('to').value = S.view ? iso(S.view[1]) : S.to;
  $('step').value = S.step;
  $('auto').checked = S.auto;
  $('every').value = String(S.every);
}

function renderChips() {
  const box = $('chips');
  box.replaceChildren();
  S.keys.forEach((k, i) => {
    const chip = document.createElement('span');
    chip.className = 'chip';
    chip.style.borderColor = COLORS[i % COLORS.length];
    chip.dataset.key = k;
    chip.textContent = k;
    const x = document.createElement('button');
    x.type = 'button';
    x.className = 'remove';
    x.title = `remove ${k}`;
    x.textContent = '×';
    x.addEventListener('click', () => { S.keys = S.keys.filter((y) => y !== k); changed(); });
    chip.append(x);
    box.append(chip);
  });
}

function addKey(k) {
  if (!S.keys.includes(k)) {
    if (S.keys.length >= MAX_KEYS) S.keys.shift();
    S.keys.push(k);
  }
  $('key-search').value = '';
  $('key-results').hidden = true;
  changed();
}

let searchSeq = 0;
async function searchKeys() {
  const seq = ++searchSeq;
  const prefix = $('key-search').value.trim();
  const ul = $('key-results');
  try {
    const r = await api('keys', { table: S.table, prefix, limit: 20 });
    if (seq !== searchSeq) return;
    ul.replaceChildren();
    for (const k of r.keys) {
      const li = document.createElement('li');
      li.textContent = k;
      li.dataset.key = k;
      if (S.keys.includes(k)) li.className = 'on';
      li.addEventListener('mousedown', (e) => { e.preventDefault(); addKey(k); });
      ul.append(li);
    }
    if (r.truncated) {
      const li = document.createElement('li');
      li.className = 'more';
      li.textContent = 'more: type more of the key';
      ul.append(li);
    }
    if (!r.keys.length) {
      const li = document.createElement('li');
      li.className = 'more';
      li.textContent = `no key starts with '${prefix}'`;
      ul.append(li);
    }
    ul.hidden = false;
  } catch (e) {
    status(e.message, true);
  }
}

/* ------------------------------------------------------------ the chart */

// Aligns each key's windows on the union of their times (a window with no
// events is absent from the API's answer: a gap in the line).
function align(answers) {
  const times = [...new Set(answers.flatMap((a) => a.values.map((v) => v[0])))].sort((a, b) => a - b);
  const at = new Map(times.map((t, i) => [t, i]));
  const data = [times];
  for (const a of answers) {
    const col = (name) => a.columns.indexOf(name);
    const ci = { count: col('count'), mean: col('mean'), min: col('min'), max: col('max') };
    const mean = new Array(times.length).fill(null), min = mean.slice(), max = mean.slice(), count = mean.slice();
    for (const v of a.values) {
      const i = at.get(v[0]);
      mean[i] = v[ci.mean]; min[i] = v[ci.min]; max[i] = v[ci.max]; count[i] = v[ci.count];
    }
    data.push(mean, min, max, count);
  }
  return data;
}

// An x-axis label, UTC: the date at midnight, else the time of day.
function tick(ms) {
  const s = iso(ms);
  return s.endsWith('T00:00:00Z') ? s.slice(0, 10) : s.slice(11, ms % 60e3 ? 19 : 16);
}

function tzUTC(ts) { return uPlot.tzDate(new Date(ts), 'Etc/UTC'); }

function makeChart(keys, data) {
  if (dash.chart) dash.chart.destroy();
  const series = [{ label: 'time' }];
  const bands = [];
  keys.forEach((k, i) => {
    const c = COLORS[i % COLORS.length];
    const base = 1 + 4 * i;
    series.push({ label: k, stroke: c, width: 2, points: { show: (u, si, a, b) => b - a < 80 } });
    series.push({ label: k + ' min', stroke: c + '55', width: 1, points: { show: false } });
    series.push({ label: k + ' max', stroke: c + '55', width: 1, points: { show: false } });
    series.push({ label: k + ' count', show: false, scale: 'count' });
    bands.push({ series: [base + 2, base + 1], fill: c + '33' });
  });
  const el = $('chart');
  const u = new uPlot({
    width: Math.max(320, el.clientWidth),
    height: 380,
    ms: 1,
    tzDate: tzUTC,
    legend: { show: false },
    padding: [12, 36, 0, 0], // room for the last time label
    cursor: { drag: { x: true, y: false, setScale: false } },
    scales: { x: { time: true, range: () => dash.plotted ? [dash.plotted.fromMs, dash.plotted.toMs] : [0, 1] } },
    axes: [{ values: (uu, splits) => splits.map(tick), space: 60 }, { label: S.field, size: 60 }],
    series,
    bands,
    hooks: {
      setSelect: [(uu) => {
        if (uu.select.width < 5) return;
        const f = uu.posToVal(uu.select.left, 'x'), t = uu.posToVal(uu.select.left + uu.select.width, 'x');
        uu.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
        S.view = [Math.round(f), Math.round(t)];
        changed();
      }],
      setCursor: [showTip],
    },
  }, data, el);
  u.over.addEventListener('dblclick', () => { if (S.view) { S.view = null; changed(); } });
  dash.chart = u;
}

function showTip(u) {
  const tip = $('tip');
  const i = u.cursor.idx;
  if (i === null || i === undefined || u.cursor.left < 0) { tip.hidden = true; return; }
  const p = dash.plotted;
  const rows = [`<b>${iso(u.data[0][i])}</b> <span class="dim">${p.step}</span>`];
  p.keys.forEach((k, j) => {
    const b = 1 + 4 * j;
    const mean = u.data[b][i];
    rows.push(`<span class="sw" style="background:${COLORS[j % COLORS.length]}"></span>${esc(k)}: ` +
      (mean === null ? '<span class="dim">no events</span>'
        : `avg <b>${fmt(mean)}</b> · min ${fmt(u.data[b + 1][i])} · max ${fmt(u.data[b + 2][i])} · count <b>${fmtCount(u.data[b + 3][i])}</b>`));
  });
  tip.innerHTML = rows.join('<br>');
  tip.hidden = false;
  const box = $('chart').getBoundingClientRect();
  const left = u.over.offsetLeft + u.cursor.left + 14;
  tip.style.left = Math.min(left, box.width - tip.offsetWidth - 4) + 'px';
  tip.style.top = (u.over.offsetTop + Math.max(0, u.cursor.top - tip.offsetHeight - 10)) + 'px';
}

const esc = (s) => String(s).replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);

/* ------------------------------------------------------------ the table */

function renderAggs(r) {
  const ci = Object.fromEntries(r.columns.map((c, i) => [c, i]));
  const tb = $('aggs').tBodies[0];
  tb.replaceChildren();
  for (const v of r.values.slice(0, AGG_ROWS)) {
    const tr = document.createElement('tr');
    const k = v[ci.key];
    tr.dataset.key = k;
    const drawn = S.keys.indexOf(k);
    if (drawn >= 0) { tr.className = 'on'; tr.style.setProperty('--c', COLORS[drawn % COLORS.length]); }
    for (const [name, f] of [['key', String], ['count', fmtCount], ['mean', fmt], ['min', fmt], ['max', fmt]]) {
      const td = document.createElement('td');
      td.textContent = f(v[ci[name]]);
      if (name !== 'key') td.className = 'num';
      tr.append(td);
    }
    tr.title = drawn >= 0 ? 'drawn above' : `click to draw ${k}`;
    tr.addEventListener('click', () => addKey(k));
    tb.append(tr);
  }
  for (const th of $('aggs').tHead.rows[0].cells) {
    th.classList.toggle('sorted', th.dataset.sort === S.sort);
    th.dataset.order = th.dataset.sort === S.sort ? S.order : '';
  }
  const more = $('aggs-more');
  more.hidden = r.values.length <= AGG_ROWS;
  more.textContent = `Only the first ${AGG_ROWS} keys in this order are shown.`;
}

/* ------------------------------------------------------------ loading */

async function load() {
  const gen = ++generation;
  let from, to;
  try {
    [from, to] = range();
  } catch (e) {
    status(e.message, true);
    return;
  }
  const step = chooseStep(to - from);
  const keys = S.keys.slice();
  const common = { table: S.table, field: S.field, from: ns(from), to: ns(to) };
  status('loading…');
  try {
    const [answers, aggs] = await Promise.all([
      Promise.all(keys.map((key) => api('series', { ...common, key, step, epoch: 'ms' }))),
      api('aggs', { ...common, sort: S.sort, order: S.order, limit: AGG_ROWS + 1 }),
    ]);
    if (gen !== generation) return; // a newer load is under way
    const data = align(answers);
    const same = dash.chart && dash.plotted && dash.plotted.keys.join('\n') === keys.join('\n') && dash.plotted.field === S.field;
    dash.plotted = { table: S.table, field: S.field, keys, step, from: ns(from), to: ns(to), fromMs: from, toMs: to };
    if (same) dash.chart.setData(data);
    else makeChart(keys, data);
    dash.aggs = aggs;
    renderAggs(aggs);
    dash.draws++;
    dash.error = null;
    const n = data[0].length;
    $('shown').textContent = `${S.table}.${S.field} · ${iso(from)} to ${iso(to)} · step ${step}${S.step === 'auto' ? ' (auto)' : ''} · ${n} windows`;
    $('aggs-range').textContent = `${iso(from)} to ${iso(to)}`;
    status('updated ' + new Date().toISOString().slice(11, 19) + ' UTC');
  } catch (e) {
    if (gen !== generation) return;
    dash.error = e.message;
    status(e.message, true);
  }
}

// Something the person chose changed: show it, link it, load it.
function changed() {
  renderChips();
  fillRange();
  writeHash();
  load();
}

function schedule() {
  clearInterval(timer);
  timer = S.auto ? setInterval(() => { if (!document.hidden) load(); }, S.every * 1000) : null;
}

async function init() {
  readHash();
  fillRange();
  try {
    const r = await api('tables', {});
    S.tables = r.tables;
  } catch (e) {
    status(e.message, true);
    return;
  }
  if (!S.tables.length) { status('no tables yet: write some data first'); return; }
  fillTables();
  await firstKey();
  changed();
  schedule();
}

// With no key chosen, the table's first, so that something is drawn.
async function firstKey() {
  if (S.keys.length) return;
  try {
    const r = await api('keys', { table: S.table, limit: 1 });
    S.keys = r.keys.slice(0, 1);
  } catch (e) { status(e.message, true); }
}

/* ------------------------------------------------------------ wiring */

$('table').addEventListener('change', async () => {
  S.table = $('table').value; S.keys = []; fillFields();
  await firstKey();
  changed();
});
$('field').addEventListener('change', () => { S.field = $('field').value; changed(); });
$('range').addEventListener('change', () => {
  if ($('range').value === 'custom') return;
  S.from = $('range').value; S.to = 'now'; S.view = null; changed();
});
for (const id of ['from', 'to']) {
  $(id).addEventListener('change', () => {
    try {
      parseTime($(id).value, Date.now());
    } catch (e) { status(e.message, true); return; }
    if (S.view) { S.from = iso(S.view[0]); S.to = iso(S.view[1]); S.view = null; }
    S[id] = $(id).value.trim();
    changed();
  });
}
$('step').addEventListener('change', () => { S.step = $('step').value; changed(); });
$('auto').addEventListener('change', () => { S.auto = $('auto').checked; writeHash(); schedule(); if (S.auto) load(); });
$('every').addEventListener('change', () => { S.every = Number($('every').value); writeHash(); schedule(); });
let searchTimer = null;
$('key-search').addEventListener('input', () => { clearTimeout(searchTimer); searchTimer = setTimeout(searchKeys, 120); });
$('key-search').addEventListener('focus', searchKeys);
$('key-search').addEventListener('blur', () => { $('key-results').hidden = true; });
$('key-search').addEventListener('keydown', (e) => {
  if (e.key === 'Enter') {
    e.preventDefault();
    const first = $('key-results').querySelector('li[data-key]');
    if (first) addKey(first.dataset.key);
  } else if (e.key === 'Escape') {
    $('key-results').hidden = true;
  }
});
$('controls').addEventListener('submit', (e) => e.preventDefault());
for (const th of $('aggs').tHead.rows[0].cells) {
  if (!th.dataset.sort) continue;
  th.addEventListener('click', () => {
    const s = th.dataset.sort;
    S.order = S.sort === s ? (S.order === 'desc' ? 'asc' : 'desc') : s === 'key' ? 'asc' : 'desc';
    S.sort = s;
    load();
  });
}
window.addEventListener('resize', () => {
  if (dash.chart) dash.chart.setSize({ width: Math.max(320, $('chart').clientWidth), height: 380 });
});
window.addEventListener('hashchange', () => { S.view = null; S.keys = []; readHash(); fillTables(); changed(); });

init();
