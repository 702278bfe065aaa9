/*! backinstock "notify me" widget 1.0.1. Each <div data-backinstock-sku="…"
 data-backinstock-key="pk_…" data-locale="zh-CN|en"> becomes a button and a small form. */
(() => {
  "use strict";
  const VERSION = "1.0.1";
  const me = document.currentScript;
  const API = me && me.src ? new URL(me.src).origin : location.origin;
  const TEXT = {
    en: {
      open: "Notify me when available",
      by: "Notify me by",
      email: "Email",
      sms: "Text message",
      emailLabel: "Email address",
      smsLabel: "Mobile number",
      emailHint: "name@example.com",
      smsHint: "+44 7700 900123",
      submit: "Notify me",
      cancel: "Cancel",
      note: "We only use it to tell you about this product.",
      sending: "Sending…",
      emailEmpty: "Enter your email address.",
      smsEmpty: "Enter your mobile number.",
      emailBad: "Enter a valid email address, such as name@example.com.",
      smsBad: "Enter a valid mobile number, with its country code if it is not a local one.",
      inbox: "Check your inbox: we sent a link to {c}. Open it to confirm.",
      phone: "Check your phone: we sent a code and a link to {c}. Reply with the code or open the link to confirm.",
      pendingPlace: "Once you confirm, you will be number {n} in line.",
      listed: "You are on the list for {c}: number {n} in line.",
      busy: "Too many attempts. Try again in {t}.",
      seconds: "{n} seconds",
      minutes: "{n} minutes",
      closed: "Alerts are not available on this page at the moment.",
      offline: "We could not reach the server. Check your connection and try again.",
      failed: "Something went wrong. Please try again.",
    },
    zh: {
      open: "到货通知我",
      by: "通知方式",
      email: "邮件",
      sms: "短信",
      emailLabel: "邮箱地址",
      smsLabel: "手机号码",
      emailHint: "name@example.com",
      smsHint: "例如 138 0013 8000",
      submit: "提交",
      cancel: "取消",
      note: "仅用于通知您该商品到货。",
      sending: "正在提交…",
      emailEmpty: "请输入邮箱地址。",
      smsEmpty: "请输入手机号码。",
      emailBad: "请输入有效的邮箱地址，例如 name@example.com。",
      smsBad: "请输入有效的手机号码（非中国大陆号码请加国际区号）。",
      inbox: "请查收邮件：确认链接已发送至 {c}，打开链接即可确认。",
      phone: "请查看短信：验证码和链接已发送至 {c}，回复验证码或打开链接即可确认。",
      pendingPlace: "确认后，您将排在第 {n} 位。",
      listed: "{c} 已在通知名单中，目前排在第 {n} 位。",
      busy: "尝试次数过多，请 {t}后再试。",
      seconds: "{n} 秒",
      minutes: "{n} 分钟",
      closed: "此页面暂时无法订阅到货通知。",
      offline: "无法连接服务器，请检查网络后重试。",
      failed: "出错了，请稍后重试。",
    },
  };
  const CSS = `
:host{display:block;position:relative;font:inherit;color:inherit;
--a:var(--backinstock-accent,#1d2430);--at:var(--backinstock-accent-text,#fff);
--bd:var(--backinstock-border,#767f8c);--bg:var(--backinstock-field-background,#fff);
--ft:var(--backinstock-field-text,#1d2430);--e:var(--backinstock-error,#b42318);
--r:var(--backinstock-radius,6px);--g:var(--backinstock-gap,.6rem)}
:host([hidden]),[hidden]{display:none!important}
*{box-sizing:border-box}
.w{display:grid;gap:var(--g);max-width:var(--backinstock-max-width,24rem)}
button,input{font:inherit;border-radius:var(--r)}
button{cursor:pointer;padding:.55em 1.1em;border:1px solid var(--a);background:var(--a);color:var(--at);font-weight:600}
button.q{background:transparent;color:inherit;border-color:transparent;font-weight:inherit;text-decoration:underline}
button[aria-disabled=true]{opacity:.6;cursor:progress}
:focus-visible{outline:2px solid var(--a);outline-offset:2px}
form{display:grid;gap:var(--g);margin:0}
fieldset{border:0;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.2em 1.2em}
legend{padding:0;margin-bottom:.3em;font-weight:600}
.c{display:flex;gap:.4em;align-items:center}
.f{display:grid;gap:.3em}
label.l{font-weight:600}
input[type=email],input[type=tel]{width:100%;padding:.5em .7em;border:1px solid var(--bd);background:var(--bg);color:var(--ft)}
input[aria-invalid=true]{border-color:var(--e);box-shadow:0 0 0 1px var(--e)}
.e{color:var(--e);margin:0}
.n{margin:0;font-size:.85em;opacity:.8}
.row{display:flex;flex-wrap:wrap;gap:var(--g);align-items:center}
.s{margin:0}.s:empty{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}.s:focus{outline:none}
.s.ok{border-left:3px solid var(--a);padding:.2em 0 .2em .8em}
.s.bad{color:var(--e)}`;
  let sheet;
  const seen = new WeakSet();

  const fill = (text, values) => text.replace(/\{(\w+)\}/g, (_, k) => values[k]);

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === false || v == null) continue;
      if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    el.append(...kids); // strings become text nodes, never markup
    return el;
  }

  function styles(root) {
    if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet) {
      try {
        if (!sheet) {
          sheet = new CSSStyleSheet();
          sheet.replaceSync(CSS);
        }
        root.adoptedStyleSheets = [sheet];
        return;
      } catch (_) {
        /* fall through to a <style> element */
      }
    }
    root.append(h("style", { text: CSS }));
  }

  function localeOf(host) {
    const given = host.dataset.locale || document.documentElement.lang || navigator.language || "en";
    return /^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$/.test(given) && given.length <= 35 ? given : "en";
  }

  function wait(seconds, t) {
    const s = Math.max(1, Number.parseInt(seconds, 10) || 60);
    return s < 60 ? fill(t.seconds, { n: s }) : fill(t.minutes, { n: Math.ceil(s / 60) });
  }

  function mount(host) {
    const sku = host.dataset.backinstockSku;
    const key = host.dataset.backinstockKey;
    if (seen.has(host) || !sku || !key || host.shadowRoot) return;
    seen.add(host);
    const locale = localeOf(host);
    const zh = /^zh/i.test(locale);
    const t = TEXT[zh ? "zh" : "en"];
    const api = (host.dataset.backinstockApi || API).replace(/\/+$/, "");
    const offered = (host.dataset.backinstockChannels || "email,sms")
      .split(",")
      .map((c) => c.trim())
      .filter((c, i, all) => (c === "email" || c === "sms") && all.indexOf(c) === i);
    const channels = offered.length ? offered : ["email"];
    let channel = channels[0];
    let busy = false;

    const root = host.attachShadow({ mode: "open" });
    styles(root);
    const status = h("p", { class: "s", role: "status", "aria-live": "polite", part: "status", tabindex: "-1" });
    const error = h("p", { class: "e", id: "e", part: "error", hidden: true });
    const input = h("input", { id: "i", name: "contact", part: "input", required: true, spellcheck: "false" });
    const label = h("label", { class: "l", for: "i" });
    const submit = h("button", { type: "submit", part: "submit", text: t.submit });
    const toggle = h("button", {
      type: "button",
      part: "button",
      "aria-expanded": "false",
      "aria-controls": "form",
      text: t.open,
      onclick: () => (form.hidden ? open() : close(false)),
    });
    const choices = channels.length > 1
      ? h("fieldset", {}, h("legend", { text: t.by }), ...channels.map((c) =>
          h("label", { class: "c" },
            h("input", { type: "radio", name: "channel", value: c, checked: c === channel, onchange: () => use(c) }),
            t[c])))
      : "";
    const form = h("form", { id: "form", part: "form", novalidate: true, hidden: true, "aria-label": t.open },
      choices,
      h("div", { class: "f" }, label, input, error),
      h("div", { class: "row" }, submit, h("button", { type: "button", class: "q", text: t.cancel, onclick: () => close(true) })),
      h("p", { class: "n", id: "n", text: t.note }));
    root.append(h("div", { class: "w", part: "widget", lang: zh ? "zh-CN" : "en" }, toggle, form, status));

    function use(c) {
      channel = c;
      const email = c === "email";
      label.textContent = t[c + "Label"];
      input.type = email ? "email" : "tel";
      input.autocomplete = email ? "email" : "tel";
      input.inputMode = email ? "email" : "tel";
      input.placeholder = t[c + "Hint"];
      input.value = "";
      fieldError(null);
    }

    function fieldError(text) {
      error.textContent = text || "";
      error.hidden = !text;
      input.setAttribute("aria-invalid", text ? "true" : "false");
      input.setAttribute("aria-describedby", text ? "e n" : "n");
      if (text) input.focus();
    }

    function say(text, tone) {
      status.textContent = text;
      status.className = "s " + (tone || "");
    }

    function open() {
      form.hidden = false;
      toggle.setAttribute("aria-expanded", "true");
      input.focus();
    }

    function close(refocus) {
      form.hidden = true;
      toggle.setAttribute("aria-expanded", "false");
      if (refocus) toggle.focus();
    }

    function done(sub) {
      const c = sub.contact_masked || "";
      let text;
      if (sub.status === "pending") {
        text = fill(channel === "sms" ? t.phone : t.inbox, { c });
        if (sub.position) text += (zh ? "" : " ") + fill(t.pendingPlace, { n: sub.position });
      } else {
        text = fill(t.listed, { c, n: sub.position || 1 });
      }
      form.hidden = true;
      toggle.hidden = true;
      say(text, "ok");
      status.focus();
      host.dispatchEvent(new CustomEvent("backinstock:subscribed", {
        bubbles: true,
        detail: { id: sub.id, sku: sub.sku, status: sub.status, position: sub.position },
      }));
    }

    function failed(response, body) {
      const problem = (body && body.error) || {};
      const fields = (problem.details || []).map((d) => d && d.field);
      if (response.status === 422 && fields.includes("contact")) {
        fieldError(t[channel + "Bad"]);
      } else if (response.status === 429) {
        say(fill(t.busy, { t: wait(response.headers.get("Retry-After"), t) }), "bad");
      } else {
        if (response.status < 500 && window.console) {
          console.warn("backinstock:", response.status, problem.code || "", problem.message || "");
        }
        say(response.status >= 500 ? t.failed : t.closed, "bad");
      }
    }

    async function send(body) {
      return fetch(api + "/v1/subscriptions", {
        method: "POST",
        mode: "cors",
        credentials: "omit",
        headers: { Authorization: "Bearer " + key, "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    }

    form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close(true);
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (busy) return;
      const contact = input.value.trim();
      if (!contact) return fieldError(t[channel + "Empty"]);
      fieldError(null);
      busy = true;
      submit.setAttribute("aria-disabled", "true");
      form.setAttribute("aria-busy", "true");
      say(t.sending);
      const body = { sku, channel, contact, locale, source: host.dataset.backinstockSource || "widget" };
      const name = host.dataset.backinstockProductName;
      const url = host.dataset.backinstockProductUrl;
      if (name || url) body.product = Object.assign(name ? { name } : {}, url ? { url } : {});
      try {
        body.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone || undefined;
      } catch (_) {
        /* no time zone: the service's default applies */
      }
      try {
        let response = await send(body);
        let answer = await response.json().catch(() => null);
        const bad = answer && answer.error && answer.error.details;
        if (response.status === 422 && body.timezone && bad && bad.every((d) => d.field === "timezone")) {
          delete body.timezone; // a zone the service does not know: its default applies
          response = await send(body);
          answer = await response.json().catch(() => null);
        }
        if (response.ok && answer) done(answer);
        else failed(response, answer);
      } catch (_) {
        say(t.offline, "bad");
      } finally {
        busy = false;
        submit.removeAttribute("aria-disabled");
        form.removeAttribute("aria-busy");
        if (status.textContent === t.sending) say("");
      }
    });
    use(channel);
  }

  function scan(within) {
    (within || document).querySelectorAll("[data-backinstock-sku]").forEach(mount);
  }

  let queued = false;
  function start() {
    scan();
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      queueMicrotask(() => {
        queued = false;
        scan();
      });
    }).observe(document.documentElement, { childList: true, subtree: true });
  }

  window.backinstock = Object.freeze({ version: VERSION, mount: scan });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
