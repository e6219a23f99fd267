/*
 * Open MCT plugin for downlink: objects from the engineering dictionary, live
 * values over MQTT, history from the archive API, limits from the service.
 *
 * - a root "JWST downlink" holding the Overview, one folder per subsystem, and
 *   one telemetry object per parameter (units and limits in its metadata);
 * - a telemetry provider: subscribe() reads jwst/eng/<subsystem>/<parameter>
 *   through the shared connection; request() honours strategy 'latest' (no
 *   archive call) and otherwise asks GET /api/v1/engineering (proxied to the
 *   archive) with max_points = size, merged with the in-page buffer; if the
 *   archive is away, the buffer alone answers;
 * - a limit evaluator that shows the limit state the realtime service decided
 *   (with its dead band and persistence), not a re-evaluation of the raw value.
 */
(function () {
  'use strict';

  const NS = 'downlink';
  const LIMIT_CLASS = { yellow: 'is-limit--yellow', red: 'is-limit--red' };

  function DownlinkPlugin(config) {
    return function install(openmct) {
      const live = new window.DownlinkLive(config);
      window.downlinkLive = live;
      const params = new Map();
      config.subsystems.forEach((s) => s.parameters.forEach((p) => params.set(p.name, { ...p, subsystem: s.name })));

      openmct.types.addType('downlink.parameter', {
        name: 'Engineering parameter', description: 'A real-time engineering parameter', cssClass: 'icon-telemetry',
      });
      openmct.types.addType('downlink.subsystem', {
        name: 'Subsystem', description: 'Parameters of one subsystem', cssClass: 'icon-folder',
      });
      openmct.types.addType('downlink.overview', {
        name: 'Real-time overview', description: 'Subsystems, alerts and packet accounting', cssClass: 'icon-dashboard',
      });

      const id = (key) => ({ namespace: NS, key });

      function parameterObject(p) {
        const range = { key: 'value', name: 'Value', unit: p.unit, format: 'float', hints: { range: 1 } };
        if (p.red) { range.min = p.red[0]; range.max = p.red[1]; }
        return {
          identifier: id(p.name), name: p.name, type: 'downlink.parameter', location: 'downlink:' + p.subsystem,
          notes: p.description,
          telemetry: {
            values: [
              { key: 'utc', source: 'timestamp', name: 'Time', format: 'utc', hints: { domain: 1 } },
              range,
              { key: 'raw', name: 'Raw', format: 'number' },
              { key: 'limit', name: 'Limit', format: 'string' },
            ],
          },
          downlink: p,
        };
      }

      openmct.objects.addRoot(id('root'));
      openmct.objects.addProvider(NS, {
        get(identifier) {
          const key = identifier.key;
          if (key === 'root') {
            return Promise.resolve({
              identifier, name: 'JWST downlink', type: 'folder', location: 'ROOT',
              composition: [id('overview'), ...config.subsystems.map((s) => id(s.name))],
            });
          }
          if (key === 'overview') {
            return Promise.resolve({ identifier, name: 'Real-time overview', type: 'downlink.overview', location: 'downlink:root' });
          }
          const sub = config.subsystems.find((s) => s.name === key);
          if (sub) {
            return Promise.resolve({
              identifier, name: sub.name, type: 'downlink.subsystem', location: 'downlink:root',
              composition: sub.parameters.map((p) => id(p.name)),
            });
          }
          const p = params.get(key);
          return Promise.resolve(p ? parameterObject(p) : undefined);
        },
      });
      openmct.composition.addProvider({
        appliesTo: (o) => o.identifier.namespace === NS && Array.isArray(o.composition),
        load: (o) => Promise.resolve(o.composition),
      });

      const isParam = (o) => o.type === 'downlink.parameter';
      openmct.telemetry.addProvider({
        supportsSubscribe: isParam,
        subscribe(domainObject, callback) {
          const p = domainObject.downlink;
          return live.on('eng/' + p.subsystem + '/' + p.name, (datum) => callback(datum));
        },
        supportsRequest: isParam,
        request(domainObject, options) {
          const name = domainObject.identifier.key;
          if (options && options.strategy === 'latest') {
            const d = live.latest.get(name);
            return Promise.resolve(d ? [d] : []);
          }
          const start = options && options.start !== undefined ? options.start : Date.now() - 15 * 60000;
          const end = options && options.end !== undefined ? options.end : Date.now();
          const size = Math.min((options && options.size) || 1000, 10000);
          const buffered = live.buffered(name, start, end);
          const q = new URLSearchParams({
            parameter: name, start: new Date(start).toISOString(), end: new Date(end).toISOString(),
            max_points: String(size),
          });
          return fetch(config.history + '?' + q).then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
            .then((body) => {
              const archived = (body.points || []).map((pt) => ({
                id: name, timestamp: Date.parse(pt.time), utc: Date.parse(pt.time), value: pt.value,
                raw: pt.raw, limit: undefined,
              }));
              const last = archived.length ? archived[archived.length - 1].timestamp : -Infinity;
              return archived.concat(buffered.filter((d) => d.timestamp > last));
            })
            .catch(() => buffered); // archive API not running: the in-page buffer alone
        },
        supportsLimits: isParam,
        getLimitEvaluator() {
          return {
            evaluate(datum) {
              const cls = LIMIT_CLASS[datum && datum.limit];
              return cls ? { cssClass: cls, name: datum.limit } : undefined;
            },
          };
        },
        getLimits(domainObject) {
          const p = domainObject.downlink;
          const limits = {};
          if (p.yellow) limits.WARNING = { low: { value: p.yellow[0] }, high: { value: p.yellow[1] } };
          if (p.red) limits.CRITICAL = { low: { value: p.red[0] }, high: { value: p.red[1] } };
          return { limits: () => Promise.resolve(limits) };
        },
      });
    };
  }

  window.DownlinkPlugin = DownlinkPlugin;
})();
