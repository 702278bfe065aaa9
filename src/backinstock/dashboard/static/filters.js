// The dashboard's filters: read from the form and the page's address, checked, and turned
// into the query of the /v1/stats/* requests. dashboard.js fetches and draws; this file
// decides what is asked for, so that no hand-edited address or odd input reaches the API
// as a request it must refuse. Defines the global BackinstockFilters.
(function () {
  "use strict";

  const DAY_MS = 86400000;
  const DEFAULT_PERIOD = "30";
  const SKU_PATTERN = /^[!-~]{1,128}$/; // as the API's
  const SEGMENT_PATTERN = /^[a-z0-9][a-z0-9_-]{0,63}$/; // as the API's

  function utcMidnight(date) {
    return new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
  }

  function fromDateInput(value) {
    return value ? new Date(value + "T00:00:00Z") : null;
  }

  // The period as [since, until): whole UTC days, today included.
  function period(form) {
    const choice = form.elements.period.value;
    const tomorrow = new Date(utcMidnight(new Date()).getTime() + DAY_MS);
    if (choice === "custom") {
      const since = fromDateInput(form.elements.since.value);
      const last = fromDateInput(form.elements.until.value);
      return { since: since, until: last ? new Date(last.getTime() + DAY_MS) : tomorrow };
    }
    return { since: new Date(tomorrow.getTime() - Number(choice) * DAY_MS), until: tomorrow };
  }

  // Filters the figures can be read for: a SKU the API could not hold is dropped, reversed
  // dates are swapped, a start in the future falls back to the default period. Returns what
  // was changed, for the page to say.
  function check(form) {
    const notes = [];
    const sku = form.elements.sku;
    if (sku.value.trim() && !SKU_PATTERN.test(sku.value.trim())) {
      notes.push("“" + sku.value.trim() + "” cannot be a SKU (SKUs are letters, digits and " +
        "punctuation, without spaces): showing all SKUs.");
      sku.value = "";
    }
    const segment = form.elements.segment;
    if (segment.value.trim() && !SEGMENT_PATTERN.test(segment.value.trim())) {
      notes.push("“" + segment.value.trim() + "” cannot be a segment (segments are lower-case " +
        "letters, digits, - and _): showing all segments.");
      segment.value = "";
    }
    if (form.elements.period.value !== "custom") return notes;
    const since = form.elements.since;
    const until = form.elements.until;
    if (since.value && until.value && since.value > until.value) {
      [since.value, until.value] = [until.value, since.value];
      notes.push("“From” was after “To”: the dates are swapped, " + since.value + " to " +
        until.value + ".");
    }
    const p = period(form);
    if (p.since && p.since.getTime() >= p.until.getTime()) {
      notes.push("“From” " + since.value + " is in the future: showing the last " +
        DEFAULT_PERIOD + " days instead.");
      form.elements.period.value = DEFAULT_PERIOD;
      showCustomDates(form);
    }
    return notes;
  }

  function current() {
    const form = document.getElementById("filters");
    const p = period(form);
    return {
      sku: form.elements.sku.value.trim(),
      channel: form.elements.channel.value,
      segment: form.elements.segment.value.trim(),
      since: p.since ? p.since.toISOString().replace(".000Z", "Z") : "",
      until: p.until ? p.until.toISOString().replace(".000Z", "Z") : "",
    };
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== "" && value !== null && value !== undefined) q.set(name, value);
    }
    return q.toString();
  }

  function hasOption(select, value) {
    return Array.from(select.options).some((option) => option.value === value);
  }

  // "7", "7d" or "7 days" for one of the periods offered; null for anything else.
  function periodChoice(select, text) {
    if (hasOption(select, text)) return text;
    const days = /^\s*(\d+)\s*(d|days?)?\s*$/i.exec(text);
    return days && hasOption(select, String(Number(days[1]))) ? String(Number(days[1])) : null;
  }

  // Filters live in the page's address too, so a view can be bookmarked or shared. An
  // address edited by hand may ask for what the form cannot show: the page then shows a
  // sensible view and says what it did, rather than asking the API for nonsense.
  function restore() {
    const form = document.getElementById("filters");
    const params = new URLSearchParams(window.location.search);
    const notes = [];
    if (params.has("sku")) form.elements.sku.value = params.get("sku").trim();
    if (params.has("segment")) form.elements.segment.value = params.get("segment").trim();
    const channel = params.get("channel");
    if (channel !== null && hasOption(form.elements.channel, channel)) {
      form.elements.channel.value = channel;
    } else if (channel !== null) {
      notes.push("There is no channel “" + channel + "”: showing all channels.");
    }
    const asked = params.get("period");
    const choice = asked === null ? null : periodChoice(form.elements.period, asked);
    if (choice !== null) form.elements.period.value = choice;
    if (asked !== null && choice === null) {
      notes.push("“" + asked + "” is not one of the periods: showing the last " +
        DEFAULT_PERIOD + " days.");
    } else if (asked !== null && choice !== asked) {
      notes.push("Period “" + asked + "” is read as the last " + choice + " days.");
    }
    for (const [name, label] of [["since", "From"], ["until", "To"]]) {
      const value = params.get(name);
      if (value === null || form.elements.period.value !== "custom") continue;
      form.elements[name].value = value;
      if (form.elements[name].value !== value) {
        notes.push("“" + value + "” is not a date (YYYY-MM-DD): no “" + label + "” date.");
      }
    }
    showCustomDates(form);
    return { notes: notes, interval: params.get("interval") === "hour" ? "hour" : "day" };
  }

  function remember(interval) {
    const form = document.getElementById("filters");
    const params = {
      sku: form.elements.sku.value.trim(),
      channel: form.elements.channel.value,
      segment: form.elements.segment.value.trim(),
      period: form.elements.period.value === "30" ? "" : form.elements.period.value,
      interval: interval === "day" ? "" : interval,
    };
    if (form.elements.period.value === "custom") {
      params.since = form.elements.since.value;
      params.until = form.elements.until.value;
    }
    const q = query(params);
    window.history.replaceState(null, "", window.location.pathname + (q ? "?" + q : ""));
  }

  function showCustomDates(form) {
    const custom = form.elements.period.value === "custom";
    for (const label of form.querySelectorAll(".custom-date")) label.hidden = !custom;
  }

  window.BackinstockFilters = {
    check: check,
    current: current,
    query: query,
    remember: remember,
    restore: restore,
    showCustomDates: showCustomDates,
  };
})();
