// The customer portal in a real browser (SPEC §11): Debian's chromium,
// driven by playwright-core, against the real API and delivery worker on a
// fresh database, a queue of the SQS emulator and a webhook receiver on
// loopback. Run by tests/portal/run (part of scripts/test).
//
// Takes screenshots of the main screens (docs/portal/ with
// UPDATE_SCREENSHOTS=1) and prints the page's transfer size and time to
// first render.

import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import { mkdirSync } from "node:fs";
import { randomBytes } from "node:crypto";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const ROOT = new URL("../../", import.meta.url).pathname;
const BIN = `${process.env.CARGO_TARGET_DIR}/debug`;
// The README's screenshots are refreshed with UPDATE_SCREENSHOTS=1; otherwise
// they go beside the build, so a test run leaves the checkout unchanged.
const SHOTS = process.env.UPDATE_SCREENSHOTS === "1"
  ? `${ROOT}docs/portal`
  : `${process.env.CARGO_TARGET_DIR}/portal-screenshots`;
const ADMIN = "portal-test-admin-token-0123456789";
const AWS = process.env.AWS_ENDPOINT_URL;
const MYSQL = ["--host=127.0.0.1", "--user=root"];
const children = [];
let dbName;
let current; // the page in use, for a screenshot if the journey fails

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...a) => console.log("portal:", ...a);

function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function until(what, check, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch {
      /* not yet */
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

function run(name, env) {
  const child = spawn(`${BIN}/${name}`, name === "mechanica-api" ? ["serve"] : [], {
    env: { ...process.env, ...env, LOG_FORMAT: "json", RUST_LOG: "warn" },
    stdio: ["ignore", "ignore", "inherit"],
  });
  children.push(child);
  return child;
}

async function sqs(target, body) {
  const res = await fetch(`${AWS}/`, {
    method: "POST",
    headers: { "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": `AmazonSQS.${target}` },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `${target}: ${text}`);
  return JSON.parse(text);
}

// ---------- a webhook receiver ----------

const received = [];
let flakyUp = false;
const receiver = createServer((req, res) => {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    received.push({ path: req.url, headers: req.headers, body });
    const ok = req.url === "/ok" || (req.url === "/flaky" && flakyUp);
    res.writeHead(ok ? 200 : 500, { "Content-Type": "text/plain" });
    res.end(ok ? "thanks" : "receiver is down for maintenance");
  });
});

// ---------- the system ----------

async function start() {
  dbName = `mechanica_test_portal_${randomBytes(4).toString("hex")}`;
  const { QueueUrl: queue } = await sqs("CreateQueue", { QueueName: `portal-${randomBytes(4).toString("hex")}` });
  const port = await freePort();
  const api = `http://127.0.0.1:${port}`;
  const common = {
    DATABASE_URL: `mysql://root@127.0.0.1:3306/${dbName}`,
    SQS_QUEUE_URL: queue,
    WEBHOOK_ALLOW_PRIVATE_NETWORKS: "true",
  };
  run("mechanica-api", { ...common, BIND_ADDR: `127.0.0.1:${port}`, ADMIN_TOKEN: ADMIN });
  await until("the API", async () => (await fetch(`${api}/readyz`)).ok);
  run("mechanica-delivery", { ...common, DELIVERY_METRICS_ADDR: "127.0.0.1:0", WEBHOOK_RETRY_SCHEDULE: "1s" });
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  return { api, hooks: `http://127.0.0.1:${receiver.address().port}` };
}

async function admin(api, method, path, body) {
  const res = await fetch(`${api}${path}`, {
    method,
    headers: { Authorization: `Bearer ${ADMIN}`, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// ---------- checks on a page ----------

/// Every control has a name; every input, select and textarea a label.
async function accessible(page, screen) {
  const problems = await page.evaluate(() => {
    const out = [];
    const visible = (el) => el.offsetParent !== null || el.getClientRects().length > 0;
    for (const el of document.querySelectorAll("input, select, textarea")) {
      if (!visible(el) || el.type === "hidden") continue;
      const labelled = el.labels?.length || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
      if (!labelled) out.push(`unlabelled ${el.tagName.toLowerCase()}#${el.id}`);
    }
    for (const el of document.querySelectorAll("button, a[href]")) {
      if (!visible(el)) continue;
      const name = (el.getAttribute("aria-label") || el.textContent || "").trim();
      if (!name) out.push(`nameless ${el.tagName.toLowerCase()} ${el.outerHTML.slice(0, 80)}`);
    }
    if (!document.querySelector("h1")) out.push("no h1");
    if (!document.documentElement.lang) out.push("no lang");
    return out;
  });
  assert.deepEqual(problems, [], `${screen}: accessibility`);
}

/// Tab from the top reaches `names` (accessible names of controls).
async function reachableByKeyboard(page, names, screen) {
  await page.evaluate(() => document.activeElement?.blur());
  const seen = new Set();
  for (let i = 0; i < 80; i++) {
    await page.keyboard.press("Tab");
    const name = await page.evaluate(() => {
      const el = document.activeElement;
      return el ? (el.getAttribute("aria-label") || el.textContent || el.id || "").trim() : "";
    });
    seen.add(name);
  }
  for (const n of names) assert.ok(seen.has(n), `${screen}: "${n}" is not reachable by Tab (reached: ${[...seen].join(" | ")})`);
}

async function fitsWidth(page, screen) {
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, `${screen}: ${width}px wide at 360`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png` });
}

// ---------- the journey ----------

async function journey(browser, api, hooks) {
  const customer = await admin(api, "POST", "/v1/customers", { name: "Northwind Traders" });
  const session = await admin(api, "POST", `/v1/customers/${customer.id}/portal-sessions`, {});
  assert.match(session.url, /\/portal#token=mps_/);

  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  current = page;
  const requests = [];
  const consoleErrors = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));

  // Open the link: the token leaves the address bar at once.
  await page.goto(session.url);
  await page.getByRole("heading", { name: "Endpoints" }).waitFor();
  assert.ok(!page.url().includes("mps_"), `the token is still in the URL: ${page.url()}`);
  await page.getByText("No endpoints yet.").waitFor();
  const render = await page.evaluate(() => {
    const paint = performance.getEntriesByType("paint").find((p) => p.name === "first-contentful-paint");
    const bytes = performance.getEntriesByType("resource").reduce((n, r) => n + (r.initiatorType === "fetch" ? 0 : r.transferSize), 0)
      + performance.getEntriesByType("navigation")[0].transferSize;
    return { fcp: paint ? Math.round(paint.startTime) : null, bytes };
  });
  log(`first contentful paint ${render.fcp} ms, page transfer ${render.bytes} bytes (HTML, CSS, JS)`);
  await accessible(page, "endpoints (empty)");
  await reachableByKeyboard(page, ["Endpoints", "Event catalog", "Add endpoint"], "endpoints");

  // Create: a bad URL first, refused beside its field.
  await page.getByRole("link", { name: "Add endpoint" }).first().click();
  await page.getByRole("heading", { name: "Add endpoint" }).waitFor();
  await accessible(page, "create form");
  await page.getByLabel("URL").fill("ftp://nope");
  await page.getByRole("button", { name: "Create endpoint" }).click();
  const urlError = page.locator("#e-url");
  await urlError.waitFor({ state: "visible" });
  assert.match(await urlError.textContent(), /http/i);
  assert.equal(await page.getByLabel("URL").getAttribute("aria-invalid"), "true");
  await shot(page, "create-field-error");

  await page.getByLabel("URL").fill(`${hooks}/ok`);
  await page.getByLabel("Description (optional)").fill("Order updates for the warehouse");
  await page.getByLabel("order.status_changed").check();
  await page.getByLabel("order.tracking_updated").check();
  await page.getByLabel("delivery.failed").check();
  await page.getByLabel("delivered", { exact: true }).check();
  await page.getByLabel("exception", { exact: true }).check();
  await page.getByLabel(/Rate limit/).fill("5");
  await page.getByRole("button", { name: "Add header" }).click();
  await page.locator("#f-hname-0").fill("X-Partner-Id");
  await page.locator("#f-hvalue-0").fill("northwind-7");
  await page.getByRole("button", { name: "Create endpoint" }).click();
  await page.getByRole("heading", { name: `${hooks}/ok` }).waitFor();
  await page.getByText("5/s").waitFor();
  assert.equal(await page.locator("#event-types").textContent(), "order.status_changed, order.tracking_updated, delivery.failed");
  assert.equal(await page.locator("#statuses").textContent(), "delivered, exception");

  // A test event, seen to succeed in the delivery log, with its attempts.
  await page.getByRole("button", { name: "Send test event" }).click();
  await page.locator("#log .pill.ok", { hasText: "succeeded" }).first().waitFor({ timeout: 20000 });
  const hit = await until("the test webhook", () => received.find((r) => r.path === "/ok"));
  assert.equal(hit.headers["x-partner-id"], "northwind-7");
  assert.ok(hit.headers["webhook-signature"].startsWith("v1,"));
  await page.getByRole("button", { name: "Attempts" }).first().click();
  await page.locator(".attempts td", { hasText: "thanks" }).waitFor();
  await accessible(page, "endpoint detail");
  await reachableByKeyboard(page, ["Send test event", "Reveal secret", "Rotate secret", "Recover", "Edit", "Delete"], "detail");

  // Reveal, then rotate, the signing secret.
  await page.getByRole("button", { name: "Reveal secret" }).click();
  const first = await page.locator("#secret-value").textContent();
  assert.match(first, /^whsec_/);
  await page.getByRole("button", { name: "Rotate secret" }).click();
  await page.locator("#confirm-ok").click();
  await until("a new secret", async () => (await page.locator("#secret-value").textContent()) !== first);
  await shot(page, "endpoint-detail");

  // An event that fails, then a retry once the receiver is back.
  await page.getByRole("link", { name: "Edit" }).click();
  await page.getByRole("heading", { name: "Edit endpoint" }).waitFor();
  // The form shows what the endpoint receives, and saving keeps it.
  assert.ok(await page.getByLabel("order.tracking_updated").isChecked());
  assert.ok(!(await page.getByLabel("order.created").isChecked()));
  assert.ok(await page.getByLabel("delivery.failed").isChecked());
  assert.ok(await page.getByLabel("exception", { exact: true }).isChecked());
  assert.ok(!(await page.getByLabel("in transit", { exact: true }).isChecked()));
  await page.getByLabel("URL").fill(`${hooks}/flaky`);
  await page.getByRole("button", { name: "Save changes" }).click();
  await page.getByRole("heading", { name: `${hooks}/flaky` }).waitFor();
  assert.equal(await page.locator("#statuses").textContent(), "delivered, exception");
  await page.getByRole("button", { name: "Send test event" }).click();
  await until("a failed delivery", async () => {
    await page.getByRole("button", { name: "Refresh" }).click();
    await sleep(300);
    return (await page.locator("#log .pill.bad").count()) === 1;
  });
  await page.getByLabel("Status").selectOption("failed");
  await until("the log filtered to failed deliveries", async () =>
    (await page.locator("#log tr[data-delivery]").count()) === 1 && (await page.locator("#log .pill.ok").count()) === 0);
  await page.getByRole("button", { name: "Attempts" }).first().click();
  await page.locator(".attempts td", { hasText: "maintenance" }).first().waitFor();
  flakyUp = true;
  await page.getByRole("button", { name: "Retry" }).first().click();
  await page.getByLabel("Status").selectOption("");
  await until("the retried delivery to succeed", async () => {
    await page.getByRole("button", { name: "Refresh" }).click();
    await sleep(300);
    return (await page.locator("#log .pill.bad").count()) === 0 && (await page.locator("#log .pill.ok").count()) === 2;
  });

  // Recover: another failure, then every failed delivery since an hour ago.
  flakyUp = false;
  await page.getByRole("button", { name: "Send test event" }).click();
  await until("a second failed delivery", async () => {
    await page.getByRole("button", { name: "Refresh" }).click();
    await sleep(300);
    return (await page.locator("#log .pill.bad").count()) === 1;
  });
  flakyUp = true;
  const hourAgo = new Date(Date.now() - 3600e3 - new Date().getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
  await page.getByLabel("Failed since").fill(hourAgo);
  await page.getByRole("button", { name: "Recover", exact: true }).click();
  await page.getByText("1 failed delivery will be sent again.").waitFor();
  await until("the recovered delivery to succeed", async () => {
    await page.getByRole("button", { name: "Refresh" }).click();
    await sleep(300);
    return (await page.locator("#log .pill.bad").count()) === 0 && (await page.locator("#log .pill.ok").count()) === 3;
  });

  // The list, with the endpoint's health, and the catalog.
  await page.getByRole("link", { name: "Endpoints", exact: true }).click();
  await page.getByRole("heading", { name: "Endpoints" }).waitFor();
  await page.locator("td", { hasText: "%" }).first().waitFor();
  await shot(page, "endpoints");
  await page.getByRole("link", { name: "Event catalog" }).click();
  await page.getByRole("heading", { name: "order.status_changed" }).waitFor();
  assert.equal(await page.locator("main .card").count(), 7);
  await page.getByRole("heading", { name: "order.tracking_updated" }).waitFor();
  // Descriptions read as text: no Markdown left in them.
  for (const text of await page.locator("main .card > p").allTextContents()) assert.ok(!text.includes("`"), text);
  await accessible(page, "catalog");
  await shot(page, "catalog");

  // Narrow: a phone's 360 px.
  await page.setViewportSize({ width: 360, height: 740 });
  await page.getByRole("link", { name: "Endpoints", exact: true }).click();
  await page.locator("td", { hasText: "%" }).first().waitFor();
  await fitsWidth(page, "endpoints");
  await shot(page, "endpoints-360");
  await page.getByRole("link", { name: `${hooks}/flaky` }).click();
  await page.getByRole("heading", { name: `${hooks}/flaky` }).waitFor();
  await page.locator("#log tr[data-delivery]").first().waitFor();
  await fitsWidth(page, "detail");
  await shot(page, "endpoint-detail-360");

  // Delete, after a confirmation.
  await page.setViewportSize({ width: 1280, height: 860 });
  await page.getByRole("button", { name: "Delete" }).click();
  await page.locator("#confirm-ok").click();
  await page.getByText("No endpoints yet.").waitFor();

  const foreign = requests.filter((u) => !u.startsWith(api) && !u.startsWith("data:"));
  assert.deepEqual(foreign, [], "the page loads nothing from another origin");
  // The one refused request the journey makes on purpose: the bad URL's 422.
  const unexpected = consoleErrors.filter((e) => !/status of 422/.test(e));
  assert.deepEqual(unexpected, [], "no errors in the console (CSP violations included)");
  await context.close();
  return customer;
}

async function readOnly(browser, api, hooks, customer) {
  await admin(api, "POST", "/v1/webhooks", { customer_id: customer.id, url: `${hooks}/ok` });
  const session = await admin(api, "POST", `/v1/customers/${customer.id}/portal-sessions`, { capabilities: [] });
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(session.url);
  await page.getByRole("heading", { name: "Endpoints" }).waitFor();
  await page.getByRole("link", { name: `${hooks}/ok` }).waitFor();
  assert.equal(await page.getByRole("link", { name: "Add endpoint" }).count(), 0, "no create without endpoints:write");
  await page.getByRole("link", { name: `${hooks}/ok` }).click();
  await page.getByRole("heading", { name: `${hooks}/ok` }).waitFor();
  await page.locator("#log").waitFor();
  for (const action of ["Edit", "Delete", "Send test event", "Reveal secret", "Rotate secret", "Recover"]) {
    assert.equal(await page.getByRole("button", { name: action, exact: true }).count()
      + await page.getByRole("link", { name: action, exact: true }).count(), 0, `"${action}" offered without its capability`);
  }
  await context.close();
}

// A proxy between the browser and the API answers an HTML error page: the
// portal says so in words, not with a JSON parser's SyntaxError.
async function proxyAnswersHtml(browser, api, customer) {
  const session = await admin(api, "POST", `/v1/customers/${customer.id}/portal-sessions`, {});
  const context = await browser.newContext();
  await context.route("**/v1/webhooks?*", (route) =>
    route.fulfill({ status: 502, contentType: "text/html", body: "<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>" }));
  const page = await context.newPage();
  await page.goto(session.url);
  const alert = page.getByRole("alert");
  await alert.waitFor();
  const text = await alert.innerText();
  assert.match(text, /502/, text);
  assert.match(text, /not from the API/, text);
  assert.doesNotMatch(text, /SyntaxError|Unexpected token|JSON/, text);
  await context.close();
}

async function expired(browser, api, customer) {
  const session = await admin(api, "POST", `/v1/customers/${customer.id}/portal-sessions`, { expires_in: 300 });
  execFileSync("mysql", [...MYSQL, dbName, "-e",
    `UPDATE portal_sessions SET expires_at = NOW(3) - INTERVAL 1 SECOND WHERE id = UNHEX(REPLACE('${session.id}', '-', ''))`]);
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  await page.goto(session.url);
  await page.getByRole("heading", { name: "This portal link has expired" }).waitFor();
  await accessible(page, "expired");
  await shot(page, "expired");
  await context.close();
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  const { api, hooks } = await start();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const customer = await journey(browser, api, hooks).catch(async (error) => {
      await current?.screenshot({ path: "/tmp/portal-failure.png" }).catch(() => {});
      console.error("the page:", await current?.locator("main").innerText().catch(() => "?"));
      throw error;
    });
    log("journey: create (field error, event types and statuses), test event, attempts, reveal, rotate, retry, recover, catalog, 360 px, delete: ok");
    await readOnly(browser, api, hooks, customer);
    log("a session without capabilities is offered no action: ok");
    await proxyAnswersHtml(browser, api, customer);
    log("an HTML answer from a proxy reads as words, not a SyntaxError: ok");
    await expired(browser, api, customer);
    log("an expired session shows its page: ok");
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (error) {
  console.error(error);
  process.exitCode = 1;
} finally {
  for (const child of children) child.kill("SIGTERM");
  receiver.close();
  await sleep(300);
  if (dbName) {
    try {
      execFileSync("mysql", [...MYSQL, "-e", `DROP DATABASE IF EXISTS \`${dbName}\``]);
    } catch {
      /* the next scripts/test run drops it */
    }
  }
}
