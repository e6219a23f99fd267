/*
 * The "Real-time overview" view: every subsystem's parameters (value, unit,
 * limit colour, stale), the alert feed and the packet accounting of the
 * current contact, on one page. Values come through Open MCT's telemetry API
 * (the downlink provider); alerts, the heartbeat and the accounting summary
 * straight from the shared MQTT connection.
 */
(function () {
  'use strict';

  const MAX_ALERTS = 200;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === 'class') e.className = v; else e.setAttribute(k, v);
    });
    children.forEach((c) => e.append(c instanceof Node ? c : document.createTextNode(String(c))));
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined) return '—';
    if (typeof v !== 'number') return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
    return v.toFixed(a >= 100 ? 1 : 3);
  }

  function alertText(a) {
    if (a.kind === 'limit') return `${a.parameter} ${a.from} → ${a.to}: ${fmt(a.value)} ${a.unit || ''}`;
    if (a.kind === 'gap') {
      return `APID 0x${(a.apid || 0).toString(16).padStart(3, '0')}/${a.source}: ${a.count} missing from seq ${a.first_seq}`;
    }
    if (a.kind === 'contact') {
      const d = a.detail || {};
      return `contact ${a.contact} ended: ${d.packets ?? a.packets ?? '?'} packets, ${d.missing ?? a.missing ?? '?'} missing`;
    }
    return `${a.type || a.kind}${a.apid !== undefined ? ' APID 0x' + a.apid.toString(16) : ''}${a.exposure_id ? ' ' + a.exposure_id : ''}${a.reason ? ': ' + a.reason : ''}`;
  }

  function DownlinkOverviewView(config) {
    return function install(openmct) {
      openmct.objectViews.addProvider({
        key: 'downlink.overview', name: 'Real-time overview', cssClass: 'icon-dashboard',
        canView: (o) => o.type === 'downlink.overview',
        priority: () => 1,
        view(domainObject) {
          const cleanups = [];
          return {
            show(element) {
              const live = window.downlinkLive;
              const root = el('div', { class: 'dl-overview' });
              const conn = el('span', { class: 'dl-conn', id: 'dl-conn' }, 'MQTT: connecting');
              const beat = el('span', { class: 'dl-beat', id: 'dl-beat' }, 'realtime: no heartbeat yet');
              root.append(el('div', { class: 'dl-bar' }, conn, beat));

              const acct = el('div', { class: 'dl-acct', id: 'dl-accounting' }, 'No contact yet');
              const feed = el('ol', { class: 'dl-alerts', id: 'dl-alerts' });
              const side = el('div', { class: 'dl-side' },
                el('h2', {}, 'Packet accounting (current contact)'), acct,
                el('h2', {}, 'Alerts'), feed);
              const grid = el('div', { class: 'dl-grid' });
              root.append(el('div', { class: 'dl-main' }, grid, side));
              element.append(root);

              cleanups.push(live.onStatus((on) => {
                conn.textContent = on ? 'MQTT: connected' : 'MQTT: disconnected (retrying)';
                conn.className = 'dl-conn ' + (on ? 'dl-ok' : 'dl-bad');
              }));
              cleanups.push(live.on('status/realtime', (s) => {
                beat.textContent = s.online
                  ? `realtime: online, lag ${s.lag_total ?? 0} msgs, ${Object.keys(s.last_packet_age_s || {}).length} APIDs`
                  : `realtime: OFFLINE (${s.reason || 'unknown'})`;
                beat.className = 'dl-beat ' + (s.online ? 'dl-ok' : 'dl-bad');
              }));
              cleanups.push(live.on('status/contact', (c) => {
                acct.replaceChildren(el('table', { class: 'dl-acct-table' },
                  ...[['contact', c.contact], ['state', c.ended ? 'ended' : 'in progress'],
                    ['packets', c.packets], ['missing', c.missing], ['gaps', c.gaps],
                    ['duplicates', c.duplicates], ['out of order', c.out_of_order],
                    ['resyncs', c.resyncs], ['skipped bytes', c.skipped_bytes]]
                    .map(([k, v]) => el('tr', { 'data-field': k.replace(/ /g, '_') }, el('th', {}, k), el('td', {}, v)))));
              }));
              const seen = new Set();
              cleanups.push(live.on('alerts/#', (a) => {
                if (!a.id || seen.has(a.id)) return;
                seen.add(a.id);
                const item = el('li', { class: `dl-alert dl-sev-${a.severity || 'info'} dl-kind-${a.kind}` },
                  el('span', { class: 'dl-alert-kind' }, a.kind), ' ', alertText(a));
                feed.prepend(item);
                while (feed.children.length > MAX_ALERTS) feed.lastChild.remove();
              }));

              config.subsystems.forEach((sub) => {
                const body = el('tbody');
                grid.append(el('section', { class: 'dl-subsystem', 'data-subsystem': sub.name },
                  el('h2', {}, sub.name.replace(/_/g, ' ')),
                  el('table', { class: 'dl-params' },
                    el('thead', {}, el('tr', {}, el('th', {}, 'parameter'), el('th', {}, 'value'),
                      el('th', {}, 'unit'), el('th', {}, 'limit'))), body)));
                sub.parameters.forEach((p) => {
                  const value = el('td', { class: 'dl-value', 'data-parameter': p.name }, '—');
                  const limit = el('td', { class: 'dl-limit' }, '');
                  const row = el('tr', { class: 'dl-row', 'data-parameter': p.name, title: p.description },
                    el('td', { class: 'dl-name' }, p.name), value, el('td', { class: 'dl-unit' }, p.unit), limit);
                  body.append(row);
                  const show = (d) => {
                    value.textContent = fmt(d.value);
                    value.className = `dl-value dl-limit-${d.limit || 'nominal'}` + (d.stale ? ' dl-stale' : '');
                    limit.textContent = (d.limit || '') + (d.stale ? ' (stale)' : '');
                    row.dataset.limit = d.limit || 'nominal';
                    row.dataset.stale = d.stale ? 'true' : 'false';
                  };
                  openmct.objects.get({ namespace: 'downlink', key: p.name }).then((obj) => {
                    cleanups.push(openmct.telemetry.subscribe(obj, show));
                    openmct.telemetry.request(obj, { strategy: 'latest', size: 1 })
                      .then((data) => { if (data.length) show(data[data.length - 1]); });
                  });
                });
              });
            },
            destroy() { cleanups.forEach((fn) => fn()); },
          };
        },
      });
    };
  }

  window.DownlinkOverviewView = DownlinkOverviewView;
})();
