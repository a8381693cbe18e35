// The chat page of `mm serve` in a real browser (Debian's headless Chromium driven by
// playwright-core): type a message, see the streamed reply with its reasoning folded into a
// collapsible block, then stop a long reply with the stop button. Keeps a screenshot.
//
// usage: node check_chat_page.mjs BASE_URL LONG_BASE_URL SCREENSHOT.png
//   BASE_URL serves a model that answers "1+1等于几？" with reasoning (CI trains one);
//   LONG_BASE_URL one whose greedy reply runs long (random weights never end their turn).
//   PLAYWRIGHT_CORE: the module path of playwright-core.
import assert from "node:assert/strict";

const { chromium } = await import(process.env.PLAYWRIGHT_CORE || "playwright-core");
const [base, longBase, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(base + "/");
  const setRange = (id, value) => page.evaluate(([id, value]) => {
    const el = document.getElementById(id);
    el.value = value;
    el.dispatchEvent(new Event("input"));
  }, [id, value]);
  await setRange("temperature", "0");
  await setRange("max_tokens", "64");

  // A reply with reasoning: streamed, then the reasoning folded away once the answer starts.
  await page.fill("#input", "1+1等于几？");
  await page.click("#send");
  await page.waitForFunction(() => {
    const bubbles = document.querySelectorAll(".assistant");
    const last = bubbles[bubbles.length - 1];
    return last && last.textContent.includes("1+1等于2") && !document.getElementById("send").disabled;
  }, null, { timeout: 120000 });
  const think = page.locator(".assistant details.think").last();
  assert.equal(await think.getAttribute("open"), null, "the reasoning block is not folded");
  assert.match(await think.locator("summary").textContent(), /Reasoning/);
  assert.match(await think.textContent(), /1加1/);
  const answer = await page.locator(".assistant").last().locator(":scope > p").first().textContent();
  assert.equal(answer.trim(), "1+1等于2。");

  await page.screenshot({ path: screenshot, fullPage: true });
  // The conversation is kept in the browser.
  await page.reload();
  assert.equal(await page.locator(".msg").count(), 2);

  // A long reply stopped with the stop button.
  const long = await browser.newPage();
  await long.goto(longBase + "/");
  await long.evaluate(() => {
    for (const [id, value] of [["temperature", "0"], ["max_tokens", "2048"]]) {
      const el = document.getElementById(id);
      el.value = value;
      el.dispatchEvent(new Event("input"));
    }
  });
  await long.fill("#input", "讲一个很长很长的故事。");
  await long.click("#send");
  await long.waitForFunction(() => {
    const a = document.querySelector(".assistant");
    return a && a.textContent.length > 20;
  }, null, { timeout: 120000 });
  await long.click("#stop");
  await long.waitForFunction(() => !document.getElementById("send").disabled, null, { timeout: 30000 });
  const stopped = await long.locator(".assistant").textContent();
  await long.waitForTimeout(1000);
  assert.equal(await long.locator(".assistant").textContent(), stopped, "the reply kept growing after stop");
  await long.waitForTimeout(2000);
  const metrics = await (await fetch(longBase + "/metrics")).text();
  console.log(metrics.split("\n").filter((l) => /^mm_(active|requests_cancelled|generation)/.test(l)).join("\n"));
  assert.match(metrics, /mm_requests_cancelled_total [1-9]/, "the server did not see the stop");
  console.log("chat page in Chromium: streamed reply, folded reasoning, stop button, conversation kept: ok");
} finally {
  await browser.close();
}
