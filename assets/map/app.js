// tile-proxy's map page: a Leaflet raster map and a MapLibre GL vector view of this proxy's own
// tiles, an overlay of what the proxy answered for each tile (X-Cache, X-Cache-Tier, Age,
// latency), and URL templates to copy. No build step; no request to any other host.
//
// Tiles are loaded with fetch() (an <img> cannot read response headers) with cache 'no-store',
// so every tile shown is a real answer of the proxy, not of the browser's cache. The browser
// test (tests/browser/map.test.mjs) reads window.tileProxyPage and body[data-*-state].
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  // Tiles are fetched from the folder this page was served from (works behind a path prefix).
  const root = new URL('./', location.href).href;
  // Snippets show the server's public_base_url when it has one, else the page's own address.
  const publicBase = (body.dataset.base || root).replace(/\/+$/, '');
  const RASTER_MAX_ZOOM = Number(body.dataset.rasterMaxZoom);
  const VECTOR_MAX_ZOOM = Number(body.dataset.vectorMaxZoom);

  // ---- the selection, kept in the URL's #fragment so that a view can be shared ----
  const DEFAULTS = {
    view: 'raster', resource: 'base', style: 'explore.day', size: '256', format: 'png', layer: 'base', indice: 'map-page',
    traffic: '0', cache: '0',
  };
  const INDICE = /^[A-Za-z0-9_.-]{1,64}$/;

  function readSelection() {
    const s = { ...DEFAULTS };
    const h = new URLSearchParams(location.hash.slice(1));
    for (const k of Object.keys(DEFAULTS)) {
      const v = h.get(k);
      if (v === null) continue;
      const el = $(k);
      const ok = k === 'view' ? v === 'raster' || v === 'vector'
        : k === 'indice' ? INDICE.test(v)
        : k === 'traffic' || k === 'cache' ? v === '0' || v === '1'
        : [...el.options].some((o) => o.value === v);
      if (ok) s[k] = v;
    }
    return s;
  }
  const sel = readSelection();

  function writeSelection() {
    const h = new URLSearchParams();
    for (const [k, v] of Object.entries(sel)) if (v !== DEFAULTS[k]) h.set(k, v);
    const hash = h.toString();
    history.replaceState(null, '', hash ? `#${hash}` : location.pathname + location.search);
  }

  // ---- URL templates (relative to the proxy's base URL) ----
  const query = (params) => Object.entries(params).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&');
  const rasterQuery = (s) => query({ style: s.style, size: s.size, indice: s.indice });
  const rasterPath = (s) => (s.resource === 'here-proxy'
    ? `here-proxy/mc/{z}/{x}/{y}/png?${rasterQuery(s)}`
    : `v3/${s.resource}/mc/{z}/{x}/{y}/${s.format}?${rasterQuery(s)}`);
  const rasterTileJson = (s) => `v3/${s.resource === 'here-proxy' ? 'base' : s.resource}/tilejson.json?${query({ style: s.style, indice: s.indice })}`;
  const vectorPath = (s) => `v2/vectortiles/${s.layer}/mc/{z}/{x}/{y}/omv?${query({ indice: s.indice })}`;
  const vectorTileJson = (s) => `v2/vectortiles/${s.layer}/tilejson.json?${query({ indice: s.indice })}`;
  // Traffic overlays: flow lines on transparent tiles of the base map's size (HERE's traffic
  // default is 512, so only 256 is named), and the flow layer of the traffic vector tiles.
  const trafficPath = (s) => `v3/flow/mc/{z}/{x}/{y}/png?${query(s.size === '256' ? { size: '256', indice: s.indice } : { indice: s.indice })}`;
  const trafficVectorPath = (s) => `v2/traffictiles/flow/mc/{z}/{x}/{y}/omv?${query({ indice: s.indice })}`;
  const trafficVectorTileJson = (s) => `v2/traffictiles/flow/tilejson.json?${query({ indice: s.indice })}`;
  const VIEWS = ['raster', 'vector', 'traffic'];

  // ---- what the proxy answered, per view ----
  const newStats = () => ({
    tiles: 0, HIT: 0, MISS: 0, STALE: 0, other: 0, failed: 0, cancelled: 0, hitMs: [], missMs: [], allMs: [], tiers: {},
  });
  const page = {
    stats: { raster: newStats(), vector: newStats(), traffic: newStats() },
    log: [], // the last 2000 tile answers: { view, url, status, xCache, tier, age, ms, error }
    vectorErrors: [],
    rasterLayer: null,
    trafficLayer: null,
    vectorMap: null,
    // The cache overlay: the last /admin/cache-map answer drawn ({ features, counts, truncated,
    // zoom }), or the error that stopped it.
    cache: null,
    cacheLayer: null,
  };
  window.tileProxyPage = page;

  function record(view, e) {
    const s = page.stats[view];
    s.tiles += 1;
    if (e.error) {
      s.failed += 1;
    } else {
      const c = ['HIT', 'MISS', 'STALE'].includes(e.xCache) ? e.xCache : 'other';
      s[c] += 1;
      if (c === 'HIT') s.hitMs.push(e.ms);
      if (c === 'MISS') s.missMs.push(e.ms);
      if (e.tier) s.tiers[e.tier] = (s.tiers[e.tier] || 0) + 1;
    }
    s.allMs.push(e.ms);
    page.log.push({ view, ...e });
    if (page.log.length > 2000) page.log.shift();
    scheduleRender();
  }

  // Fetches one tile, records the answer, returns its body (a Blob); throws on failure.
  async function fetchTile(view, url, signal) {
    const t0 = performance.now();
    const failed = (error, status) => {
      record(view, { url, status, error, ms: performance.now() - t0 });
      return new Error(`${error}: ${url}`);
    };
    let res;
    let blob;
    try {
      res = await fetch(url, { signal, cache: 'no-store' });
      blob = await res.blob();
    } catch (err) {
      if (signal && signal.aborted) {
        page.stats[view].cancelled += 1;
        throw err;
      }
      throw failed(res ? 'body failed' : 'network error', res && res.status);
    }
    if (!res.ok) throw failed(`HTTP ${res.status}`, res.status);
    record(view, {
      url,
      status: res.status,
      xCache: res.headers.get('X-Cache'),
      tier: res.headers.get('X-Cache-Tier'),
      age: res.headers.get('Age'),
      ms: performance.now() - t0,
    });
    return blob;
  }

  // ---- the overlay ----
  const median = (xs) => quantile(xs, 0.5);
  function quantile(xs, q) {
    if (!xs.length) return '';
    const s = [...xs].sort((a, b) => a - b);
    return Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))]);
  }
  let renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      renderOverlay();
    });
  }
  function cell(text, cls, stat) {
    const td = document.createElement('td');
    td.textContent = String(text);
    if (cls) td.className = cls;
    if (stat) td.dataset.stat = stat;
    return td;
  }
  function renderOverlay() {
    const rows = [];
    for (const view of VIEWS) {
      const s = page.stats[view];
      const tr = document.createElement('tr');
      tr.id = `stats-${view}`;
      if (view === sel.view) tr.className = 'active';
      tr.append(
        cell(view),
        cell(s.tiles, '', `${view}.tiles`),
        cell(s.HIT, 'hit', `${view}.HIT`),
        cell(s.MISS, 'miss', `${view}.MISS`),
        cell(s.STALE, 'stale', `${view}.STALE`),
        cell(s.other, '', `${view}.other`),
        cell(s.failed, s.failed ? 'failed' : '', `${view}.failed`),
        cell(median(s.hitMs)),
        cell(median(s.missMs)),
        cell(quantile(s.allMs, 0.95)),
      );
      rows.push(tr);
    }
    $('stats').replaceChildren(...rows);
    const tiers = page.stats[sel.view].tiers;
    const t = Object.entries(tiers).map(([k, v]) => `${k} ${v}`).join(' · ');
    $('tiers').textContent = `served from: ${t || '-'}`;
    const last = [...page.log].reverse().find((e) => e.view === sel.view);
    $('last').textContent = last
      ? `last: ${last.error || last.xCache || '?'}${last.tier ? ` (${last.tier})` : ''}, Age ${last.age ?? '-'} s, `
        + `${Math.round(last.ms)} ms, ${new URL(last.url).pathname}`
      : 'last: -';
    const problem = sel.view === 'vector' ? page.vectorErrors[page.vectorErrors.length - 1] : null;
    $('problem').hidden = !problem;
    $('problem').textContent = problem ? `MapLibre: ${problem}` : '';
  }
  $('reset').addEventListener('click', () => {
    page.stats = { raster: newStats(), vector: newStats(), traffic: newStats() };
    page.log.length = 0;
    page.vectorErrors.length = 0;
    renderOverlay();
  });

  // ---- the raster map: Leaflet with a tile layer that loads tiles with fetch() ----
  const FetchTileLayer = L.TileLayer.extend({
    createTile(coords, done) {
      const img = document.createElement('img');
      img.alt = '';
      img.setAttribute('role', 'presentation');
      const ctrl = new AbortController();
      img.tileAbort = () => {
        img.onload = null;
        img.onerror = null;
        ctrl.abort();
      };
      const view = this.options.view || 'raster';
      fetchTile(view, this.getTileUrl(coords), ctrl.signal).then((blob) => {
        const src = URL.createObjectURL(blob);
        img.onload = () => {
          URL.revokeObjectURL(src);
          done(null, img);
        };
        img.onerror = () => {
          URL.revokeObjectURL(src);
          page.stats[view].failed += 1;
          scheduleRender();
          done(new Error('not an image'), img);
        };
        img.src = src;
      }, (err) => {
        if (!ctrl.signal.aborted) done(err, img);
      });
      return img;
    },
  });

  const rasterMap = L.map('raster', { worldCopyJump: true }).setView([30, 0], 2);
  function setRasterLayer() {
    if (page.rasterLayer) rasterMap.removeLayer(page.rasterLayer);
    const big = sel.size === '512';
    rasterMap.setMinZoom(big ? 1 : 0);
    body.dataset.rasterState = 'loading';
    // Not new URL(): it would escape the template's braces.
    const layer = new FetchTileLayer(root + rasterPath(sel), {
      tileSize: Number(sel.size),
      zoomOffset: big ? -1 : 0,
      maxZoom: RASTER_MAX_ZOOM,
      attribution: '&copy; HERE (through tile-proxy)',
    });
    // A tile scrolled or zoomed away stops its download.
    layer.on('tileunload', (e) => e.tile.tileAbort && e.tile.tileAbort());
    layer.on('loading', () => { body.dataset.rasterState = 'loading'; });
    layer.on('load', () => { body.dataset.rasterState = 'loaded'; });
    layer.addTo(rasterMap);
    page.rasterLayer = layer;
    setTrafficLayer();
  }

  // The traffic overlay of the raster map, over the base layer.
  function setTrafficLayer() {
    if (page.trafficLayer) rasterMap.removeLayer(page.trafficLayer);
    page.trafficLayer = null;
    if (sel.traffic !== '1') return;
    const big = sel.size === '512';
    const layer = new FetchTileLayer(root + trafficPath(sel), {
      view: 'traffic',
      tileSize: Number(sel.size),
      zoomOffset: big ? -1 : 0,
      maxZoom: RASTER_MAX_ZOOM,
      zIndex: 10,
      attribution: '&copy; HERE traffic',
    });
    layer.on('tileunload', (e) => e.tile.tileAbort && e.tile.tileAbort());
    layer.on('loading', () => { body.dataset.trafficState = 'loading'; });
    layer.on('load', () => { body.dataset.trafficState = 'loaded'; });
    layer.addTo(rasterMap);
    page.trafficLayer = layer;
  }

  // ---- the cache overlay: what the proxy cached where, from GET /admin/cache-map ----
  // The admin API needs the admin token: typed into the token field, kept in this tab only
  // (sessionStorage, never in the URL), sent as Authorization. The overlay asks the page's own
  // origin; with admin_listen the admin API is on another port and answers 404 here (the
  // status line says so; see the README).
  const TOKEN_KEY = 'tileProxyAdminToken';
  // The same colours as the PNG tiles of /admin/cache-map (http/admin/cache_map.rs `colour`).
  const CACHE_COLOURS = {
    'cached-hour': '#1a9850', 'cached-day': '#66bd63', 'cached-old': '#a6d96a', purged: '#d73027', requested: '#2c7bb6',
  };
  const CACHE_ZOOMS = 2; // the current zoom and this many below it
  const cacheClass = (p) => (p.state !== 'cached' ? p.state
    : p.age_s < 3600 ? 'cached-hour' : p.age_s < 86400 ? 'cached-day' : 'cached-old');
  let cacheAbort = null;
  let cacheTimer = null;
  let cacheZmin = 0;

  function cacheStatus(text) {
    $('cache-status').textContent = text;
  }

  // The view's tile zoom (Leaflet's zoom, one less with 512 px tiles) and bbox (clamped).
  function cacheQuery() {
    const z = Math.max(0, rasterMap.getZoom() + (sel.size === '512' ? -1 : 0));
    const zmax = Math.min(RASTER_MAX_ZOOM, z + CACHE_ZOOMS);
    const b = rasterMap.getBounds();
    let [w, e] = [b.getWest(), b.getEast()];
    if (e - w >= 360) [w, e] = [-180, 180];
    const clamp = (v, lim) => Math.max(-lim, Math.min(lim, v)).toFixed(6);
    const bbox = [clamp(w, 180), clamp(b.getSouth(), 90), clamp(e, 180), clamp(b.getNorth(), 90)].join(',');
    return { z, zmax, q: query({ index: sel.indice, bbox, zoom: `${z},${zmax}` }) };
  }

  async function loadCache() {
    if (cacheAbort) cacheAbort.abort();
    cacheAbort = null;
    if (sel.cache !== '1') {
      if (page.cacheLayer) page.cacheLayer.clearLayers();
      page.cache = null;
      delete body.dataset.cacheState;
      return;
    }
    const token = $('token').value.trim();
    if (!token) {
      page.cacheLayer.clearLayers();
      body.dataset.cacheState = 'no-token';
      cacheStatus('type the admin token (admin_token) above');
      return;
    }
    const { z, zmax, q } = cacheQuery();
    $('cache-zooms').textContent = `zoom ${z}-${zmax}`;
    const ctrl = new AbortController();
    cacheAbort = ctrl;
    body.dataset.cacheState = 'loading';
    let res;
    let doc;
    try {
      res = await fetch(`${root}admin/cache-map?${q}`, {
        signal: ctrl.signal, cache: 'no-store', headers: { Authorization: `Bearer ${token}` },
      });
      doc = await res.json();
    } catch (err) {
      if (ctrl.signal.aborted) return;
      body.dataset.cacheState = `error: ${err.message}`;
      cacheStatus(`could not load the cache map: ${err.message}`);
      return;
    }
    if (ctrl.signal.aborted) return;
    if (!res.ok) {
      const why = res.status === 401 ? 'the admin token is wrong'
        : res.status === 404 ? 'no admin API at this address (admin_token unset, or admin_listen serves it on its own port)'
          : (doc && doc.message) || `HTTP ${res.status}`;
      page.cacheLayer.clearLayers();
      page.cache = { error: res.status };
      body.dataset.cacheState = `error: ${res.status}`;
      cacheStatus(why);
      return;
    }
    page.cacheLayer.clearLayers();
    cacheZmin = z;
    // Lower zooms first (the answer's order): the smaller tiles are drawn on top.
    page.cacheLayer.addData(doc);
    page.cache = { features: doc.features.length, counts: doc.counts, truncated: doc.truncated, zoom: doc.zoom };
    const c = doc.counts;
    cacheStatus(`${c.cached} cached, ${c.purged} purged, ${c.requested} requested`
      + `${doc.truncated ? ` (first ${doc.limit} tiles only)` : ''}`);
    body.dataset.cacheState = 'loaded';
  }

  function scheduleCache() {
    clearTimeout(cacheTimer);
    cacheTimer = setTimeout(loadCache, 150);
  }

  function setCacheLayer() {
    body.dataset.cache = sel.cache;
    $('cache-legend').hidden = sel.cache !== '1';
    if (!page.cacheLayer) {
      page.cacheLayer = L.geoJSON(null, {
        interactive: true,
        style: (f) => {
          const cls = cacheClass(f.properties);
          return {
            className: `cache-tile cache-${cls}`, color: CACHE_COLOURS[cls], fillColor: CACHE_COLOURS[cls],
            weight: f.properties.z > cacheZmin ? 1 : 2, opacity: 0.9, fillOpacity: 0.3,
          };
        },
        onEachFeature: (f, layer) => {
          const p = f.properties;
          const age = p.age_s === null ? 'no copy' : `stored ${p.age_s} s ago`;
          layer.bindTooltip(`${p.z}/${p.x}/${p.y}: ${p.state}, ${age}, requested ${p.last_request_s} s ago`, { sticky: true });
        },
      }).addTo(rasterMap);
    }
    loadCache();
  }

  $('token').value = sessionStorage.getItem(TOKEN_KEY) || '';
  $('token').addEventListener('change', () => {
    const t = $('token').value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
    loadCache();
  });
  $('cache').checked = sel.cache === '1';
  $('cache').addEventListener('change', () => {
    sel.cache = $('cache').checked ? '1' : '0';
    writeSelection();
    setCacheLayer();
  });
  rasterMap.on('moveend', () => { if (sel.cache === '1') scheduleCache(); });

  // ---- the vector view: MapLibre GL, loaded on first use ----
  // A minimal style for the test upstream's OMV layers (grid, label, water) and a few of HERE's
  // (earth, water, landuse, roads, buildings). No text: labels need glyphs, and there is no glyph
  // server without internet, so `label` points are drawn as circles.
  function vectorStyle() {
    const omv = (id, type, layer, paint, filter) => ({
      id, type, source: 'omv', 'source-layer': layer, paint, ...(filter ? { filter } : {}),
    });
    const polygons = ['==', ['geometry-type'], 'Polygon'];
    const lines = ['==', ['geometry-type'], 'LineString'];
    return {
      version: 8,
      sources: {
        // proxy:// goes through fetchTile (below), so the overlay counts vector tiles too.
        omv: { type: 'vector', tiles: [`proxy://${vectorPath(sel)}`], maxzoom: VECTOR_MAX_ZOOM },
        traffic: { type: 'vector', tiles: [`proxy://${trafficVectorPath(sel)}`], minzoom: 1, maxzoom: VECTOR_MAX_ZOOM },
      },
      layers: [
        { id: 'background', type: 'background', paint: { 'background-color': '#f2efe9' } },
        omv('earth', 'fill', 'earth', { 'fill-color': '#ece7dc' }, polygons),
        omv('landuse', 'fill', 'landuse', { 'fill-color': '#d8e8c8', 'fill-opacity': 0.7 }, polygons),
        omv('water', 'fill', 'water', { 'fill-color': '#9cc3e6' }, polygons),
        omv('water-lines', 'line', 'water', { 'line-color': '#9cc3e6', 'line-width': 1.5 }, lines),
        omv('buildings', 'fill', 'buildings', { 'fill-color': '#d9d0c9', 'fill-outline-color': '#c4b9af' }, polygons),
        omv('roads', 'line', 'roads', {
          'line-color': ['match', ['get', 'kind'], 'highway', '#f0a04b', 'major_road', '#f7d37a', '#ffffff'],
          'line-width': ['match', ['get', 'kind'], 'highway', 3, 'major_road', 2, 1],
        }, lines),
        omv('grid', 'line', 'grid', { 'line-color': '#8a94a6', 'line-width': 1 }, ['!=', ['get', 'kind'], 'border']),
        omv('grid-border', 'line', 'grid', { 'line-color': '#c0392b', 'line-width': 2 }, ['==', ['get', 'kind'], 'border']),
        omv('label', 'circle', 'label', {
          'circle-radius': 5, 'circle-color': '#1d2330', 'circle-stroke-color': '#ffffff', 'circle-stroke-width': 1.5,
        }),
        {
          id: 'traffic-flow', type: 'line', source: 'traffic', 'source-layer': 'traffic_flow',
          layout: { visibility: sel.traffic === '1' ? 'visible' : 'none' },
          paint: {
            'line-color': ['match', ['get', 'kind'], 'free', '#2ea043', 'heavy', '#f2c21b', 'queuing', '#e03b24', '#1f1f1f'],
            'line-width': 3,
          },
        },
      ],
    };
  }

  let maplibreLoading = null;
  function loadMapLibre() {
    maplibreLoading = maplibreLoading || new Promise((resolve, reject) => {
      const s = document.createElement('script');
      s.src = body.dataset.maplibre;
      s.onload = resolve;
      s.onerror = () => reject(new Error('could not load maplibre-gl.js'));
      document.head.append(s);
    });
    return maplibreLoading;
  }

  function vectorMessage(text) {
    const p = document.createElement('p');
    p.className = 'message';
    p.textContent = text;
    $('vector').replaceChildren(p);
  }

  async function showVector() {
    const center = rasterMap.getCenter();
    // Leaflet counts zoom in 256 px tiles, MapLibre in 512 px tiles.
    const view = { center: [center.lng, center.lat], zoom: Math.max(0, rasterMap.getZoom() - 1) };
    if (page.vectorMap) {
      page.vectorMap.resize();
      page.vectorMap.jumpTo(view);
      return;
    }
    body.dataset.vectorState = 'loading';
    try {
      await loadMapLibre();
    } catch (err) {
      body.dataset.vectorState = `error: ${err.message}`;
      vectorMessage(err.message);
      return;
    }
    const gl = document.createElement('canvas').getContext('webgl2') || document.createElement('canvas').getContext('webgl');
    if (!gl) {
      body.dataset.vectorState = 'no-webgl';
      vectorMessage('This browser has no WebGL: MapLibre GL cannot draw the vector tiles here. '
        + 'The URL templates on the right still apply.');
      return;
    }
    maplibregl.addProtocol('proxy', async (params, abortController) => {
      const path = params.url.slice('proxy://'.length);
      const view = path.startsWith('v2/traffictiles/') ? 'traffic' : 'vector';
      const blob = await fetchTile(view, root + path, abortController.signal);
      return { data: await blob.arrayBuffer() };
    });
    let map;
    try {
      map = new maplibregl.Map({
        container: 'vector', style: vectorStyle(), ...view, maxZoom: VECTOR_MAX_ZOOM + 2,
        attributionControl: { compact: false, customAttribution: '&copy; HERE (through tile-proxy)' },
      });
    } catch (err) {
      body.dataset.vectorState = `no-webgl: ${err.message}`;
      vectorMessage(`MapLibre GL could not start: ${err.message}`);
      return;
    }
    page.vectorMap = map;
    // Top left, as in the raster map (the overlay sits top right).
    map.addControl(new maplibregl.NavigationControl({ showCompass: false }), 'top-left');
    // With a listener, MapLibre reports errors here instead of on the console.
    map.on('error', (e) => {
      page.vectorErrors.push(String((e.error && e.error.message) || e.error || 'error'));
      scheduleRender();
    });
    map.on('load', () => { body.dataset.vectorState = 'loaded'; });
    map.on('idle', () => { body.dataset.vectorState = 'idle'; });
  }

  function setVectorSource() {
    const map = page.vectorMap;
    if (!map || !map.isStyleLoaded()) return;
    map.getSource('omv').setTiles([`proxy://${vectorPath(sel)}`]);
    map.getSource('traffic').setTiles([`proxy://${trafficVectorPath(sel)}`]);
    map.setLayoutProperty('traffic-flow', 'visibility', sel.traffic === '1' ? 'visible' : 'none');
  }

  // ---- snippets to copy ----
  function snippets() {
    const b = publicBase;
    const big = sel.size === '512';
    const raster = `${b}/${rasterPath(sel)}`;
    const size = `tileSize: ${sel.size}`;
    return [
      ['Leaflet', `L.tileLayer('${raster}', {
  ${size},${big ? ' zoomOffset: -1,' : ''} maxZoom: ${RASTER_MAX_ZOOM},
  attribution: '&copy; HERE'
}).addTo(map);`],
      ['MapLibre GL: raster source (TileJSON)', `map.addSource('here-raster', {
  type: 'raster', ${size},
  url: '${b}/${rasterTileJson(sel)}'
});`],
      ['MapLibre GL: raster source (template)', `map.addSource('here-raster', {
  type: 'raster', ${size}, maxzoom: ${RASTER_MAX_ZOOM},
  tiles: ['${raster}']
});`],
      ['MapLibre GL: vector source, HERE OMV (TileJSON)', `map.addSource('here-omv', {
  type: 'vector',
  url: '${b}/${vectorTileJson(sel)}'
});`],
      ['MapLibre GL: vector source (template)', `map.addSource('here-omv', {
  type: 'vector', maxzoom: ${VECTOR_MAX_ZOOM},
  tiles: ['${b}/${vectorPath(sel)}']
});`],
      ['OpenLayers: raster', `new ol.layer.Tile({
  source: new ol.source.XYZ({
    url: '${raster}',
    ${size}, maxZoom: ${RASTER_MAX_ZOOM},
    attributions: '&copy; HERE'
  })
});`],
      ['OpenLayers: vector', `new ol.layer.VectorTile({
  source: new ol.source.VectorTile({
    format: new ol.format.MVT(),
    url: '${b}/${vectorPath(sel)}',
    maxZoom: ${VECTOR_MAX_ZOOM}
  })
});`],
      ['Leaflet: traffic flow over the base map', `L.tileLayer('${b}/${trafficPath(sel)}', {
  ${size},${big ? ' zoomOffset: -1,' : ''} maxZoom: ${RASTER_MAX_ZOOM}, zIndex: 10,
  attribution: '&copy; HERE traffic'
}).addTo(map);`],
      ['MapLibre GL: traffic flow (vector, TileJSON) over the base map', `map.addSource('here-traffic', {
  type: 'vector',
  url: '${b}/${trafficVectorTileJson(sel)}'
});
map.addLayer({
  id: 'traffic-flow', type: 'line', source: 'here-traffic', 'source-layer': 'traffic_flow',
  paint: { 'line-width': 3, 'line-color': ['match', ['get', 'kind'],
    'free', '#2ea043', 'heavy', '#f2c21b', 'queuing', '#e03b24', '#1f1f1f'] }
});`],
      ['OpenLayers: traffic flow over the base map', `new ol.layer.Tile({
  source: new ol.source.XYZ({
    url: '${b}/${trafficPath(sel)}',
    ${size}, maxZoom: ${RASTER_MAX_ZOOM},
    attributions: '&copy; HERE traffic'
  }),
  zIndex: 10
});`],
    ];
  }

  function renderSnippets() {
    const list = snippets().map(([title, code]) => {
      const div = document.createElement('div');
      div.className = 'snippet';
      const h = document.createElement('h3');
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = 'copy';
      const pre = document.createElement('pre');
      pre.textContent = code;
      button.addEventListener('click', async () => {
        try {
          await navigator.clipboard.writeText(code);
          button.textContent = 'copied';
        } catch {
          getSelection().selectAllChildren(pre);
          button.textContent = 'press Ctrl+C';
        }
        setTimeout(() => { button.textContent = 'copy'; }, 1500);
      });
      h.append(title, button);
      div.append(h, pre);
      return div;
    });
    $('snippet-list').replaceChildren(...list);
  }

  // ---- wiring ----
  function showView(view) {
    sel.view = view;
    body.dataset.view = view;
    for (const v of ['raster', 'vector']) {
      $(v).hidden = v !== view;
      $(`tab-${v}`).setAttribute('aria-selected', String(v === view));
    }
    writeSelection();
    renderOverlay();
    if (view === 'vector') {
      showVector();
    } else {
      rasterMap.invalidateSize();
    }
  }

  $('traffic').checked = sel.traffic === '1';
  $('traffic').addEventListener('change', () => {
    sel.traffic = $('traffic').checked ? '1' : '0';
    writeSelection();
    setTrafficLayer();
    setVectorSource();
  });
  for (const k of ['resource', 'style', 'size', 'format', 'layer', 'indice']) {
    $(k).value = sel[k];
    $(k).addEventListener('change', () => {
      const v = $(k).value.trim();
      if (k === 'indice' && !INDICE.test(v)) return;
      sel[k] = v;
      writeSelection();
      renderSnippets();
      if (k === 'layer' || k === 'indice') setVectorSource();
      if (k !== 'layer') setRasterLayer();
      if (k === 'indice' || k === 'size') loadCache();
    });
  }
  for (const b of document.querySelectorAll('nav button')) {
    b.addEventListener('click', () => showView(b.dataset.view));
  }
  $('controls').addEventListener('submit', (e) => e.preventDefault());

  setRasterLayer();
  setCacheLayer();
  renderSnippets();
  showView(sel.view);
})();
