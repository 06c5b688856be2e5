// The operator dashboard: polls the line, the batches and the cabinets every 1.5 s and redraws.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const POLL_MS = 1500;
  const notice = $("notice"), error = $("error");

  function fmtEta(s) {
    if (s === null || s === undefined) return "–";
    if (s < 90) return `${Math.round(s)} s`;
    return `${Math.round(s / 60)} min`;
  }

  function renderLine(line) {
    perso.text($("t-state"), line.state + (line.error ? " (error)" : ""));
    perso.text($("t-passed"), `${line.passed} / ${line.requested}`);
    perso.text($("t-spoiled"), line.spoiled);
    const rate = line.history.length ? line.history[line.history.length - 1].cards_per_hour : line.cards_per_hour;
    perso.text($("t-rate"), Math.round(rate).toLocaleString());
    perso.text($("t-stations"), line.in_stations);
    perso.text($("t-waiting"), line.waiting);
    perso.text($("t-eta"), line.state === "running" ? fmtEta(line.eta_s) : "–");
    const bar = $("progress");
    bar.max = Math.max(line.requested, 1);
    bar.value = line.passed;
    const stations = $("stations");
    perso.clear(stations);
    if (!line.stations.length) {
      const tr = stations.insertRow();
      perso.cell(tr, "The line is not running.").colSpan = 4;
    }
    for (const s of line.stations) {
      const tr = stations.insertRow();
      perso.cell(tr, s.name);
      perso.cell(tr, s.kind);
      perso.cell(tr, s.busy ? "busy" : "idle", s.busy ? "busy" : "idle");
      perso.cell(tr, s.cards, "num");
    }
    const queues = $("queues");
    perso.clear(queues);
    for (const [name, depth] of Object.entries(line.queues)) {
      const li = document.createElement("li");
      li.textContent = `${name.replace("_", " ")}: ${depth}`;
      queues.appendChild(li);
    }
    const rejects = $("rejects");
    perso.clear(rejects);
    const entries = Object.entries(line.rejects);
    if (!entries.length) {
      const li = document.createElement("li");
      li.textContent = "None.";
      rejects.appendChild(li);
    }
    for (const [reason, n] of entries) {
      const li = document.createElement("li");
      li.textContent = `${reason}: ${n}`;
      rejects.appendChild(li);
    }
    persoChart.draw($("chart"), line.history);
  }

  function renderBatches(rows) {
    const body = $("batches");
    perso.clear(body);
    if (!rows.length) {
      const tr = body.insertRow();
      perso.cell(tr, "No batches.").colSpan = 5;
    }
    for (const b of rows) {
      const tr = body.insertRow();
      perso.cell(tr, b.batch_id);
      perso.cell(tr, b.office);
      perso.cell(tr, b.due_date);
      perso.cell(tr, b.total, "num");
      perso.cell(tr, Object.entries(b.counts).map(([s, n]) => `${s.toLowerCase()} ${n}`).join(", "));
    }
  }

  function renderCabinets(status) {
    const body = $("cabinets");
    if (!body) return;
    perso.clear(body);
    for (const c of status.cabinets) {
      const tr = body.insertRow();
      perso.cell(tr, c.cabinet);
      perso.cell(tr, c.office);
      perso.cell(tr, c.online === true ? "online" : c.online === false ? "OFFLINE" : "–", c.online === false ? "alert" : "");
      perso.cell(tr, c.slots, "num");
      perso.cell(tr, Object.entries(c.occupancy).map(([s, n]) => `${s.toLowerCase()} ${n}`).join(", "));
      perso.cell(tr, c.open_discrepancies, "num");
    }
  }

  async function poll() {
    try {
      const line = await perso.get("/api/line");
      renderLine(line);
      renderBatches(await perso.get("/api/batches"));
      if ($("cabinets")) renderCabinets(await perso.get("/api/cabinet/status"));
    } catch (e) {
      if (e.status !== 401) perso.text(error, `Could not refresh (${e.code}).`);
      return;
    }
    perso.text(error, "");
  }

  const ACTIONS = {
    async plan() {
      const today = new Date().toISOString().slice(0, 10);
      const planned = await perso.post("/api/batches/plan", { today });
      if (!planned.batches.length) return "Nothing approved to plan.";
      const started = await perso.post("/api/batches/start", { today, all: true });
      const cards = Object.values(started.queued).reduce((a, b) => a + b, 0);
      return `Queued ${cards} cards in ${Object.keys(started.queued).length} batches.`;
    },
    async start() { return `Line ${(await perso.post("/api/line/start", { follow: true })).state}.`; },
    async pause() { return `Line ${(await perso.post("/api/line/pause")).state}.`; },
    async resume() { return `Line ${(await perso.post("/api/line/resume")).state}.`; },
    async drain() { return `Line ${(await perso.post("/api/line/drain")).state}.`; },
    async stop() { return `Line ${(await perso.post("/api/line/stop")).state}.`; },
  };

  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      perso.text(error, "");
      try {
        perso.text(notice, await ACTIONS[button.dataset.action]());
      } catch (e) {
        perso.text(error, `Refused (${e.code}).`);
      } finally {
        button.disabled = false;
        poll();
      }
    });
  }

  poll();
  setInterval(poll, POLL_MS);
})();
