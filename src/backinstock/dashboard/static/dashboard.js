// The dashboard's charts. Every figure comes from the /v1/stats/* endpoints, read with the
// session cookie; this file only fetches, formats and draws. Chart is the global that
// vendor/chart.umd.js defines; BackinstockFilters is filters.js's.
(function () {
  "use strict";

  const CHANNELS = [
    ["sms", "SMS"],
    ["email", "Email"],
    ["wechat", "WeChat"],
  ];
  const FUNNEL_STEPS = [
    ["subscribed", "Subscribed"],
    ["notified", "Notified"],
    ["delivered", "Delivered"],
    ["clicked", "Clicked"],
    ["converted", "Converted"],
  ];
  const SERIES = [
    ["notified", "Notifications sent", "#2f6fde"],
    ["clicked", "Clicks", "#e8912d"],
    ["converted", "Conversions", "#2e9d5b"],
  ];
  const CHANNEL_COLORS = { sms: "#2f6fde", email: "#e8912d", wechat: "#2e9d5b" };
  const FUNNEL_COLOR = "#2f6fde";
  const DAY_MS = 86400000;
  const HOUR_MS = 3600000;
  const DEMAND_PAGE = 50;
  const SEGMENT_PAGE = 100;

  const HOURLY_SPAN_MS = 48 * HOUR_MS;
  const Filters = window.BackinstockFilters;
  const query = Filters.query;

  const state = {
    interval: "day",
    demandCursor: null,
    demandRank: 0,
    demandSegment: "",
    currency: null,
    segmentFilters: null,
    segmentCursor: null,
  };
  const numberFormat = new Intl.NumberFormat(undefined);
  const percentFormat = new Intl.NumberFormat(undefined, {
    style: "percent",
    maximumFractionDigits: 1,
  });

  // ---- formatting -------------------------------------------------------------------------

  function count(value) {
    return value === null || value === undefined ? "–" : numberFormat.format(Number(value));
  }

  function percent(value) {
    return value === null || value === undefined ? "–" : percentFormat.format(Number(value));
  }

  function money(amount, currency) {
    if (amount === null || amount === undefined) return "–";
    if (!currency) return numberFormat.format(Number(amount));
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: currency }).format(
        Number(amount),
      );
    } catch (_) {
      return amount + " " + currency;
    }
  }

  // Revenue in its currency; several currencies are listed, never added up. A funnel without
  // revenue has no currency of its own, so it borrows the overall one (0.00 rather than 0).
  function revenueText(funnel, fallbackCurrency) {
    const parts = Object.entries(funnel.revenue_by_currency || {});
    if (parts.length > 1) return parts.map(([cur, amount]) => money(amount, cur)).join(" + ");
    return money(funnel.revenue, funnel.currency || fallbackCurrency || null);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (Number(seconds) < 1) return "under 1 s";
    let s = Math.round(Number(seconds));
    if (s < 60) return s + " s";
    const units = [
      [86400, "d"],
      [3600, "h"],
      [60, "min"],
      [1, "s"],
    ];
    const parts = [];
    for (const [size, unit] of units) {
      if (s >= size && parts.length < 2) {
        parts.push(Math.floor(s / size) + " " + unit);
        s %= size;
      }
    }
    return parts.join(" ");
  }

  // Short enough for a table column: the year only when it is not this year (the full
  // instant is in the cell's title).
  function dateTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return d.toLocaleString(undefined, {
      year: d.getFullYear() === new Date().getFullYear() ? undefined : "numeric",
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
    });
  }

  function bucketLabel(iso, interval) {
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    const day = d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
    return interval === "hour" ? day + " " + pad(d.getUTCHours()) + ":00" : day;
  }

  // ---- filters (filters.js decides what is asked for) -----------------------------------

  function describeScope(f) {
    const channel = CHANNELS.find(([value]) => value === f.channel);
    const sku = f.sku ? "SKU " + f.sku : "all SKUs";
    const scope = sku + ", " + (channel ? channel[1] + " only" : "all channels");
    return f.segment ? scope + ", segment " + f.segment : scope;
  }

  function describePeriod(f) {
    if (!f.since) return "since the start";
    const last = new Date(new Date(f.until).getTime() - DAY_MS);
    return "from " + bucketLabel(f.since, "day") + " to " + bucketLabel(last, "day") + " (UTC)";
  }

  function showNotice(notes) {
    const notice = document.getElementById("notice");
    notice.textContent = notes.join(" ");
    notice.hidden = notes.length === 0;
  }

  // ---- fetching ---------------------------------------------------------------------------

  async function getJSON(path, params) {
    const response = await fetch(path + "?" + query(params), {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (response.status === 401) {
      window.location.assign("/dashboard/login");
      throw new Error("The session has ended; sign in again.");
    }
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try {
        const body = await response.json();
        if (body && body.error && body.error.message) message = body.error.message;
      } catch (_) {
        // not the error shape: keep the status line
      }
      throw new Error(path + ": " + message);
    }
    return response.json();
  }

  function csvHref(path, params) {
    return path + "?" + query({ ...params, format: "csv" });
  }

  // ---- drawing ----------------------------------------------------------------------------

  function draw(id, config) {
    const canvas = document.getElementById(id);
    const previous = Chart.getChart(canvas);
    if (previous) previous.destroy();
    return new Chart(canvas, config);
  }

  function axisTitle(text) {
    return { display: true, text: text };
  }

  function barOptions(yTitle, extra) {
    return {
      plugins: { legend: { display: false } },
      scales: {
        y: { beginAtZero: true, title: axisTitle(yTitle), ticks: { precision: 0 } },
      },
      ...extra,
    };
  }

  function setFigures(container, values) {
    for (const dd of container.querySelectorAll("dd[data-figure]")) {
      const name = dd.dataset.figure;
      if (name in values) dd.textContent = values[name];
    }
  }

  function cell(row, text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    row.appendChild(td);
    return td;
  }

  // The narrow layout shows each row as a list of "column: value" lines.
  function labelCells(table) {
    const names = Array.from(table.tHead.rows[0].cells, (th) => th.textContent.trim());
    for (const row of table.tBodies[0].rows) {
      Array.from(row.cells).forEach((cell, i) => {
        if (cell.colSpan === 1) cell.dataset.label = names[i];
      });
    }
  }

  function emptyRow(tbody, columns, text) {
    const row = document.createElement("tr");
    const td = cell(row, text, false);
    td.colSpan = columns;
    td.className = "empty";
    tbody.appendChild(row);
  }

  // ---- sections ---------------------------------------------------------------------------

  // The figures' query for the filters: every endpoint narrows by all of them.
  function scoped(f) {
    return { sku: f.sku, channel: f.channel, segment: f.segment, since: f.since, until: f.until };
  }

  async function loadFunnel(f) {
    const params = scoped(f);
    const funnel = await getJSON("/v1/stats/funnel", params);
    state.currency = funnel.currency;
    document.getElementById("csv-funnel").href = csvHref("/v1/stats/funnel", params);
    for (const el of document.querySelectorAll("#funnel .scope")) el.textContent = describeScope(f);
    for (const el of document.querySelectorAll("#funnel .period")) {
      el.textContent = describePeriod(f);
    }
    setFigures(document.getElementById("funnel-figures"), {
      subscribed: count(funnel.subscribed),
      waiting: count(funnel.waiting),
      notified: count(funnel.notified),
      delivered: count(funnel.delivered),
      failed: count(funnel.failed),
      clicked: count(funnel.clicked),
      converted: count(funnel.converted),
      revenue: revenueText(funnel),
      click_rate: percent(funnel.click_rate),
      conversion_rate: percent(funnel.conversion_rate),
      median_seconds_restock_to_send: duration(funnel.median_seconds_restock_to_send),
    });
    const subscribed = Number(funnel.subscribed) || 0;
    draw("chart-funnel", {
      type: "bar",
      data: {
        labels: FUNNEL_STEPS.map(([, label]) => label),
        datasets: [
          {
            label: "Count",
            data: FUNNEL_STEPS.map(([key]) => Number(funnel[key]) || 0),
            backgroundColor: FUNNEL_COLOR,
          },
        ],
      },
      options: barOptions("shoppers / messages", {
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              afterLabel: (item) =>
                subscribed ? percentFormat.format(item.raw / subscribed) + " of subscribed" : "",
            },
          },
        },
      }),
    });
    loadCoupons(funnel);
    loadSoldOut(funnel);
    loadHolds(funnel);
  }

  // Units held for told shoppers: how many, and what became of them.
  function loadHolds(funnel) {
    const placed = Number(funnel.holds_placed) || 0;
    const consumed = Number(funnel.holds_consumed) || 0;
    setFigures(document.getElementById("hold-figures"), {
      holds_placed: count(placed),
      holds_consumed: count(consumed),
      holds_expired: count(funnel.holds_expired),
      hold_rate: placed ? percentFormat.format(consumed / placed) : "–",
    });
  }

  async function loadChannels(f) {
    const base = { sku: f.sku, segment: f.segment, since: f.since, until: f.until };
    const funnels = await Promise.all(
      CHANNELS.map(([channel]) => getJSON("/v1/stats/funnel", { ...base, channel: channel })),
    );
    for (const link of document.querySelectorAll("#channels a[data-channel]")) {
      link.href = csvHref("/v1/stats/funnel", { ...base, channel: link.dataset.channel });
    }
    draw("chart-channels", {
      type: "bar",
      data: {
        labels: FUNNEL_STEPS.map(([, label]) => label),
        datasets: CHANNELS.map(([channel, label], i) => ({
          label: label,
          data: FUNNEL_STEPS.map(([key]) => Number(funnels[i][key]) || 0),
          backgroundColor: CHANNEL_COLORS[channel],
        })),
      },
      options: barOptions("shoppers / messages", { plugins: { legend: { position: "bottom" } } }),
    });
    const tbody = document.querySelector("#channel-table tbody");
    tbody.replaceChildren();
    CHANNELS.forEach(([, label], i) => {
      const funnel = funnels[i];
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = label;
      row.appendChild(th);
      for (const key of ["subscribed", "notified", "delivered", "failed", "clicked", "converted"]) {
        cell(row, count(funnel[key]), true);
      }
      cell(row, percent(funnel.click_rate), true);
      cell(row, percent(funnel.conversion_rate), true);
      cell(row, revenueText(funnel, state.currency), true).classList.add("money");
      tbody.appendChild(row);
    });
    labelCells(document.getElementById("channel-table"));
  }

  function timeseriesWindow(f) {
    if (state.interval !== "hour") return { since: f.since, until: f.until };
    // Hourly buckets: at most the last 48 hours of the period, and none in the future.
    const nextHour = Math.ceil(Date.now() / HOUR_MS) * HOUR_MS;
    const until = Math.min(new Date(f.until).getTime(), nextHour);
    const since = Math.max(f.since ? new Date(f.since).getTime() : 0, until - HOURLY_SPAN_MS);
    const iso = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");
    return { since: iso(since), until: iso(until) };
  }

  // A period longer than the data would open on a long flat line (a fresh instance: 29 empty
  // days and a spike). The chart starts one bucket before the first with any activity, so
  // the rise shows; a period with no activity at all is shown whole.
  function chartStart(results) {
    const buckets = results[0].points.length;
    for (let i = 0; i < buckets; i += 1) {
      if (results.some((r) => r.points[i] && Number(r.points[i].value) > 0)) {
        return Math.max(0, i - 1);
      }
    }
    return 0;
  }

  async function loadTimeseries(f) {
    const span = timeseriesWindow(f);
    const base = {
      interval: state.interval,
      sku: f.sku,
      channel: f.channel,
      segment: f.segment,
      since: span.since,
      until: span.until,
    };
    const results = await Promise.all(
      SERIES.map(([metric]) => getJSON("/v1/stats/timeseries", { ...base, metric: metric })),
    );
    for (const link of document.querySelectorAll("#timeseries a[data-metric]")) {
      link.href = csvHref("/v1/stats/timeseries", { ...base, metric: link.dataset.metric });
    }
    const sectionLinks = "#coupons a[data-metric], #soldout a[data-metric]";
    for (const link of document.querySelectorAll(sectionLinks)) {
      link.href = csvHref("/v1/stats/timeseries", { ...base, metric: link.dataset.metric });
    }
    const unit = state.interval === "hour" ? "per hour" : "per day";
    document.querySelector("#timeseries .interval-label").textContent = unit;
    document.querySelector("#timeseries .hour-note").hidden = state.interval !== "hour";
    for (const button of document.querySelectorAll("#timeseries [data-interval]")) {
      button.setAttribute("aria-pressed", String(button.dataset.interval === state.interval));
    }
    const start = chartStart(results);
    const points = results.map((r) => r.points.slice(start));
    const note = document.querySelector("#timeseries .start-note");
    note.hidden = start === 0;
    note.textContent = start
      ? "It starts just before the first activity of the period, " +
        bucketLabel(points[0][1].t, state.interval) + "."
      : "";
    draw("chart-timeseries", {
      type: "line",
      data: {
        labels: points[0].map((p) => bucketLabel(p.t, state.interval)),
        datasets: SERIES.map(([, label, color], i) => ({
          label: label,
          data: points[i].map((p) => Number(p.value) || 0),
          borderColor: color,
          backgroundColor: color,
          tension: 0.2,
          pointRadius: points[i].length > 60 ? 0 : 3,
        })),
      },
      options: {
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom" } },
        scales: {
          x: {
            title: axisTitle(state.interval === "hour" ? "hour (UTC)" : "day (UTC)"),
            ticks: { maxRotation: 0, autoSkipPadding: 16 },
          },
          y: { beginAtZero: true, title: axisTitle("count " + unit), ticks: { precision: 0 } },
        },
      },
    });
  }

  function appendDemand(items) {
    const tbody = document.querySelector("#demand-table tbody");
    for (const item of items) {
      state.demandRank += 1;
      const row = document.createElement("tr");
      cell(row, String(state.demandRank), true);
      cell(row, item.sku, false);
      cell(row, item.product_name || "–", false).classList.add("text");
      cell(row, count(item.waiting), true);
      cell(row, dateTime(item.oldest_waiting_since), false).title = item.oldest_waiting_since || "";
      cell(row, count(item.restocks), true);
      cell(row, dateTime(item.last_restock_at), false).title = item.last_restock_at || "";
      tbody.appendChild(row);
    }
    labelCells(document.getElementById("demand-table"));
  }

  async function loadDemand(f) {
    state.demandSegment = f.segment;
    const page = await getJSON("/v1/stats/demand", { limit: DEMAND_PAGE, segment: f.segment });
    document.getElementById("csv-demand").href = csvHref("/v1/stats/demand", {
      segment: f.segment,
    });
    document.querySelector("#demand .segment-scope").textContent = f.segment
      ? "; segment " + f.segment + " only"
      : "";
    const tbody = document.querySelector("#demand-table tbody");
    tbody.replaceChildren();
    state.demandRank = 0;
    if (page.items.length === 0) emptyRow(tbody, 7, "Nobody is waiting for anything.");
    appendDemand(page.items);
    state.demandCursor = page.next_cursor;
    document.getElementById("demand-more").hidden = !page.next_cursor;
    const top = page.items.slice(0, 10);
    draw("chart-demand", {
      type: "bar",
      data: {
        labels: top.map((item) => item.sku),
        datasets: [
          {
            label: "Waiting shoppers",
            data: top.map((item) => Number(item.waiting) || 0),
            backgroundColor: "#7a5cd6",
          },
        ],
      },
      options: {
        indexAxis: "y",
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              title: (items) => {
                const item = top[items[0].dataIndex];
                return item.product_name ? item.sku + " · " + item.product_name : item.sku;
              },
            },
          },
        },
        scales: {
          x: { beginAtZero: true, title: axisTitle("shoppers waiting"), ticks: { precision: 0 } },
        },
      },
    });
  }

  async function loadMoreDemand() {
    if (!state.demandCursor) return;
    const page = await getJSON("/v1/stats/demand", {
      limit: DEMAND_PAGE,
      segment: state.demandSegment,
      cursor: state.demandCursor,
    });
    appendDemand(page.items);
    state.demandCursor = page.next_cursor;
    document.getElementById("demand-more").hidden = !page.next_cursor;
  }

  function appendSegments(items) {
    const tbody = document.querySelector("#segment-table tbody");
    for (const item of items) {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = item.segment === null ? "(no segment)" : item.segment;
      if (item.segment === null) th.className = "none";
      row.appendChild(th);
      for (const key of ["subscribed", "waiting", "notified", "delivered", "clicked", "converted"]) {
        cell(row, count(item[key]), true);
      }
      cell(row, percent(item.click_rate), true);
      cell(row, percent(item.conversion_rate), true);
      cell(row, revenueText(item, state.currency), true).classList.add("money");
      tbody.appendChild(row);
    }
    labelCells(document.getElementById("segment-table"));
  }

  // The segments seen (without a segment filter) are offered in the filter's list.
  function offerSegments(items) {
    const list = document.getElementById("segment-options");
    list.replaceChildren();
    for (const item of items) {
      if (item.segment === null) continue;
      const option = document.createElement("option");
      option.value = item.segment;
      list.appendChild(option);
    }
  }

  async function loadSegments(f) {
    const params = scoped(f);
    state.segmentFilters = params;
    const page = await getJSON("/v1/stats/segments", { ...params, limit: SEGMENT_PAGE });
    document.getElementById("csv-segments").href = csvHref("/v1/stats/segments", params);
    for (const el of document.querySelectorAll("#segments .scope")) el.textContent = describeScope(f);
    for (const el of document.querySelectorAll("#segments .period")) {
      el.textContent = describePeriod(f);
    }
    const tbody = document.querySelector("#segment-table tbody");
    tbody.replaceChildren();
    if (page.items.length === 0) emptyRow(tbody, 10, "No subscriptions in this scope.");
    appendSegments(page.items);
    if (!f.segment) offerSegments(page.items);
    state.segmentCursor = page.next_cursor;
    document.getElementById("segments-more").hidden = !page.next_cursor;
  }

  async function loadMoreSegments() {
    if (!state.segmentCursor) return;
    const page = await getJSON("/v1/stats/segments", {
      ...state.segmentFilters,
      limit: SEGMENT_PAGE,
      cursor: state.segmentCursor,
    });
    appendSegments(page.items);
    state.segmentCursor = page.next_cursor;
    document.getElementById("segments-more").hidden = !page.next_cursor;
  }

  function loadCoupons(funnel) {
    const issued = Number(funnel.coupons_issued) || 0;
    const redeemed = Number(funnel.coupons_redeemed) || 0;
    setFigures(document.getElementById("coupon-figures"), {
      coupons_issued: count(issued),
      coupons_redeemed: count(redeemed),
      redemption_rate: issued ? percent(redeemed / issued) : "–",
    });
    draw("chart-coupons", {
      type: "bar",
      data: {
        labels: ["Issued", "Redeemed"],
        datasets: [
          { label: "Coupons", data: [issued, redeemed], backgroundColor: ["#e8912d", "#2e9d5b"] },
        ],
      },
      options: barOptions("coupons", {}),
    });
  }

  // What shoppers of a sold-out product were sent while they waited, and what it sold.
  function loadSoldOut(funnel) {
    const sent = Number(funnel.substitute_messages_sent) || 0;
    const clicks = Number(funnel.substitute_clicks) || 0;
    const saved = Number(funnel.saved_by_substitute) || 0;
    setFigures(document.getElementById("soldout-figures"), {
      compensations_sent: count(funnel.compensations_sent),
      substitute_messages_sent: count(sent),
      substitute_clicks: count(clicks),
      saved_by_substitute: count(saved),
    });
    draw("chart-soldout", {
      type: "bar",
      data: {
        labels: ["Substitute messages", "Substitute clicks", "Saved by a substitute"],
        datasets: [
          {
            label: "Count",
            data: [sent, clicks, saved],
            backgroundColor: ["#3b6fb6", "#e8912d", "#2e9d5b"],
          },
        ],
      },
      options: barOptions("messages / clicks / order lines", {
        plugins: { legend: { display: false } },
      }),
    });
  }

  // ---- wiring -----------------------------------------------------------------------------

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  // One section's figures; a failure is said in the sections it concerns (and their charts
  // are cleared rather than left showing other filters' figures), never in a blank page.
  async function section(ids, work) {
    const cards = ids.map((id) => document.getElementById(id));
    for (const card of cards) {
      const old = card.querySelector(".card-error");
      if (old) old.remove();
    }
    try {
      await work();
      return true;
    } catch (error) {
      for (const card of cards) {
        for (const canvas of card.querySelectorAll("canvas")) {
          const chart = Chart.getChart(canvas);
          if (chart) chart.destroy();
        }
        const message = document.createElement("p");
        message.className = "card-error";
        message.setAttribute("role", "alert");
        message.textContent = "Could not load these figures: " + error.message;
        card.querySelector(".explain").after(message);
      }
      return false;
    }
  }

  async function run(sections) {
    document.body.dataset.state = "loading";
    setStatus("Loading…", false);
    const loaded = (await Promise.all(sections)).every(Boolean);
    document.body.dataset.state = loaded ? "ready" : "error";
    const time = new Date().toLocaleTimeString();
    if (loaded) setStatus("Updated " + time, false);
    else setStatus("Some figures could not be loaded (" + time + "); see the sections.", true);
  }

  function refresh(notes) {
    const form = document.getElementById("filters");
    showNotice((notes || []).concat(Filters.check(form)));
    Filters.remember(state.interval);
    const f = Filters.current();
    // The overall funnel first: the per-channel and per-segment tables borrow its currency.
    const funnelCards = ["funnel", "coupons", "soldout", "holds"];
    const funnelThenTables = section(funnelCards, () => loadFunnel(f)).then(
      (funnelLoaded) =>
        Promise.all([
          section(["channels"], () => loadChannels(f)),
          section(["segments"], () => loadSegments(f)),
        ]).then((loaded) => funnelLoaded && loaded.every(Boolean)),
    );
    return run([
      funnelThenTables,
      section(["timeseries"], () => loadTimeseries(f)),
      section(["demand"], () => loadDemand(f)),
    ]);
  }

  function start() {
    Chart.defaults.maintainAspectRatio = false;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    if (window.matchMedia("(prefers-reduced-motion: reduce)").matches) {
      Chart.defaults.animation = false;
    }
    const restored = Filters.restore();
    state.interval = restored.interval;
    const form = document.getElementById("filters");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      refresh();
    });
    form.elements.period.addEventListener("change", () => Filters.showCustomDates(form));
    for (const button of document.querySelectorAll("#timeseries [data-interval]")) {
      button.addEventListener("click", () => {
        state.interval = button.dataset.interval;
        Filters.remember(state.interval);
        run([section(["timeseries"], () => loadTimeseries(Filters.current()))]);
      });
    }
    document
      .getElementById("demand-more")
      .addEventListener("click", () => run([section(["demand"], loadMoreDemand)]));
    document
      .getElementById("segments-more")
      .addEventListener("click", () => run([section(["segments"], loadMoreSegments)]));
    refresh(restored.notes);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
