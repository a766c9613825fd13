// Headless Chromium driver for tests/browser.rs: opens the gateway's two pages once, then
// answers the test's commands, one JSON object per line on stdin and stdout.
//
//   node pages.mjs --base http://127.0.0.1:PORT --facility ID --out DIR [--chromium PATH]
//
// Out:  {"type":"ready","leaderboard":VIEW,"board":VIEW}   both pages loaded and live
// In:   {"cmd":"expect","id":N,"timeout_ms":MS,"leaderboard":VIEW,"board":VIEW}
// Out:  {"type":"matched","id":N,"elapsed_ms":MS,"seen":{...}}  the pages (never reloaded)
//       {"type":"mismatch","id":N,"seen":{...},"problems":[...]} show VIEW, or not by then
// In:   {"cmd":"screenshot"}  ->  {"type":"screenshots","files":[...]}
// In:   {"cmd":"quit"}        ->  {"type":"bye"}, browser closed, exit 0
// Any failure of the driver itself: {"type":"error","message":...} and exit 1.
//
// A VIEW is what a person sees, read from the DOM: numbers are parsed from their en-IN
// text ("1,23,456"), so a wrongly formatted number shows up as the raw string.
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";

import { chromium } from "playwright-core";

function args() {
  const a = process.argv.slice(2);
  const out = {};
  for (let i = 0; i < a.length; i += 2) {
    if (!a[i].startsWith("--") || a[i + 1] === undefined) throw new Error(`bad argument ${a[i]}`);
    out[a[i].slice(2)] = a[i + 1];
  }
  for (const k of ["base", "facility", "out"]) if (!out[k]) throw new Error(`--${k} is required`);
  return out;
}

const send = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");
const log = (...m) => process.stderr.write(`[pages.mjs] ${m.join(" ")}\n`);

// Runs in the page: what the national leaderboard shows right now.
function readLeaderboard() {
  const text = (sel) => document.querySelector(sel)?.textContent.trim() ?? null;
  const number = (s) => {
    if (s === null) return null;
    // en-IN grouping: the last three digits, then pairs (12,34,567).
    if (/^\d{1,3}$/.test(s) || /^\d{1,2}(,\d{2})*,\d{3}$/.test(s)) return Number(s.replaceAll(",", ""));
    return s;
  };
  const rows = (id) =>
    [...document.querySelectorAll(`#${id} tr`)].map((tr) => ({
      id: tr.dataset.id,
      name: tr.children[1]?.textContent.trim(),
      tokens: number(tr.querySelector("td.tokens")?.textContent.trim() ?? null),
    }));
  const kinds = {};
  for (const d of document.querySelectorAll("#kinds [data-kind]")) kinds[d.dataset.kind] = number(d.querySelector("b").textContent.trim());
  return {
    loaded: window.__scangwLoaded ?? null,
    live: document.getElementById("live").classList.contains("on"),
    date: text("#date"),
    total_today: number(text("#total-today")),
    total_all: number(text("#total-all")),
    states: rows("states"),
    districts: rows("districts"),
    facilities: rows("facilities"),
    kinds,
  };
}

// Runs in the page: what the display board shows right now.
function readBoard() {
  const list = (el) => (el?.dataset.tokens ? el.dataset.tokens.split(",") : []);
  return {
    loaded: window.__scangwLoaded ?? null,
    name: document.getElementById("name").textContent.trim(),
    live: document.getElementById("live").textContent.trim(),
    counters: [...document.querySelectorAll("section.counter")].map((c) => ({
      counter: c.dataset.counter,
      serving: list(c.querySelector(".serving")),
      serving_text: c.querySelector(".serving")?.textContent.trim(),
      next: list(c.querySelector(".next")),
      waiting: Number(c.querySelector(".waiting")?.dataset.waiting),
    })),
  };
}

/// Differences between what a page shows and what the test expects, as readable lines.
function problems(page, seen, want, marker) {
  const out = [];
  if (seen.loaded !== marker) out.push(`${page}: the page was reloaded or replaced (marker ${seen.loaded} != ${marker})`);
  for (const [k, v] of Object.entries(want)) {
    if (!isDeepStrictEqual(seen[k], v)) out.push(`${page}.${k}: shows ${JSON.stringify(seen[k])}, API says ${JSON.stringify(v)}`);
  }
  return out;
}

async function main() {
  const opt = args();
  mkdirSync(opt.out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: opt.chromium ?? "/usr/bin/chromium",
    headless: true,
    // The tests run as root, where Chromium's sandbox cannot start.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    timeout: 60_000,
  });
  const errors = [];
  const open = async (path, width, height) => {
    const ctx = await browser.newContext({ viewport: { width, height }, locale: "en-IN", timezoneId: "Asia/Kolkata" });
    const page = await ctx.newPage();
    page.on("pageerror", (e) => errors.push(`${path}: uncaught ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`${path}: console error: ${m.text()}`);
    });
    const resp = await page.goto(opt.base + path, { waitUntil: "load", timeout: 30_000 });
    if (!resp || resp.status() !== 200) throw new Error(`GET ${path}: status ${resp?.status()}`);
    return page;
  };
  const lb = await open("/leaderboard", 1366, 768);
  const board = await open(`/facilities/${encodeURIComponent(opt.facility)}/board`, 1920, 1080);
  // The first SSE event renders the page; after that it must update itself.
  await lb.waitForFunction(() => document.getElementById("live").classList.contains("on"), null, { timeout: 30_000 });
  await board.waitForFunction(() => document.querySelectorAll("section.counter").length > 0, null, { timeout: 30_000 });
  // A marker in each window: if it is gone later, the page was reloaded, not updated live.
  const marker = `${process.pid}-${Date.now()}`;
  for (const p of [lb, board]) await p.evaluate((m) => (window.__scangwLoaded = m), marker);
  const seen = async () => ({ leaderboard: await lb.evaluate(readLeaderboard), board: await board.evaluate(readBoard) });
  send({ type: "ready", ...(await seen()) });

  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    if (cmd.cmd === "expect") {
      const started = Date.now();
      const deadline = started + (cmd.timeout_ms ?? 20_000);
      for (;;) {
        const now = await seen();
        const found = [
          ...problems("leaderboard", now.leaderboard, cmd.leaderboard ?? {}, marker),
          ...problems("board", now.board, cmd.board ?? {}, marker),
          ...errors,
        ];
        if (found.length === 0) {
          send({ type: "matched", id: cmd.id, elapsed_ms: Date.now() - started, seen: now });
          break;
        }
        if (Date.now() > deadline || errors.length > 0) {
          send({ type: "mismatch", id: cmd.id, seen: now, problems: found });
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    } else if (cmd.cmd === "screenshot") {
      const files = [join(opt.out, "leaderboard.png"), join(opt.out, "board.png")];
      await lb.screenshot({ path: files[0] });
      await board.screenshot({ path: files[1] });
      send({ type: "screenshots", files });
    } else if (cmd.cmd === "quit") {
      break;
    } else {
      throw new Error(`unknown command ${line}`);
    }
  }
  await browser.close();
  send({ type: "bye" });
}

main().catch((e) => {
  log(e.stack ?? String(e));
  send({ type: "error", message: String(e.message ?? e) });
  process.exit(1);
});
