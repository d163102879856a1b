// Runs browser phones (phone.js, SIP.js) in headless Chromium against a
// Dialtone node, for tests/tests/browser_phone.rs.
//
//   node run.mjs '<json>'
//
// The JSON names the scenario and the node:
//   { "scenario": "register" | "browser-to-browser" | "browser-calls" | "browser-answers",
//     "server": "wss://127.0.0.1:PORT", "domain": "example.test",
//     "phones": [{ "user": "alice", "password": "..." }, ...],
//     "target": "sip:carol@example.test",   // browser-calls
//     "timeoutMs": 20000 }
// It prints one JSON line per milestone ({"milestone": "..."}) and a last
// line {"ok": true} or {"ok": false, "error": "...", "logs": {...}};
// the exit code says the same.
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = fileURLToPath(new URL(".", import.meta.url));
const config = JSON.parse(process.argv[2] ?? "{}");
const timeoutMs = config.timeoutMs ?? 20000;

function say(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

// The page and SIP.js, from this directory (nothing from another origin).
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript" };
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
  if (path.includes("..")) {
    res.writeHead(400).end();
    return;
  }
  try {
    const body = await readFile(join(root, path === "/" ? "phone.html" : path));
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/phone.html`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    // The node's certificate is the test's own.
    "--ignore-certificate-errors",
    // Two phones on one machine: host candidates, no mDNS names, and
    // loopback allowed (a CI machine may have no other interface).
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
  ],
});

const pages = [];
async function openPhone(phone) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") {
      say({ console: phone.user, text: m.text() });
    }
  });
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.phone !== undefined);
  pages.push({ user: phone.user, page });
  return page;
}

async function state(page) {
  return page.evaluate(() => window.phone.state());
}

async function until(page, what, check) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await state(page);
    if (check(s)) {
      return s;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}; last state ${JSON.stringify(s)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function register(page, phone) {
  await page.evaluate(
    (args) => window.phone.register(args),
    { server: config.server, domain: config.domain, user: phone.user, password: phone.password },
  );
  await until(page, `${phone.user} registered`, (s) => s.registered);
  say({ milestone: "registered", user: phone.user });
}

const established = (s) => s.session === "Established";
const terminated = (s) => s.session === "Terminated";

async function browserToBrowser() {
  const [a, b] = config.phones;
  const pa = await openPhone(a);
  const pb = await openPhone(b);
  await register(pa, a);
  await register(pb, b);
  await pa.evaluate((t) => window.phone.call(t), `sip:${b.user}@${config.domain}`);
  await until(pa, "the caller's session established", established);
  await until(pb, "the callee's session established", established);
  say({ milestone: "established" });
  const iceUp = (s) => s.ice === "connected" || s.ice === "completed";
  await until(pa, "the caller's ICE connected", iceUp);
  await until(pb, "the callee's ICE connected", iceUp);
  say({ milestone: "ice connected" });
  // Media end to end: both sides receive audio (the fake device's tone).
  const hearing = (s) => s.audioBytesReceived > 1000;
  const sa = await until(pa, "the caller receiving audio", hearing);
  const sb = await until(pb, "the callee receiving audio", hearing);
  say({ milestone: "audio both ways", caller: sa.audioBytesReceived, callee: sb.audioBytesReceived });
  await pa.evaluate(() => window.phone.hangup());
  await until(pa, "the caller's session ended", terminated);
  await until(pb, "the callee's session ended", terminated);
  say({ milestone: "ended" });
}

async function browserCalls() {
  const [a] = config.phones;
  const pa = await openPhone(a);
  await register(pa, a);
  await pa.evaluate((t) => window.phone.call(t), config.target);
  await until(pa, "the call established", established);
  say({ milestone: "established" });
  await new Promise((r) => setTimeout(r, 500));
  await pa.evaluate(() => window.phone.hangup());
  await until(pa, "the call ended", terminated);
  say({ milestone: "ended" });
}

async function browserAnswers() {
  const [a] = config.phones;
  const pa = await openPhone(a);
  await register(pa, a);
  // The test now calls; the phone answers by itself and the caller hangs up.
  await until(pa, "an incoming call established", (s) => s.incoming > 0 && established(s));
  say({ milestone: "established" });
  await until(pa, "the caller's BYE", terminated);
  say({ milestone: "ended" });
}

async function registerOnly() {
  const [a] = config.phones;
  const pa = await openPhone(a);
  await register(pa, a);
}

const scenarios = {
  register: registerOnly,
  "browser-to-browser": browserToBrowser,
  "browser-calls": browserCalls,
  "browser-answers": browserAnswers,
};

let ok = false;
try {
  const run = scenarios[config.scenario];
  if (!run) {
    throw new Error(`unknown scenario ${config.scenario}`);
  }
  await run();
  for (const { page } of pages) {
    await page.evaluate(() => window.phone.unregister()).catch(() => {});
  }
  ok = true;
  say({ ok: true });
} catch (e) {
  const logs = {};
  for (const { user, page } of pages) {
    logs[user] = await page.evaluate(() => window.phone.log).catch(() => ["(page gone)"]);
  }
  say({ ok: false, error: String(e?.message ?? e), logs });
} finally {
  await browser.close();
  server.close();
}
process.exit(ok ? 0 : 1);
