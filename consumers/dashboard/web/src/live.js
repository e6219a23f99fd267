/*
 * One MQTT-over-WebSocket connection per page, shared by every subscriber.
 *
 * mqtt.js queues what is sent before the socket is open, reconnects with a
 * fixed pause and re-subscribes on reconnect (resubscribe: true); this module
 * adds topic dispatch with MQTT wildcards, a bounded in-page buffer of the
 * live values per parameter (the history fallback when the archive API is not
 * there) and the latest value per parameter (Open MCT's `strategy: 'latest'`).
 */
(function () {
  'use strict';

  const BUFFER = 2000; // samples kept per parameter

  function matches(filter, topic) {
    const f = filter.split('/');
    const t = topic.split('/');
    for (let i = 0; i < f.length; i++) {
      if (f[i] === '#') return true;
      if (i >= t.length) return false;
      if (f[i] !== '+' && f[i] !== t[i]) return false;
    }
    return f.length === t.length;
  }

  class Live {
    constructor(config) {
      this.config = config;
      this.root = config.root;
      this.listeners = new Set(); // {filter, fn}
      this.buffers = new Map(); // parameter -> array of datum
      this.latest = new Map(); // parameter -> datum
      this.statusListeners = new Set();
      this.connected = false;
      this.client = mqtt.connect(config.wsUrl, {
        reconnectPeriod: 1000, connectTimeout: 5000, resubscribe: true, clean: true,
        clientId: 'dashboard-' + Math.random().toString(16).slice(2, 10),
      });
      this.client.on('connect', () => { this.setConnected(true); });
      this.client.on('close', () => { this.setConnected(false); });
      this.client.on('offline', () => { this.setConnected(false); });
      this.client.on('error', () => { this.setConnected(false); });
      this.client.on('message', (topic, payload) => this.dispatch(topic, payload));
      this.client.subscribe(this.root + '/#', { qos: 1 });
    }

    setConnected(on) {
      if (this.connected === on) return;
      this.connected = on;
      this.statusListeners.forEach((fn) => fn(on));
    }

    onStatus(fn) {
      this.statusListeners.add(fn);
      fn(this.connected);
      return () => this.statusListeners.delete(fn);
    }

    static datum(name, p) {
      return {
        id: name, timestamp: Date.parse(p.time), utc: Date.parse(p.time), value: p.value,
        raw: p.raw, unit: p.unit, limit: p.limit, stale: p.stale, seq: p.seq,
      };
    }

    dispatch(topic, payload) {
      if (!payload || payload.length === 0) return; // a cleared retained topic
      let body;
      try { body = JSON.parse(new TextDecoder().decode(payload)); } catch (e) { return; }
      const prefix = this.root + '/eng/';
      if (topic.startsWith(prefix)) {
        const name = topic.slice(topic.lastIndexOf('/') + 1);
        const d = Live.datum(name, body);
        const prev = this.latest.get(name);
        if (!prev || d.timestamp >= prev.timestamp) this.latest.set(name, d);
        let buf = this.buffers.get(name);
        if (!buf) { buf = []; this.buffers.set(name, buf); }
        if (!buf.length || buf[buf.length - 1].timestamp !== d.timestamp) {
          buf.push(d);
          if (buf.length > BUFFER) buf.splice(0, buf.length - BUFFER);
        } else {
          buf[buf.length - 1] = d; // same sample again (stale flag or republish)
        }
        body = d;
      }
      this.listeners.forEach((l) => { if (matches(l.filter, topic)) l.fn(body, topic); });
    }

    on(filter, fn) {
      const l = { filter: this.root + '/' + filter, fn };
      this.listeners.add(l);
      return () => this.listeners.delete(l);
    }

    buffered(name, start, end) {
      return (this.buffers.get(name) || []).filter((d) => d.timestamp >= start && d.timestamp <= end);
    }
  }

  window.DownlinkLive = Live;
})();
