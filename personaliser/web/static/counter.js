// The counter page: scan (or type) the receipt, compare the portrait, retrieve, watch the slot.
// A barcode scanner types the receipt and Enter into the focused field; everything else works
// with Tab, Enter, Space and Esc.  Personal data shown here is dropped from the page as soon as
// the card is taken or the hand-over cancelled.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const scan = $("scan"), receiptInput = $("receipt"), findButton = $("find");
  const card = $("card"), portrait = $("portrait"), retrieveButton = $("retrieve");
  const cancelButton = $("cancel"), nextButton = $("next");
  const status = $("status"), error = $("error");
  let current = null; // {applicationId, receipt, cabinet, slot}
  let busy = false;

  const MESSAGES = {
    not_found: "No card for this receipt at your office.",
    other_office: "This card is held at another office. Nothing was opened.",
    wrong_receipt: "The receipt does not match this card. Nothing was opened.",
    card_issued: "This card has already been handed over.",
    card_returned: "This card was returned uncollected.",
    card_retrieving: "This card's slot is already open.",
    validation: "That is not a receipt number.",
    role: "Your role may not retrieve cards.",
    cabinet_offline: "The cabinet is offline. Nothing was opened.",
    cabinet_timeout: "The cabinet did not answer. Ask a supervisor.",
    personal_data_purged: "This card's data is no longer held.",
    csrf: "Your session is out of date. Reload the page.",
    network: "The service cannot be reached.",
  };
  const OUTCOMES = {
    issued: (s) => `Slot ${s} opened… card taken. Hand the card to the applicant.`,
    not_taken: (s) => `Slot ${s}: the door closed with the card still inside.`,
    refused: (s) => `The cabinet refused to open slot ${s}.`,
    discrepancy: (s) => `Slot ${s}: the cabinet reported a discrepancy. Call a supervisor.`,
    pending: (s) => `Slot ${s} is still open. Waiting for the card to be taken.`,
  };

  function say(text) { perso.text(status, text); }
  function fail(code) { perso.text(error, MESSAGES[code] || `Refused (${code}).`); }

  function forget() {
    // Drop the applicant's data from the page.
    current = null;
    portrait.removeAttribute("src");
    for (const id of ["name", "chinese-name", "application", "place"]) perso.text($(id), "");
    card.hidden = true;
  }

  function ready(message) {
    forget();
    busy = false;
    receiptInput.value = "";
    receiptInput.disabled = false;
    findButton.disabled = false;
    nextButton.hidden = true;
    if (message !== undefined) say(message);
    receiptInput.focus();
  }

  scan.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy) return;
    const receipt = receiptInput.value.trim();
    if (!receipt) return;
    perso.text(error, "");
    forget();
    busy = true;
    findButton.disabled = true;
    say("Looking for the card…");
    try {
      const found = await perso.post("/api/cabinet/handover", { receipt });
      current = { applicationId: found.application_id, receipt, cabinet: found.cabinet, slot: found.slot };
      portrait.src = found.portrait;
      perso.text($("name"), `${found.surname}, ${found.given_names}`.replace(/, $/, ""));
      perso.text($("chinese-name"), found.chinese_name || "–");
      perso.text($("application"), found.application_id);
      perso.text($("place"), `${found.cabinet}, slot ${found.slot}`);
      card.hidden = false;
      receiptInput.disabled = true;
      say(`Card found in cabinet ${found.cabinet}, slot ${found.slot}. Compare the portrait, then retrieve.`);
      retrieveButton.disabled = false;
      retrieveButton.focus();
    } catch (e) {
      busy = false;
      findButton.disabled = false;
      say("Ready for the next applicant.");
      fail(e.code);
      receiptInput.select();
    }
  });

  async function watch(applicationId, slot, stopped) {
    // Live status while the retrieval request is open: opening -> opened -> taken.
    const seen = new Set();
    while (!stopped.done) {
      try {
        const p = await perso.get(`/api/cabinet/retrievals/${encodeURIComponent(applicationId)}`);
        if (stopped.done) return;
        if (p.phase === "opening" && !seen.has("opening")) say(`Slot ${slot} opening…`);
        if (p.phase === "opened" && !seen.has("opened")) say(`Slot ${slot} opened… take the card.`);
        seen.add(p.phase);
      } catch (e) {
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  retrieveButton.addEventListener("click", async () => {
    if (!current || retrieveButton.disabled) return;
    const { applicationId, receipt, slot } = current;
    retrieveButton.disabled = true;
    perso.text(error, "");
    say(`Slot ${slot} opening…`);
    const stopped = { done: false };
    watch(applicationId, slot, stopped);
    try {
      const result = await perso.post("/api/cabinet/retrieve", { application_id: applicationId, receipt });
      stopped.done = true;
      const message = (OUTCOMES[result.outcome] || ((s) => `Slot ${s}: ${result.outcome}.`))(result.slot);
      forget();
      receiptInput.value = "";
      say(message);
      nextButton.hidden = false;
      nextButton.focus();
    } catch (e) {
      stopped.done = true;
      fail(e.code);
      say("Nothing was opened.");
      retrieveButton.disabled = false;
      retrieveButton.focus();
    }
  });

  cancelButton.addEventListener("click", () => ready("Cancelled. Ready for the next applicant."));
  nextButton.addEventListener("click", () => ready("Ready for the next applicant."));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !card.hidden && !retrieveButton.disabled) {
      ready("Cancelled. Ready for the next applicant.");
    }
  });
})();
