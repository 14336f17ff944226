// The customer portal (SPEC §11): one small module, no framework, no build.
// The token arrives in the URL fragment, is moved to sessionStorage (this
// tab only) and the fragment is cleared; it is sent only as a bearer token.

const TOKEN_KEY = "mechanica-portal-token";
const state = { token: null, caps: [], expiresAt: null, catalog: null };
const main = document.getElementById("main");

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}
class Stop extends Error {}

// ---------- helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const can = (cap) => state.caps.includes(cap);
const when = (t) => (t ? new Date(t).toLocaleString() : "—");
const ago = (t) => {
  if (!t) return "never";
  const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
};

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 2500);
}

function confirmAction(title, text, ok) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

function statusPill(status) {
  const kind = { succeeded: "ok", failed: "bad", pending: "wait" }[status] || "wait";
  return h("span", { class: `pill ${kind}` }, status);
}

function show(title, ...content) {
  main.replaceChildren(...content.flat().filter(Boolean));
  document.title = `${title} · Webhooks · Mechanica`;
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

function banner(error) {
  return h("div", { class: "error-banner", role: "alert" }, error.message);
}

// ---------- the API ----------

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { title: "The server could not be reached. Check your connection and try again." });
  }
  const caps = res.headers.get("portal-capabilities");
  if (caps !== null) state.caps = caps.split(",").map((s) => s.trim()).filter(Boolean);
  const expires = res.headers.get("portal-expires-at");
  if (expires) state.expiresAt = expires;
  if (res.status === 401) {
    expired();
    throw new Stop();
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      // Not the API's answer: a proxy or gateway in between answered (an
      // HTML error page, say). Say so rather than show a parser's message.
      throw new ApiError(res.status, {
        title: `The server answered ${res.status} ${res.statusText} with a page that is not from the API (a proxy or gateway on the way?). Try again in a moment.`,
      });
    }
  }
  if (!res.ok) throw new ApiError(res.status, data || {});
  return data;
}

async function catalog() {
  if (!state.catalog) state.catalog = (await api("GET", "/v1/event-types")).data;
  return state.catalog;
}

// ---------- screens ----------

function expired() {
  sessionStorage.removeItem(TOKEN_KEY);
  document.querySelector("nav").hidden = true;
  show(
    "Link expired",
    h("div", { class: "card center" },
      h("h1", {}, "This portal link has expired"),
      h("p", { class: "muted" }, "Portal links work for a limited time, and can be ended early. Ask the person who sent it for a new link.")),
  );
}

async function endpointsScreen() {
  // The catalog is fetched beside the list: the create form needs it next.
  const [page] = await Promise.all([api("GET", "/v1/webhooks?limit=100"), catalog()]);
  const rows = page.data.map((e) => {
    const rate = h("td", { "data-label": "Success, 24 h" }, "…");
    const last = h("td", { "data-label": "Last delivery" }, "…");
    stats(e.id).then(
      (s) => {
        rate.textContent = s.rate;
        last.textContent = s.last;
      },
      () => {
        rate.textContent = last.textContent = "—";
      },
    );
    return h("tr", {},
      h("td", { class: "url" }, h("a", { href: `#/endpoints/${e.id}` }, e.url),
        e.description ? h("div", { class: "muted small" }, e.description) : null),
      h("td", {}, e.enabled
        ? h("span", { class: "pill ok" }, "Enabled")
        : h("span", { class: "pill bad", title: e.disabled_reason || "" }, "Disabled"),
        !e.enabled && e.disabled_reason ? h("div", { class: "muted small" }, e.disabled_reason) : null),
      rate,
      last);
  });
  show(
    "Endpoints",
    h("div", { class: "head" },
      h("h1", {}, "Endpoints"),
      can("endpoints:write") ? h("a", { class: "button", href: "#/new", id: "add-endpoint" }, "Add endpoint") : null),
    h("p", { class: "muted" }, "Where your webhooks go. Every delivery is signed the Standard Webhooks way."),
    page.data.length === 0
      ? h("div", { class: "card center" }, h("p", {}, "No endpoints yet."),
        can("endpoints:write") ? h("a", { class: "button", href: "#/new" }, "Add your first endpoint") : null)
      : h("div", { class: "card" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", {}, "URL"), h("th", {}, "State"),
          h("th", {}, "Success, 24 h"), h("th", {}, "Last delivery"))),
        h("tbody", {}, rows))),
  );
}

/// The success rate of the last 24 hours (of its latest 100 deliveries) and the last delivery.
async function stats(id) {
  const page = await api("GET", `/v1/webhooks/${id}/deliveries?limit=100`);
  const since = Date.now() - 86400000;
  const recent = page.data.filter((d) => new Date(d.created_at).getTime() >= since && d.status !== "pending");
  const ok = recent.filter((d) => d.status === "succeeded").length;
  return {
    rate: recent.length ? `${Math.round((100 * ok) / recent.length)}%` : "no deliveries",
    last: page.data.length ? `${ago(page.data[0].updated_at)} · ${page.data[0].status}` : "never",
  };
}

async function formScreen(id) {
  const [endpoint, types] = await Promise.all([id ? api("GET", `/v1/webhooks/${id}`) : null, catalog()]);
  const title = endpoint ? "Edit endpoint" : "Add endpoint";
  const errors = {};
  const field = (name, labelText, input, hint) => {
    errors[name] = h("p", { class: "field-error", id: `e-${name}`, hidden: true });
    input.setAttribute("aria-describedby", `e-${name}${hint ? ` h-${name}` : ""}`);
    return h("div", {}, h("label", { for: input.id }, labelText), input,
      hint ? h("p", { class: "hint", id: `h-${name}` }, hint) : null, errors[name]);
  };
  const url = h("input", { id: "f-url", type: "url", required: true, value: endpoint?.url || "", placeholder: "https://example.com/webhooks", autocomplete: "off" });
  const description = h("input", { id: "f-description", type: "text", value: endpoint?.description || "", maxlength: 500 });
  const rate = h("input", { id: "f-rate", type: "number", min: 1, max: 10000, value: endpoint?.rate_limit_per_second ?? "" });
  // An endpoint that took the default lists every order type: shown as
  // none ticked, so that it keeps getting order types added later.
  const orderTypes = types.filter((t) => t.subscribable && t.default);
  const listed = new Set(endpoint?.event_types || []);
  const tookDefault = !endpoint || orderTypes.every((t) => listed.has(t.type));
  const typeBox = (t) => h("label", { class: "inline", title: t.description },
    h("input", { type: "checkbox", name: "event_types", value: t.type,
      checked: listed.has(t.type) && !(t.default && tookDefault) }), t.type);
  const orderBoxes = orderTypes.map(typeBox);
  const newsBoxes = types.filter((t) => t.subscribable && !t.default).map(typeBox);
  errors.event_types = h("p", { class: "field-error", id: "e-event_types", hidden: true });
  // No change ever moves an order to pending: not offered.
  const statusNames = (types.find((t) => t.type === "order.status_changed")?.schema?.$defs?.status?.enum || [])
    .filter((s) => s !== "pending");
  const statusChosen = new Set(endpoint?.statuses || []);
  const statusBoxes = statusNames.map((s) => h("label", { class: "inline" },
    h("input", { type: "checkbox", name: "statuses", value: s, checked: statusChosen.has(s) }), s.replaceAll("_", " ")));
  errors.statuses = h("p", { class: "field-error", id: "e-statuses", hidden: true });
  const headerRows = h("div", { id: "f-headers" });
  const addHeader = (name = "", value = "") => {
    const n = headerRows.children.length;
    const row = h("div", { class: "header-row" },
      h("div", {}, h("label", { for: `f-hname-${n}`, class: "small" }, "Header name"),
        h("input", { id: `f-hname-${n}`, type: "text", value: name, class: "hname", placeholder: "X-Partner-Id" })),
      h("div", {}, h("label", { for: `f-hvalue-${n}`, class: "small" }, "Value"),
        h("input", { id: `f-hvalue-${n}`, type: "text", value, class: "hvalue" })),
      h("div", {}, h("label", { class: "small", "aria-hidden": "true" }, "\u00a0"),
        h("button", { type: "button", class: "secondary", "aria-label": `Remove header ${n + 1}`, onclick: () => row.remove() }, "Remove")),
      h("p", { class: "field-error", hidden: true }));
    headerRows.append(row);
  };
  for (const [n, v] of Object.entries(endpoint?.headers || {})) addHeader(n, v);
  errors.headers = h("p", { class: "field-error", id: "e-headers", hidden: true });
  const status = h("div", { role: "alert" });
  const form = h("form", { class: "card", novalidate: true },
    status,
    field("url", "URL", url, "https, public; where each event is POSTed."),
    field("description", "Description (optional)", description),
    h("fieldset", { id: "f-event-types" }, h("legend", {}, h("b", {}, "Order events")),
      h("p", { class: "hint" }, "None chosen: every order event, including kinds added later."), orderBoxes,
      h("p", { class: "hint" }, "News about your webhooks, sent to this endpoint about your other ones, only when chosen:"), newsBoxes,
      errors.event_types),
    h("fieldset", { id: "f-statuses" }, h("legend", {}, h("b", {}, "Status changes to")),
      h("p", { class: "hint" }, "Only these new statuses' order.status_changed events. None chosen: every status."), statusBoxes,
      errors.statuses),
    field("rate_limit_per_second", "Rate limit (deliveries per second, optional)", rate, "1 to 10000; empty: as fast as possible."),
    h("div", { class: "block" }, h("b", {}, "Custom headers"), h("p", { class: "hint" }, "Sent with every delivery; up to 10."),
      headerRows, errors.headers,
      h("button", { type: "button", class: "secondary", id: "add-header", onclick: () => addHeader() }, "Add header")),
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "save" }, endpoint ? "Save changes" : "Create endpoint"),
      h("a", { class: "button secondary", href: endpoint ? `#/endpoints/${endpoint.id}` : "#/" }, "Cancel")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const e of form.querySelectorAll(".field-error")) e.hidden = true;
    for (const e of form.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
    status.replaceChildren();
    const headers = {};
    for (const row of headerRows.children) {
      const name = row.querySelector(".hname").value.trim();
      if (name) headers[name] = row.querySelector(".hvalue").value;
    }
    const body = {
      url: url.value.trim(),
      description: description.value.trim() || null,
      event_types: [...form.querySelectorAll("input[name=event_types]:checked")].map((b) => b.value),
      statuses: [...form.querySelectorAll("input[name=statuses]:checked")].map((b) => b.value),
      rate_limit_per_second: rate.value === "" ? null : Number(rate.value),
      headers,
    };
    // Only news chosen: every order event as well, as when none is chosen.
    if (body.event_types.length && body.event_types.every((t) => !orderTypes.some((o) => o.type === t))) {
      body.event_types.push(...orderTypes.map((t) => t.type));
    }
    if (!body.statuses.length) body.statuses = null;
    try {
      let saved;
      if (endpoint) saved = await api("PATCH", `/v1/webhooks/${endpoint.id}`, body);
      else {
        if (body.description === null) delete body.description;
        if (body.rate_limit_per_second === null) delete body.rate_limit_per_second;
        if (body.statuses === null) delete body.statuses;
        saved = await api("POST", "/v1/webhooks", body);
      }
      toast(endpoint ? "Endpoint saved" : "Endpoint created");
      location.hash = `#/endpoints/${saved.id}`;
    } catch (error) {
      if (error instanceof Stop) return;
      const fields = error.problem?.errors || [];
      for (const { field: name, message } of fields) {
        if (name.startsWith("headers.")) {
          const header = name.slice("headers.".length);
          const row = [...headerRows.children].find((r) => r.querySelector(".hname").value.trim() === header);
          const slot = row ? row.querySelector(".field-error") : errors.headers;
          slot.textContent = message;
          slot.hidden = false;
          row?.querySelector(".hname").setAttribute("aria-invalid", "true");
        } else if (errors[name]) {
          errors[name].textContent = message;
          errors[name].hidden = false;
          form.querySelector(`[aria-describedby^="e-${name}"]`)?.setAttribute("aria-invalid", "true");
        }
      }
      status.replaceChildren(banner(fields.length ? new Error("Please correct the fields marked below.") : error));
      (form.querySelector("[aria-invalid=true]") || status).focus?.();
    }
  });
  show(title, h("h1", {}, title), form);
}

async function detailScreen(id) {
  const endpoint = await api("GET", `/v1/webhooks/${id}`);
  const secretBox = h("div", { id: "secret-box" });
  const act = async (label, fn) => {
    try {
      await fn();
    } catch (error) {
      if (!(error instanceof Stop)) toast(`${label}: ${error.message}`);
    }
  };
  const actions = h("div", { class: "actions" },
    can("endpoints:write") ? h("a", { class: "button secondary", href: `#/endpoints/${id}/edit`, id: "edit" }, "Edit") : null,
    can("endpoints:write") ? h("button", { class: "secondary", id: "toggle", onclick: () => act("Update", async () => {
      await api("PATCH", `/v1/webhooks/${id}`, { enabled: !endpoint.enabled });
      toast(endpoint.enabled ? "Endpoint disabled" : "Endpoint enabled");
      route();
    }) }, endpoint.enabled ? "Disable" : "Enable") : null,
    can("endpoints:write") ? h("button", { class: "secondary", id: "send-test", onclick: () => act("Test event", async () => {
      await api("POST", `/v1/webhooks/${id}/test`, {});
      toast("Test event sent");
      deliveryLog.poll();
    }) }, "Send test event") : null,
    can("endpoints:write") ? h("button", { class: "danger", id: "delete", onclick: () => act("Delete", async () => {
      if (!(await confirmAction("Delete this endpoint?", `${endpoint.url} will receive nothing more. This cannot be undone.`, "Delete endpoint"))) return;
      await api("DELETE", `/v1/webhooks/${id}`);
      toast("Endpoint deleted");
      location.hash = "#/";
    }) }, "Delete") : null);

  const secretActions = h("div", { class: "actions" },
    can("secrets:read") ? h("button", { class: "secondary", id: "reveal", onclick: () => act("Secret", async () => {
      showSecret((await api("GET", `/v1/webhooks/${id}/secret`)).secret);
    }) }, "Reveal secret") : null,
    can("secrets:rotate") ? h("button", { class: "secondary", id: "rotate", onclick: () => act("Rotate", async () => {
      if (!(await confirmAction("Rotate the signing secret?", "A new secret signs from now on; the current one keeps signing beside it for 24 hours so you can switch over.", "Rotate"))) return;
      showSecret((await api("POST", `/v1/webhooks/${id}/secret/rotate`, {})).secret);
      toast("Secret rotated");
    }) }, "Rotate secret") : null);
  const showSecret = (secret) => {
    secretBox.replaceChildren(
      h("p", { class: "secret", id: "secret-value" }, secret),
      h("button", { class: "secondary", id: "copy", onclick: async () => {
        try {
          await navigator.clipboard.writeText(secret);
          toast("Copied");
        } catch {
          toast("Select the secret and copy it");
        }
      } }, "Copy"));
  };

  const since = h("input", { id: "recover-since", type: "datetime-local" });
  const recoverStatus = h("p", { class: "muted", role: "status" });
  const recover = can("deliveries:retry") ? h("form", { class: "card", id: "recover", onsubmit: (event) => {
    event.preventDefault();
    act("Recover", async () => {
      if (!since.value) {
        recoverStatus.textContent = "Choose a time.";
        return;
      }
      const body = { since: new Date(since.value).toISOString() };
      try {
        const r = await api("POST", `/v1/webhooks/${id}/recover`, body);
        recoverStatus.textContent = `${r.deliveries} failed ${r.deliveries === 1 ? "delivery" : "deliveries"} will be sent again.`;
        deliveryLog.poll();
      } catch (error) {
        if (error instanceof Stop) throw error;
        recoverStatus.textContent = error.problem?.errors?.[0]?.message || error.message;
      }
    });
  } },
  h("h2", {}, "Recover failed deliveries"),
  h("p", { class: "muted small" }, "Sends every failed delivery since this time again, in order, at the endpoint's pace (at most 14 days back)."),
  h("label", { for: "recover-since" }, "Failed since"), since,
  h("div", { class: "actions" }, h("button", { type: "submit", id: "recover-submit" }, "Recover")), recoverStatus) : null;

  const deliveryLog = logCard(id);
  const headerNames = Object.keys(endpoint.headers || {});
  show(
    endpoint.url,
    h("p", {}, h("a", { href: "#/" }, "← Endpoints")),
    h("div", { class: "head" }, h("h1", {}, endpoint.url),
      endpoint.enabled ? h("span", { class: "pill ok" }, "Enabled") : h("span", { class: "pill bad" }, "Disabled")),
    !endpoint.enabled && endpoint.disabled_reason ? h("p", { class: "notice" }, `Disabled: ${endpoint.disabled_reason}`) : null,
    actions,
    h("div", { class: "grid" },
      h("div", { class: "card stat" }, h("span", { class: "muted small" }, "Event types"), h("b", { id: "event-types" }, endpoint.event_types.join(", "))),
      h("div", { class: "card stat" }, h("span", { class: "muted small" }, "Status changes to"), h("b", { id: "statuses" }, endpoint.statuses ? endpoint.statuses.join(", ").replaceAll("_", " ") : "every status")),
      h("div", { class: "card stat" }, h("span", { class: "muted small" }, "Rate limit"), h("b", {}, endpoint.rate_limit_per_second ? `${endpoint.rate_limit_per_second}/s` : "none")),
      h("div", { class: "card stat" }, h("span", { class: "muted small" }, "Custom headers"), h("b", {}, headerNames.length ? headerNames.join(", ") : "none"))),
    endpoint.description ? h("p", { class: "muted" }, endpoint.description) : null,
    can("secrets:read") || can("secrets:rotate")
      ? h("div", { class: "card" }, h("h2", {}, "Signing secret"),
        h("p", { class: "muted small" }, "Verify each delivery's webhook-signature header with it."), secretBox, secretActions)
      : null,
    recover,
    deliveryLog.card,
  );
  await deliveryLog.load();
}

function logCard(id) {
  const filter = h("select", { id: "log-filter" },
    h("option", { value: "" }, "All"), h("option", { value: "pending" }, "Pending"),
    h("option", { value: "succeeded" }, "Succeeded"), h("option", { value: "failed" }, "Failed"));
  const body = h("tbody", { id: "log" });
  const more = h("button", { class: "secondary", id: "next-page", hidden: true }, "Next page");
  const refresh = h("button", { class: "secondary", id: "refresh" }, "Refresh");
  let cursor = null;
  const load = async (append = false) => {
    const query = new URLSearchParams({ limit: "20" });
    if (filter.value) query.set("status", filter.value);
    if (append && cursor) query.set("cursor", cursor);
    const page = await api("GET", `/v1/webhooks/${id}/deliveries?${query}`);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    const rows = page.data.flatMap((d) => deliveryRows(id, d, () => load()));
    if (append) body.append(...rows);
    else body.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No deliveries yet."))]));
  };
  const poll = () => {
    let n = 0;
    const tick = async () => {
      await load().catch(() => {});
      if (++n < 8 && body.querySelector(".pill.wait")) setTimeout(tick, 1000);
    };
    setTimeout(tick, 500);
  };
  filter.addEventListener("change", () => load());
  more.addEventListener("click", () => load(true));
  refresh.addEventListener("click", () => load());
  const card = h("div", { class: "card" },
    h("div", { class: "head" }, h("h2", {}, "Delivery log"),
      h("div", { class: "actions" }, h("label", { for: "log-filter", class: "inline" }, "Status"), filter, refresh)),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Event"), h("th", {}, "Status"), h("th", {}, "Attempts"),
      h("th", { class: "hide-narrow" }, "Response"), h("th", {}, "Updated"), h("th", {}, h("span", { class: "hide-narrow" }, "Actions")))), body),
    h("div", { class: "actions" }, more));
  return { card, load, poll };
}

function deliveryRows(endpointId, d, reload) {
  const attemptsRow = h("tr", { hidden: true }, h("td", { colspan: 6 }));
  const toggle = h("button", { class: "secondary", "aria-expanded": "false", onclick: async () => {
    const open = toggle.getAttribute("aria-expanded") === "true";
    toggle.setAttribute("aria-expanded", String(!open));
    attemptsRow.hidden = open;
    if (!open) {
      const page = await api("GET", `/v1/webhooks/${endpointId}/deliveries/${d.id}/attempts?limit=100`);
      attemptsRow.firstChild.replaceChildren(h("table", { class: "attempts" },
        h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Time"), h("th", {}, "Duration"), h("th", {}, "Status"), h("th", {}, "Response or error"))),
        h("tbody", {}, page.data.map((a) => h("tr", {},
          h("td", {}, a.attempt), h("td", {}, when(a.started_at)), h("td", {}, `${a.duration_ms} ms`),
          h("td", {}, a.response_status ?? "—"),
          h("td", { class: "url" }, [a.response_body?.slice(0, 300), a.error].filter(Boolean).join(" · ") || "(empty body)"))))));
    }
  } }, "Attempts");
  const retry = can("deliveries:retry") ? h("button", { class: "secondary", onclick: async () => {
    try {
      await api("POST", `/v1/webhooks/${endpointId}/deliveries/${d.id}/retry`, {});
      toast("Retry queued");
      setTimeout(reload, 1200);
    } catch (error) {
      if (!(error instanceof Stop)) toast(error.message);
    }
  } }, "Retry") : null;
  const about = d.order_id ? `order ${d.order_id.slice(0, 8)}… · #${d.sequence}`
    : d.event_type === "webhook.test" ? "test event" : "news about your other endpoints";
  const event = h("td", {}, h("b", {}, d.event_type), h("div", { class: "muted small" }, about));
  return [
    h("tr", { "data-delivery": d.id }, event, h("td", {}, statusPill(d.status)),
      h("td", { "data-label": "Attempts" }, d.attempts),
      h("td", { class: "hide-narrow" }, d.last_response_status ?? (d.last_error ? "error" : "—")),
      h("td", { "data-label": "Updated" }, ago(d.updated_at)), h("td", {}, h("div", { class: "actions" }, toggle, retry))),
    attemptsRow,
  ];
}

async function catalogScreen() {
  const types = await catalog();
  show("Event catalog",
    h("h1", {}, "Event catalog"),
    h("p", { class: "muted" }, "Every event type, its JSON Schema and an example body."),
    types.map((t) => h("div", { class: "card" },
      h("h2", {}, t.type, t.subscribable ? null : h("span", { class: "muted small" }, " · sent on request")),
      h("p", {}, t.description),
      h("details", {}, h("summary", {}, "Example"), h("pre", {}, JSON.stringify(t.example, null, 2))),
      h("details", {}, h("summary", {}, "Schema"), h("pre", {}, JSON.stringify(t.schema, null, 2))))));
}

// ---------- routing ----------

async function route() {
  const path = location.hash.replace(/^#/, "") || "/";
  for (const a of document.querySelectorAll("nav a")) {
    const current = (a.id === "nav-catalog") === path.startsWith("/catalog");
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    let m;
    if (path === "/catalog") await catalogScreen();
    else if (path === "/new") {
      if (!can("endpoints:write")) await endpointsScreen();
      else await formScreen(null);
    } else if ((m = path.match(/^\/endpoints\/([0-9a-f-]{36})\/edit$/))) await formScreen(m[1]);
    else if ((m = path.match(/^\/endpoints\/([0-9a-f-]{36})$/))) await detailScreen(m[1]);
    else await endpointsScreen();
  } catch (error) {
    if (error instanceof Stop) return;
    show("Error", h("h1", {}, "Something went wrong"), banner(error), h("a", { href: "#/" }, "Back to endpoints"));
  }
}

function start() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", `${location.pathname}#/`);
  }
  state.token = sessionStorage.getItem(TOKEN_KEY);
  if (!state.token) {
    expired();
    return;
  }
  window.addEventListener("hashchange", route);
  route();
}

start();
