// Browser test of tile-proxy's map page (`/`), run by scripts/check-browser.sh (which installs
// what it needs and builds the binaries). Plain node, no test framework; exit status 1 on failure.
//
// Starts target/debug/test-upstream --images and target/debug/tile-proxy on free loopback ports
// (a temp cache folder), then, in Debian's headless chromium driven by playwright-core:
//   1. a first visitor opens `/`: the raster tiles load, every tile answers 200 and is MISS the
//      first time, no tile fails, nothing on the console, no answer of 400 or more, no request
//      to any other host, the overlay counts what the responses said; the icon the page declares
//      and /favicon.ico load as images;
//   2. a second visitor (a new browser context: empty browser cache) sees every tile HIT, in the
//      response headers and in the overlay;
//   2b. with traffic on, the flow tiles load; then tile 2/2/1 is purged (POST /admin/purge) and
//      the cache toggle is turned on with the admin token typed in: the overlay draws a polygon
//      per tile of /admin/cache-map, cached ones and the purged one in the legend's colours, the
//      toggle is kept in the URL and the token is not;
//   3. it switches to the vector view: MapLibre GL loads the style and goes idle; when the test
//      upstream serves real MVT, the tiles decode (no MapLibre error) and `grid`/`label`
//      features are rendered. Without WebGL (SwiftShader missing) or without MVT, the test
//      prints a SKIP line saying why instead.
// Screenshots: target/browser/map-raster.png, map-traffic.png, map-cache.png, map-vector.png.
//
// Environment: BIN_DIR (default $CARGO_TARGET_DIR/debug, else target/debug), CHROMIUM (default
// /usr/bin/chromium), BROWSER_ARTIFACTS (default target/browser), KEEP_TMP=1 keeps the logs.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const binDir = process.env.BIN_DIR || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, 'target'), 'debug');
const outDir = process.env.BROWSER_ARTIFACTS || path.join(repo, 'target', 'browser');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const KEY = 'browser-test-key';
const ADMIN_TOKEN = 'browser-test-admin-token-0123456789';
const started = Date.now();

// As root Chromium needs --no-sandbox; the background-networking flags keep it from calling
// home (this machine's network is closed); the GL flags give WebGL through SwiftShader.
const CHROMIUM_ARGS = [
  '--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--disable-default-apps', '--disable-extensions',
  '--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist',
];

const failures = [];
function check(ok, what, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${!ok && detail !== undefined ? `: ${detail}` : ''}`);
  if (!ok) failures.push(what);
  return ok;
}
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;

// ---- the servers ----
const tmp = mkdtempSync(path.join(os.tmpdir(), 'check-browser-'));
const procs = [];

// Starts a program and resolves with the first match of `pattern` in its output.
function start(name, program, args, env, pattern) {
  return new Promise((resolve, reject) => {
    const proc = spawn(program, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push({ name, proc, output: () => out });
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 20 s:\n${out}`)), 20_000);
    const onData = (d) => {
      out += d;
      const m = out.match(pattern);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', onData);
    proc.on('error', (e) => reject(new Error(`${name}: ${e.message}`)));
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}) during startup:\n${out}`));
    });
  });
}

function stopAll() {
  for (const { proc } of procs) if (proc.exitCode === null) proc.kill('SIGTERM');
}

// SIGTERM to every server, then waits (10 s at most, then SIGKILL) until each has exited: a
// proxy still draining writes into its cache folder (the bill's last flush), which must not be
// removed under it.
async function stopAllAndWait() {
  const running = procs.map(({ proc }) => proc).filter((proc) => proc.exitCode === null && proc.signalCode === null);
  const exited = running.map((proc) => new Promise((resolve) => proc.once('exit', resolve)));
  stopAll();
  const timer = setTimeout(() => running.forEach((proc) => proc.kill('SIGKILL')), 10_000);
  await Promise.all(exited);
  clearTimeout(timer);
}

function dumpLogs() {
  for (const { name, output } of procs) {
    const lines = output().trim().split('\n').slice(-12).join('\n');
    console.log(`---- last lines of ${name} ----\n${lines}`);
  }
}

async function servers() {
  const base = { PATH: process.env.PATH || '/usr/bin:/bin' };
  const upstream = await start('test-upstream', path.join(binDir, 'test-upstream'),
    ['--listen', '127.0.0.1:0', '--key', KEY, '--images'], base, /listening on (http:\/\/127\.0\.0\.1:\d+)/);
  const addr = await start('tile-proxy', path.join(binDir, 'tile-proxy'), ['serve'], {
    ...base,
    HERE_API_KEY: KEY,
    TILE_PROXY_LISTEN: '127.0.0.1:0',
    TILE_PROXY_LOG_FORMAT: 'json',
    TILE_PROXY_RASTER_UPSTREAM: upstream,
    TILE_PROXY_VECTOR_UPSTREAM: upstream,
    TILE_PROXY_TRAFFIC_RASTER_UPSTREAM: upstream,
    TILE_PROXY_TRAFFIC_VECTOR_UPSTREAM: upstream,
    TILE_PROXY_CACHE_DIR: path.join(tmp, 'cache'),
    TILE_PROXY_WORKERS: '2',
    TILE_PROXY_ADMIN_TOKEN: ADMIN_TOKEN,
  }, /"tile-proxy listening","addr":"(127\.0\.0\.1:\d+)"/);
  return { upstream, proxy: `http://${addr}` };
}

// True when the proxy's vector tiles are Mapbox Vector Tiles with the test upstream's layers
// (a layer message whose name field, tag 0x0a, is "grid"), not the test upstream's random bytes.
async function servesMvt(proxy) {
  const res = await fetch(`${proxy}/v2/vectortiles/base/mc/1/0/0/omv?indice=browser-test-probe`);
  const bytes = Buffer.from(await res.arrayBuffer());
  return res.ok && bytes.includes(Buffer.from([0x0a, 0x04, ...Buffer.from('grid')]));
}

// ---- one visitor: a new browser context (empty cache), the page, what it requested ----
async function visit(browser, proxy, name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const v = { context, page, consoleErrors: [], foreign: [], failed: [], aborted: 0, tiles: [], errorAnswers: [] };
  page.on('console', (m) => { if (m.type() === 'error') v.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => v.consoleErrors.push(`uncaught: ${e.message}`));
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol !== 'blob:' && u.protocol !== 'data:' && u.origin !== proxy) v.foreign.push(r.url());
  });
  page.on('requestfailed', (r) => {
    const why = r.failure() ? r.failure().errorText : '?';
    if (why === 'net::ERR_ABORTED') v.aborted += 1;
    else v.failed.push(`${r.url()}: ${why}`);
  });
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (r.status() >= 400) v.errorAnswers.push(`${u.pathname}: ${r.status()}`);
    if (u.pathname.includes('/mc/')) {
      const h = r.headers();
      v.tiles.push({ path: u.pathname + u.search, status: r.status(), xCache: h['x-cache'], tier: h['x-cache-tier'] });
    }
  });
  // Nothing may leave 127.0.0.1: other hosts are refused (and recorded above).
  await context.route((u) => u.origin !== proxy && u.protocol.startsWith('http'), (route) => route.abort());
  await page.goto(`${proxy}/`);
  await page.waitForFunction(() => document.body.dataset.rasterState === 'loaded', null, { timeout: 30_000 });
  // The overlay is redrawn on the next animation frame.
  await page.waitForFunction(() => {
    const s = window.tileProxyPage.stats.raster;
    return document.querySelector('[data-stat="raster.tiles"]')?.textContent === String(s.tiles);
  }, null, { timeout: 5_000 });
  v.stats = await page.evaluate(() => {
    const s = window.tileProxyPage.stats.raster;
    return { tiles: s.tiles, HIT: s.HIT, MISS: s.MISS, STALE: s.STALE, other: s.other, failed: s.failed, tiers: s.tiers };
  });
  v.overlay = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('[data-stat^="raster."]')]
    .map((td) => [td.dataset.stat.slice('raster.'.length), Number(td.textContent)])));
  console.log(`${name}: ${v.tiles.length} raster tile responses, overlay ${JSON.stringify(v.overlay)} (${elapsed()})`);
  return v;
}

function checkClean(v, name) {
  const raster = v.tiles.filter((t) => !t.path.startsWith('/v2/'));
  check(raster.length > 0, `${name}: raster tiles were requested`);
  check(raster.every((t) => t.status === 200), `${name}: every tile response is 200`,
    JSON.stringify(raster.filter((t) => t.status !== 200).slice(0, 5)));
  check(v.stats.failed === 0 && v.overlay.failed === 0, `${name}: no failed tile`, JSON.stringify(v.stats));
  check(v.failed.length === 0, `${name}: no failed request`, v.failed.slice(0, 5).join('; '));
  check(v.consoleErrors.length === 0, `${name}: no console error`, v.consoleErrors.slice(0, 5).join(' | '));
  check(v.errorAnswers.length === 0, `${name}: no answer of 400 or more`, v.errorAnswers.slice(0, 5).join('; '));
  check(v.foreign.length === 0, `${name}: no request to another host`, v.foreign.slice(0, 5).join(' '));
  check(v.overlay.tiles === raster.length && v.overlay.tiles > 0,
    `${name}: the overlay counts every tile (${v.overlay.tiles} of ${raster.length})`);
}

// Whether headless Chromium fetches a page's icon at all, and reports a 404 for it on the page's
// console, depends on its version and mode: the checks above cannot be relied on for it. So each
// icon the page declares (`<link rel="icon">`) is loaded by the page itself and must decode as an
// image; /favicon.ico (where browsers look without one) is asked for by the test, beside the page
// (this Chromium refuses a page's own fetch() of /favicon.ico before it reaches the network), and
// must answer 200 with the same PNG.
async function checkIcons(v, name) {
  const icons = await v.page.evaluate(async () => {
    const hrefs = [...document.querySelectorAll('link[rel~="icon"]')].map((l) => l.href);
    return Promise.all(hrefs.map(async (href) => {
      const r = await fetch(href, { cache: 'no-store' });
      const img = new Image();
      img.src = href;
      const decoded = await img.decode().then(() => `${img.naturalWidth}x${img.naturalHeight}`, (e) => `no: ${e.message}`);
      return { href, path: new URL(href).pathname, status: r.status, type: r.headers.get('content-type') || '', decoded };
    }));
  });
  check(icons.length > 0, `${name}: the page declares an icon`);
  check(icons.every((i) => i.status === 200 && i.type.startsWith('image/') && !i.decoded.startsWith('no')),
    `${name}: the declared icon loads as an image`, JSON.stringify(icons));
  const ico = await v.page.request.get(new URL('/favicon.ico', v.page.url()).href);
  const body = await ico.body();
  const declared = icons.length ? await (await v.page.request.get(icons[0].href)).body() : Buffer.alloc(0);
  check(ico.status() === 200 && (ico.headers()['content-type'] || '').startsWith('image/')
    && body.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) && body.equals(declared),
    `${name}: /favicon.ico answers 200 with the declared icon's PNG`, `${ico.status()} ${ico.headers()['content-type']}`);
}

// The traffic toggle: flow tiles over the raster map, each a transparent PNG from the proxy.
async function trafficOverlay(v, name) {
  const { page } = v;
  const before = v.tiles.length;
  await page.check('#traffic');
  await page.waitForFunction(() => document.body.dataset.trafficState === 'loaded', null, { timeout: 30_000 });
  const r = await page.evaluate(async () => {
    const p = window.tileProxyPage;
    const s = p.stats.traffic;
    const imgs = [...document.querySelectorAll('.leaflet-tile-pane img')];
    // The flow tiles sit above the base tiles (zIndex) and are RGBA PNGs: some pixels transparent.
    const flow = p.log.filter((e) => e.view === 'traffic' && !e.error);
    let transparent = null;
    if (flow.length) {
      const res = await fetch(flow[0].url, { cache: 'no-store' });
      const bmp = await createImageBitmap(await res.blob());
      const c = new OffscreenCanvas(bmp.width, bmp.height);
      const ctx = c.getContext('2d');
      ctx.drawImage(bmp, 0, 0);
      const px = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
      let clear = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i] === 0) clear += 1;
      transparent = clear / (px.length / 4);
    }
    return { tiles: s.tiles, failed: s.failed, imgs: imgs.length, hash: location.hash, transparent };
  });
  const flowAnswers = v.tiles.slice(before).filter((t) => t.path.startsWith('/v3/flow/'));
  console.log(`${name}: traffic overlay ${JSON.stringify(r)}, ${flowAnswers.length} flow responses (${elapsed()})`);
  check(r.tiles > 0 && r.failed === 0, `${name}: the traffic toggle loads flow tiles through the proxy`, JSON.stringify(r));
  check(flowAnswers.length > 0 && flowAnswers.every((t) => t.status === 200 && t.xCache),
    `${name}: every flow tile answered 200 with X-Cache`, JSON.stringify(flowAnswers.slice(0, 3)));
  check(r.transparent !== null && r.transparent > 0.5 && r.transparent < 1,
    `${name}: a flow tile is mostly transparent, with lines drawn`, String(r.transparent));
  check(r.hash.includes('traffic=1'), `${name}: the toggle is kept in the URL`, r.hash);
  check(v.consoleErrors.length === 0, `${name}: no console error with traffic on`, v.consoleErrors.slice(0, 5).join(' | '));
}

// The cache toggle: after a purge of one area, the overlay (GeoJSON from /admin/cache-map with
// the admin token typed into the page) draws the tiles this page loaded as cached and the purged
// one as purged, in the legend's colours; the toggle is kept in the URL, the token is not.
async function cacheOverlay(v, proxy, name) {
  const { page } = v;
  // Tile 2/2/1 (0..90 E, 0..66.5 N), loaded by both visitors at the page's first view (zoom 2).
  const purge = await fetch(`${proxy}/admin/purge`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ index: 'map-page', bbox: [10, 10, 80, 60], zoom: [2, 2] }),
  });
  check(purge.ok, `${name}: the purge of tile 2/2/1 was accepted`, String(purge.status));
  // The token field shows with the toggle on; until a token is typed the overlay asks for one.
  await page.check('#cache');
  await page.waitForFunction(() => document.body.dataset.cacheState === 'no-token', null, { timeout: 5_000 });
  await page.fill('#token', ADMIN_TOKEN);
  await page.dispatchEvent('#token', 'change');
  const state = await page.waitForFunction(() => {
    const s = document.body.dataset.cacheState || '';
    return (s === 'loaded' || s.startsWith('error')) && s;
  }, null, { timeout: 15_000 }).then((h) => h.jsonValue(), (e) => `timeout: ${e.message.split('\n')[0]}`);
  check(state === 'loaded', `${name}: the cache overlay loaded /admin/cache-map`, state);
  const r = await page.evaluate(() => {
    const p = window.tileProxyPage;
    const paths = [...document.querySelectorAll('.leaflet-overlay-pane path.cache-tile')];
    const fills = (cls) => [...new Set(paths.filter((e) => e.classList.contains(cls)).map((e) => e.getAttribute('fill')))];
    const purgedTile = p.cacheLayer.getLayers().find((l) => {
      const f = l.feature.properties;
      return f.z === 2 && f.x === 2 && f.y === 1;
    });
    return {
      cache: p.cache, paths: paths.length, hash: location.hash, legend: !document.getElementById('cache-legend').hidden,
      status: document.getElementById('cache-status').textContent,
      cachedFills: fills('cache-cached-hour'), purgedFills: fills('cache-purged'),
      purgedTile: purgedTile ? purgedTile.feature.properties.state : null,
      stored: sessionStorage.getItem('tileProxyAdminToken') !== null,
    };
  });
  console.log(`${name}: cache overlay ${JSON.stringify({ ...r, stored: undefined })} (${elapsed()})`);
  check(r.cache && r.cache.counts.cached > 0 && r.cache.counts.purged === 1,
    `${name}: the overlay counts cached tiles and the one purged`, JSON.stringify(r.cache));
  check(r.paths === r.cache.features && r.paths > 1, `${name}: a polygon per feature is drawn (${r.paths})`);
  check(r.purgedTile === 'purged', `${name}: tile 2/2/1 is drawn as purged`, String(r.purgedTile));
  check(JSON.stringify(r.cachedFills) === '["#1a9850"]' && JSON.stringify(r.purgedFills) === '["#d73027"]',
    `${name}: cached and purged tiles in the legend's colours`, JSON.stringify([r.cachedFills, r.purgedFills]));
  check(r.legend && r.status.includes('1 purged'), `${name}: the legend shows the counts`, r.status);
  check(r.hash.includes('cache=1') && !r.hash.includes(ADMIN_TOKEN), `${name}: the toggle is in the URL, the token is not`, r.hash);
  check(v.consoleErrors.length === 0, `${name}: no console error with the cache overlay`, v.consoleErrors.slice(0, 5).join(' | '));
}

async function vectorView(v, proxy, mvt) {
  const { page } = v;
  const webgl = await page.evaluate(() => {
    const c = document.createElement('canvas');
    const gl = c.getContext('webgl2') || c.getContext('webgl');
    if (!gl) return null;
    const info = gl.getExtension('WEBGL_debug_renderer_info');
    return info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
  });
  await page.click('#tab-vector');
  if (!webgl) {
    await page.waitForFunction(() => (document.body.dataset.vectorState || '').startsWith('no-webgl'), null, { timeout: 30_000 });
    console.log('SKIP vector view rendering: this Chromium gives no WebGL context even with '
      + '--use-gl=angle --use-angle=swiftshader --enable-unsafe-swiftshader (SwiftShader missing?); '
      + 'the page says so instead of a map (checked)');
    return;
  }
  console.log(`vector view: WebGL renderer ${webgl}`);
  const state = await page.waitForFunction(() => {
    const s = document.body.dataset.vectorState || '';
    return (s === 'idle' || s.startsWith('no-webgl') || s.startsWith('error')) && s;
  }, null, { timeout: 45_000 }).then((h) => h.jsonValue(), (e) => `timeout: ${e.message.split('\n')[0]}`);
  if (!check(state === 'idle', 'vector view: MapLibre GL loaded its style and went idle', state)) return;
  const r = await page.evaluate(() => {
    const p = window.tileProxyPage;
    const count = (layer) => p.vectorMap.queryRenderedFeatures({ layers: [layer] }).length;
    const s = p.stats.vector;
    return {
      tiles: s.tiles, failed: s.failed, errors: p.vectorErrors.slice(0, 3),
      label: count('label'), grid: count('grid') + count('grid-border'), water: count('water'),
      traffic: count('traffic-flow'), trafficTiles: p.stats.traffic.tiles,
    };
  });
  console.log(`vector view: ${JSON.stringify(r)} (${elapsed()})`);
  check(r.tiles > 0 && r.failed === 0, 'vector view: vector tiles fetched through the proxy, none failed', JSON.stringify(r));
  if (!mvt) {
    console.log('SKIP vector view rendering: the test upstream serves random bytes as vector tiles, not MVT '
      + '(no `grid` layer in /v2/vectortiles/base/mc/1/0/0/omv); MapLibre cannot decode them, so only '
      + 'the loading of the view and of its tiles is checked');
    return;
  }
  check(r.errors.length === 0, 'vector view: MapLibre decoded every tile (no error)', r.errors.join(' | '));
  check(r.label > 0 && r.grid > 0, 'vector view: `label` and `grid` features are rendered', JSON.stringify(r));
  check(r.traffic > 0, 'vector view: traffic flow lines (traffic vector tiles) are drawn over the map', JSON.stringify(r));
  check(v.consoleErrors.length === 0, 'vector view: no console error', v.consoleErrors.slice(0, 5).join(' | '));
}

async function main() {
  mkdirSync(outDir, { recursive: true });
  const { proxy } = await servers();
  console.log(`servers up: tile-proxy ${proxy} (${elapsed()})`);
  const browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS });
  try {
    // 1. The first visitor: a cold proxy cache.
    const first = await visit(browser, proxy, 'first visitor');
    checkClean(first, 'first visitor');
    await checkIcons(first, 'first visitor');
    const seen = new Set();
    const firstAnswers = first.tiles.filter((t) => !seen.has(t.path) && seen.add(t.path));
    check(firstAnswers.every((t) => t.xCache === 'MISS'), 'first visitor: each tile is a MISS the first time',
      JSON.stringify(firstAnswers.filter((t) => t.xCache !== 'MISS').slice(0, 5)));
    check(first.overlay.MISS > 0 && first.overlay.MISS === first.stats.MISS,
      `first visitor: the overlay shows the MISS count (${first.overlay.MISS})`);
    await first.context.close();

    // 2. A second visitor: every tile from the proxy's cache.
    const second = await visit(browser, proxy, 'second visitor');
    checkClean(second, 'second visitor');
    check(second.tiles.every((t) => t.xCache === 'HIT' && t.tier), 'second visitor: every tile response is HIT (with X-Cache-Tier)',
      JSON.stringify(second.tiles.filter((t) => t.xCache !== 'HIT').slice(0, 5)));
    check(second.overlay.HIT === second.overlay.tiles && second.overlay.MISS === 0,
      `second visitor: the overlay shows ${second.overlay.HIT} HIT of ${second.overlay.tiles}`);
    await second.page.screenshot({ path: path.join(outDir, 'map-raster.png') });
    await trafficOverlay(second, 'second visitor');
    await second.page.screenshot({ path: path.join(outDir, 'map-traffic.png') });
    await cacheOverlay(second, proxy, 'second visitor');
    await second.page.screenshot({ path: path.join(outDir, 'map-cache.png') });

    // 3. The vector view.
    const mvt = await servesMvt(proxy);
    await vectorView(second, proxy, mvt);
    check(second.foreign.length === 0, 'vector view: no request to another host', second.foreign.slice(0, 5).join(' '));
    await second.page.screenshot({ path: path.join(outDir, 'map-vector.png') });
    await second.context.close();
  } finally {
    await browser.close();
  }
}

const watchdog = setTimeout(() => {
  console.log('FAIL the browser test took more than 150 s');
  dumpLogs();
  stopAll();
  process.exit(1);
}, 150_000);

try {
  await main();
} catch (e) {
  check(false, 'the browser test ran to the end', e.stack || e.message);
}
clearTimeout(watchdog);
if (failures.length) dumpLogs();
await stopAllAndWait();
if (process.env.KEEP_TMP === '1') console.log(`temp folder kept: ${tmp}`);
else rmSync(tmp, { recursive: true, force: true });
console.log(`browser test: ${failures.length ? `${failures.length} check(s) FAILED` : 'all checks passed'} in ${elapsed()}; `
  + `screenshots in ${path.relative(process.cwd(), outDir) || outDir}`);
process.exit(failures.length ? 1 : 0);
