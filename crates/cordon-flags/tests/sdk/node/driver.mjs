// Drives the official Unleash Node SDK (npm `unleash-client`, pinned in
// package.json) for crates/cordon-flags/tests/sdk.rs, which speaks to it in JSON
// lines: one command per line on stdin, exactly one answer per command on stdout.
// The protocol is described in crates/cordon-flags/tests/sdk/README.md. Everything the
// SDK says (errors, warnings, mode switches) goes to stderr, never to stdout.
//
//   node driver.mjs --url http://127.0.0.1:PORT/api --token SECRET \
//       [--mode polling|streaming] [--app-name NAME] [--instance-id ID] \
//       [--refresh-ms 200] [--metrics-ms 500]

import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const { Unleash, InMemStorageProvider, UnleashEvents } = require('unleash-client');
const details = require('unleash-client/lib/details.json');

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    token: { type: 'string' },
    mode: { type: 'string', default: 'polling' },
    'app-name': { type: 'string', default: 'cordon-sdk-test-node' },
    'instance-id': { type: 'string', default: `node-${process.pid}` },
    'refresh-ms': { type: 'string', default: '200' },
    'metrics-ms': { type: 'string', default: '500' },
  },
});

function fatal(message) {
  process.stderr.write(`driver.mjs: ${message}\n`);
  process.exit(2);
}

if (!opts.url || !opts.token) fatal('--url and --token are required');
if (!['polling', 'streaming'].includes(opts.mode)) fatal(`--mode ${opts.mode}: use polling or streaming`);

const log = (...parts) => process.stderr.write(`[unleash-node] ${parts.join(' ')}\n`);

const unleash = new Unleash({
  url: opts.url,
  appName: opts['app-name'],
  instanceId: opts['instance-id'],
  customHeaders: { Authorization: opts.token },
  refreshInterval: Number(opts['refresh-ms']),
  metricsInterval: Number(opts['metrics-ms']),
  // No backup file from an earlier run may make the SDK ready before the server answered.
  storageProvider: new InMemStorageProvider(),
  skipInstanceCountWarning: true,
  experimentalMode: opts.mode === 'streaming' ? { type: 'streaming' } : { type: 'polling', format: 'full' },
});

const started = Date.now();
let synchronizedAfterMs = null;
unleash.on(UnleashEvents.Synchronized, () => {
  synchronizedAfterMs = Date.now() - started;
});
let registered = false;
unleash.on(UnleashEvents.Registered, () => {
  registered = true;
});
const modeChanges = [];
unleash.on(UnleashEvents.Mode, (change) => {
  modeChanges.push(change);
  log('mode', JSON.stringify(change));
});
unleash.on(UnleashEvents.Error, (err) => log('error:', err?.stack ?? String(err)));
unleash.on(UnleashEvents.Warn, (msg) => log('warn:', typeof msg === 'string' ? msg : JSON.stringify(msg)));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function mode() {
  return unleash.repository.getMode?.() ?? 'polling';
}

function variantOut(v) {
  const out = { name: v.name, enabled: Boolean(v.enabled), feature_enabled: Boolean(v.feature_enabled) };
  if (v.payload) out.payload = v.payload;
  return out;
}

// What the SDK would answer, without counting it towards the metrics it reports.
function peek(flag, context) {
  const known = unleash.getFeatureToggleDefinition(flag) !== undefined;
  const enabled = unleash.client.isEnabled(flag, { ...unleash.staticContext, ...context }, () => false);
  return { known, enabled };
}

async function waitFor(cmd) {
  const deadline = Date.now() + (cmd.timeout_ms ?? 5000);
  const t0 = Date.now();
  for (;;) {
    const now = peek(cmd.flag, cmd.context ?? {});
    const ok =
      (cmd.enabled === undefined || now.enabled === cmd.enabled) &&
      (cmd.known === undefined || now.known === cmd.known);
    if (ok) return { seen: true, ms: Date.now() - t0, ...now };
    if (Date.now() >= deadline) return { seen: false, ms: Date.now() - t0, ...now };
    await sleep(5);
  }
}

async function flushMetrics() {
  let sent = null;
  const warnings = [];
  const onSent = (payload) => {
    sent = payload;
  };
  const onWarn = (msg) => warnings.push(typeof msg === 'string' ? msg : String(msg?.message ?? msg));
  unleash.on(UnleashEvents.Sent, onSent);
  unleash.on(UnleashEvents.Warn, onWarn);
  try {
    await unleash.flushMetrics();
  } finally {
    unleash.off(UnleashEvents.Sent, onSent);
    unleash.off(UnleashEvents.Warn, onWarn);
  }
  return { sent: sent !== null, toggles: sent?.bucket?.toggles ?? {}, warnings };
}

async function handle(cmd) {
  switch (cmd.cmd) {
    case 'ready': {
      const deadline = Date.now() + (cmd.timeout_ms ?? 5000);
      while (synchronizedAfterMs === null && Date.now() < deadline) await sleep(5);
      if (synchronizedAfterMs === null) {
        return { ok: false, error: `the SDK did not synchronize with the server within ${cmd.timeout_ms ?? 5000} ms`, mode: mode() };
      }
      return { ok: true, after_ms: synchronizedAfterMs, mode: mode(), mode_changes: modeChanges };
    }
    case 'is_enabled':
      return { ok: true, enabled: unleash.isEnabled(cmd.flag, cmd.context ?? {}) };
    case 'get_variant':
      return { ok: true, variant: variantOut(unleash.getVariant(cmd.flag, cmd.context ?? {})) };
    case 'peek':
      return { ok: true, ...peek(cmd.flag, cmd.context ?? {}) };
    case 'wait':
      return { ok: true, ...(await waitFor(cmd)), mode: mode() };
    case 'flush_metrics':
      return { ok: true, ...(await flushMetrics()) };
    case 'status':
      return { ok: true, mode: mode(), mode_changes: modeChanges, registered, synchronized: synchronizedAfterMs !== null };
    case 'quit':
      unleash.destroy();
      return { ok: true };
    default:
      return { ok: false, error: `unknown command ${JSON.stringify(cmd.cmd)}` };
  }
}

const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
out({ event: 'started', sdk: details.sdkVersion, runtime: `node ${process.versions.node}` });

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ ok: false, error: `not JSON: ${e.message}` });
    continue;
  }
  let answer;
  try {
    answer = await handle(cmd);
  } catch (e) {
    answer = { ok: false, error: e?.stack ?? String(e) };
  }
  out(answer);
  if (cmd.cmd === 'quit') process.exit(0);
}
// stdin closed: the test is gone.
unleash.destroy();
process.exit(0);
