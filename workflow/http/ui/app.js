// The aioworkflow web UI: one ES module, no framework, no build step, nothing fetched from
// anywhere but this server. It calls the JSON API with the bearer token typed into the sign-in
// form, kept in this tab's sessionStorage (no cookie: nothing a browser sends on its own).
//
// The one rule that keeps it safe: everything the API returns is data. It reaches the page
// through textContent, text nodes and setAttribute on attributes that run nothing; never
// innerHTML, insertAdjacentHTML, document.write or eval. The only links are built here, from
// encodeURIComponent'ed ids. The server's Content-Security-Policy (default-src 'self', no
// inline script) is the second line of defence.

const TOKEN_KEY = "aioworkflow.token";
const API_BASE = new URL("../", document.baseURI); // the page is <prefix>/ui/
const SVG_NS = "http://www.w3.org/2000/svg";

const RUN_STATES = [
  ["initiated", "Initiated"],
  ["running", "Running"],
  ["paused", "Paused"],
  ["completed", "Completed"],
  ["cancelled", "Cancelled"],
  ["requested_data_deleted", "Requested data deleted"],
  ["data_deleted", "Data deleted"],
];
const PAUSED_BY = ["retries exhausted", "non-retryable", "compensation failed", "step", "operator"];
const PAGE_SIZES = [10, 25, 50, 100];

// What each action needs, mirroring the run-state machine (the server decides; this only
// greys out what would certainly be refused).
const ACTIONS = {
  pause: {
    label: "Pause",
    from: ["Initiated", "Running"],
    title: "Pause this run?",
    text: "The run stops where it is until someone resumes it.",
    reason: true,
    danger: false,
    done: "Paused",
  },
  resume: {
    label: "Resume",
    from: ["Paused"],
    title: "Resume this run?",
    text: "The run goes back to its status and its step runs again (a run paused by exhausted retries starts a fresh set of attempts).",
    reason: false,
    danger: false,
    done: "Resumed",
  },
  cancel: {
    label: "Cancel run",
    from: ["Initiated", "Running", "Paused"],
    title: "Cancel this run?",
    text: "A cancelled run never moves again, and its children are cancelled too. This cannot be undone.",
    reason: true,
    danger: true,
    done: "Cancelled",
  },
  "delete-data": {
    label: "Delete data",
    from: ["Completed", "Cancelled", "Data Deleted"],
    title: "Delete this run's data?",
    text: "The run's object is erased by the workflow's data deleter (its children's too). This cannot be undone.",
    reason: true,
    danger: true,
    done: "Data deletion requested",
  },
};

const state = { workflows: null, lastList: "#/runs" };
let renderSeq = 0;

// -- DOM helpers: text only ---------------------------------------------------------------

function el(tag, props = {}, ...children) {
  return build(document.createElement(tag), props, children);
}

function svg(tag, props = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

function build(node, props, children) {
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    } else if (key === "text") {
      node.textContent = String(value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // a string becomes a text node
  }
  return node;
}

const $ = (selector, root = document) => root.querySelector(selector);

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`
  );
}

function time(iso) {
  return iso ? el("time", { datetime: iso, title: iso }, when(iso)) : "—";
}

function json(value) {
  if (value === undefined || value === null) return "—";
  return JSON.stringify(value);
}

function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

function runLink(id) {
  return el("a", { href: `#/run/${encodeURIComponent(id)}`, class: "mono", title: id }, shortId(id));
}

function stateBadge(run) {
  const name = run.run_state_name;
  return el(
    "span",
    { class: `badge state-${name.toLowerCase().replace(/ /g, "-")}` },
    name,
    run.paused_by ? el("span", { class: "sub" }, ` · ${run.paused_by}`) : null,
  );
}

function intParam(query, key, fallback, min, max) {
  const n = Number.parseInt(query.get(key) ?? "", 10);
  return Number.isFinite(n) ? Math.min(max, Math.max(min, n)) : fallback;
}

function hashFor(view, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return `#/${view}${s ? `?${s}` : ""}`;
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

// -- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function call(path, { method = "GET", query = {}, body, bearer } = {}) {
  const url = new URL(path, API_BASE);
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${bearer ?? token()}` };
  const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, "network", String(err?.message || err));
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const e = data?.error ?? {};
    throw new ApiError(response.status, e.code || "http", e.message || response.statusText);
  }
  return data;
}

function describe(err) {
  if (!(err instanceof ApiError)) return `Something went wrong in this page: ${err?.message || err}`;
  const m = err.message;
  switch (err.status) {
    case 0:
      return `The server did not answer (${m}).`;
    case 401:
      return `Refused (401): ${m}. Sign in again with a valid token.`;
    case 403:
      return m.includes("'admin'")
        ? `Refused (403): ${m}. This token can only read: actions need a token with the admin scope.`
        : `Refused (403): ${m}.`;
    case 404:
      return `Not found (404): ${m}.`;
    case 409:
      return `Not possible now (409): ${m}.`;
    case 422:
      return `Invalid (422): ${m}.`;
    default:
      return `Error ${err.status} (${err.code}): ${m}.`;
  }
}

async function workflows() {
  if (!state.workflows) {
    const data = await call("api/workflows");
    state.workflows = new Map(data.workflows.map((w) => [w.name, w]));
  }
  return state.workflows;
}

// -- chrome: flash messages, confirmation, sign in/out ------------------------------------

function flash(message, kind = "ok") {
  const box = $("#flash");
  box.replaceChildren(
    el("span", {}, message),
    el("button", { type: "button", class: "quiet close", "aria-label": "Dismiss", onclick: clearFlash }, "×"),
  );
  box.className = kind;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  box.hidden = false;
}

function clearFlash() {
  const box = $("#flash");
  box.hidden = true;
  box.replaceChildren();
}

function confirmAction({ title, text, button, reason = false, danger = false }) {
  const dialog = $("#confirm");
  const input = $("#confirm-reason");
  const ok = $("#confirm-ok");
  const cancel = $("#confirm-cancel");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-reason-label").hidden = !reason;
  input.hidden = !reason;
  input.value = "";
  ok.textContent = button;
  ok.className = danger ? "danger" : "primary";
  return new Promise((resolve) => {
    const done = (value) => {
      ok.onclick = cancel.onclick = dialog.oncancel = input.onkeydown = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    ok.onclick = () => done({ reason: input.value.trim() });
    cancel.onclick = () => done(null);
    dialog.oncancel = (event) => {
      event.preventDefault();
      done(null);
    };
    input.onkeydown = (event) => {
      if (event.key === "Enter") ok.click();
    };
    dialog.showModal();
    (reason ? input : cancel).focus();
  });
}

function showChrome(signedIn) {
  $("#nav").hidden = !signedIn;
  $("#signout").hidden = !signedIn;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.workflows = null;
  clearFlash();
  showLogin(message);
}

function showLogin(message = "") {
  showChrome(false);
  const input = el("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const error = el("p", { id: "login-error", class: "error", role: "alert" }, message);
  const submit = el("button", { type: "submit", class: "primary" }, "Sign in");
  const form = el(
    "form",
    {
      id: "login",
      class: "login card",
      onsubmit: async (event) => {
        event.preventDefault();
        const t = input.value.trim();
        if (!t) return;
        submit.disabled = true;
        error.textContent = "";
        try {
          const data = await call("api/workflows", { bearer: t });
          sessionStorage.setItem(TOKEN_KEY, t);
          state.workflows = new Map(data.workflows.map((w) => [w.name, w]));
          input.value = "";
          render();
        } catch (err) {
          error.textContent =
            err.status === 401
              ? "This token is not valid (401): check it and try again."
              : err.status === 403
                ? "This token cannot read runs (403): use a token with the read or admin scope."
                : describe(err);
          submit.disabled = false;
          input.select();
        }
      },
    },
    el("h1", {}, "Sign in"),
    el(
      "p",
      { class: "hint" },
      "Paste an API token. A read token shows runs and workflows; an admin token can also " +
        "pause, resume, cancel and delete data. The token stays in this browser tab and is " +
        "sent only to this server.",
    ),
    el("label", { for: "token" }, "Token"),
    input,
    submit,
    error,
  );
  const main = $("#main");
  main.dataset.view = "login";
  main.dataset.hash = location.hash;
  main.replaceChildren(form);
  input.focus();
}

// -- router -----------------------------------------------------------------------------------

function route() {
  const raw = location.hash.replace(/^#/, "") || "/runs";
  const [path, qs = ""] = raw.split("?", 2);
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = ["?"];
  }
  return { parts, query: new URLSearchParams(qs) };
}

async function render() {
  const seq = ++renderSeq;
  const hash = location.hash; // what this rendering shows (#main's data-hash once done)
  if (!token()) {
    showLogin();
    return;
  }
  showChrome(true);
  const { parts, query } = route();
  let view = parts[0] || "runs";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.nav === view || (view === "run" && a.dataset.nav === "runs")) {
      a.setAttribute("aria-current", "page");
    } else a.removeAttribute("aria-current");
  }
  const main = $("#main");
  main.setAttribute("aria-busy", "true");
  let node;
  try {
    if (view === "runs") node = await runsView(query);
    else if (view === "run" && parts[1]) node = await runView(parts[1]);
    else if (view === "dead") node = await deadView(query);
    else if (view === "workflows") node = await workflowsView(parts[1]);
    else node = el("section", { class: "view" }, el("p", {}, "No such page. "), el("a", { href: "#/runs" }, "Runs"));
  } catch (err) {
    if (seq !== renderSeq) return;
    main.removeAttribute("aria-busy");
    if (err instanceof ApiError && err.status === 401) {
      signOut(describe(err));
      return;
    }
    view = "error";
    node = el("section", { class: "view" }, el("p", { class: "error", role: "alert", id: "view-error" }, describe(err)));
  }
  if (seq !== renderSeq) return; // a newer navigation won
  main.removeAttribute("aria-busy");
  main.dataset.view = view;
  main.dataset.hash = hash;
  main.replaceChildren(node);
}

async function guarded(fn) {
  try {
    await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) signOut(describe(err));
    else flash(describe(err), "error");
  }
}

// -- runs ---------------------------------------------------------------------------------------

function select(id, options, value, props = {}) {
  return el(
    "select",
    { id, name: id, ...props },
    options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)),
  );
}

function field(label, control) {
  return el("div", { class: "field" }, el("label", { for: control.id }, label), control);
}

function statusOptions(wfs, workflow) {
  const info = wfs.get(workflow);
  if (!info) return [["", "Any (choose a workflow)"]];
  const inGraph = new Set(info.nodes.map((n) => n.value));
  return [["", "Any"], ...info.statuses.filter((s) => inGraph.has(s.value)).map((s) => [s.name, s.name])];
}

async function runsView(q) {
  const wfs = await workflows();
  const f = {
    workflow: q.get("workflow") || "",
    status: q.get("status") || "",
    run_state: q.get("run_state") || "",
    foreign_id: q.get("foreign_id") || "",
    field: q.get("field") || "",
    value: q.get("value") || "",
    order: q.get("order") === "asc" ? "asc" : "desc",
    limit: intParam(q, "limit", 25, 1, 1000),
    offset: intParam(q, "offset", 0, 0, Number.MAX_SAFE_INTEGER),
  };
  state.lastList = location.hash || "#/runs";
  const query = { ...f };
  if (!f.field || !f.value) {
    delete query.field;
    delete query.value;
  }
  const page = await call("api/runs", { query });

  const workflowSel = select("f-workflow", [["", "All"], ...[...wfs.keys()].map((n) => [n, n])], f.workflow);
  const statusSel = select("f-status", statusOptions(wfs, f.workflow), f.status, { disabled: !f.workflow });
  workflowSel.addEventListener("change", () => {
    statusSel.replaceChildren(...statusOptions(wfs, workflowSel.value).map(([v, l]) => el("option", { value: v }, l)));
    statusSel.disabled = !workflowSel.value;
  });
  const stateSel = select("f-state", [["", "Any"], ...RUN_STATES], f.run_state);
  const foreign = el("input", { id: "f-foreign", type: "search", value: f.foreign_id, placeholder: "exact" });
  const objField = el("input", { id: "f-field", type: "text", value: f.field, placeholder: "customer.tier" });
  const objValue = el("input", { id: "f-value", type: "text", value: f.value, placeholder: "gold" });
  const orderSel = select("f-order", [["desc", "Newest first"], ["asc", "Oldest first"]], f.order);
  const limitSel = select("f-limit", PAGE_SIZES.map((n) => [String(n), String(n)]), String(f.limit));
  const form = el(
    "form",
    {
      id: "filters",
      class: "filters card",
      onsubmit: (event) => {
        event.preventDefault();
        go(
          hashFor("runs", {
            workflow: workflowSel.value,
            status: statusSel.disabled ? "" : statusSel.value,
            run_state: stateSel.value,
            foreign_id: foreign.value.trim(),
            field: objField.value.trim(),
            value: objValue.value.trim(),
            order: orderSel.value === "asc" ? "asc" : "",
            limit: limitSel.value === "25" ? "" : limitSel.value,
          }),
        );
      },
    },
    field("Workflow", workflowSel),
    field("Status", statusSel),
    field("Run state", stateSel),
    field("Foreign id", foreign),
    field("Object field", objField),
    field("equals", objValue),
    field("Order", orderSel),
    field("Per page", limitSel),
    el(
      "div",
      { class: "field buttons" },
      el("button", { type: "submit", class: "primary", id: "apply" }, "Apply"),
      el("a", { href: "#/runs", class: "button quiet", id: "clear" }, "Clear"),
    ),
  );

  const rows = page.runs.map((r) =>
    el(
      "tr",
      { dataset: { runId: r.run_id } },
      el("td", {}, runLink(r.run_id)),
      el("td", {}, r.workflow),
      el("td", { class: "foreign" }, r.foreign_id),
      el("td", {}, r.status_name),
      el("td", {}, stateBadge(r)),
      el("td", { class: "num" }, r.version),
      el("td", {}, time(r.updated_at)),
    ),
  );
  const table = page.runs.length
    ? el(
        "table",
        { id: "runs", class: "grid" },
        el("thead", {}, el("tr", {}, ["Run", "Workflow", "Foreign id", "Status", "Run state", "Version", "Updated"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows),
      )
    : el("p", { id: "runs-empty", class: "empty" }, "No runs match these filters.");

  const here = Object.fromEntries(q.entries());
  const pager = el(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    el(
      "button",
      { type: "button", id: "prev", disabled: f.offset === 0, onclick: () => go(hashFor("runs", { ...here, offset: Math.max(0, f.offset - f.limit) || "" })) },
      "‹ Previous",
    ),
    el(
      "span",
      { id: "page-info" },
      page.runs.length ? `Runs ${f.offset + 1}–${f.offset + page.runs.length}` : `No runs from ${f.offset + 1}`,
    ),
    el(
      "button",
      { type: "button", id: "next", disabled: page.next_offset === null, onclick: () => go(hashFor("runs", { ...here, offset: page.next_offset })) },
      "Next ›",
    ),
  );
  return el(
    "section",
    { class: "view", id: "runs-view" },
    el("div", { class: "heading" }, el("h1", {}, "Runs"), el("button", { type: "button", class: "quiet", onclick: () => render() }, "Refresh")),
    form,
    table,
    pager,
  );
}

// -- one run ---------------------------------------------------------------------------------

function dl(pairs) {
  return el(
    "dl",
    { id: "summary", class: "summary" },
    pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { key: k } }, v)]),
  );
}

async function runView(id) {
  const [run, wfs] = await Promise.all([call(`api/runs/${encodeURIComponent(id)}`), workflows()]);
  const info = wfs.get(run.workflow);

  const banner =
    run.run_state_name === "Paused"
      ? el(
          "div",
          { class: "banner paused", id: "pause-banner", role: "note" },
          el("strong", {}, "Paused"),
          " — ",
          el("span", { id: "paused-by" }, run.paused_by || "no reason recorded"),
          run.reason ? [": ", el("span", { id: "pause-reason" }, run.reason)] : null,
          run.paused_by === "retries exhausted" || run.paused_by === "non-retryable"
            ? el("p", { class: "sub" }, "A dead letter: fix the cause, then resume it.")
            : null,
        )
      : null;

  const actions = el(
    "div",
    { class: "actions", id: "actions" },
    Object.entries(ACTIONS).map(([name, a]) =>
      el(
        "button",
        {
          type: "button",
          class: a.danger ? "danger-outline" : "",
          dataset: { action: name },
          disabled: !a.from.includes(run.run_state_name),
          title: a.from.includes(run.run_state_name) ? a.title : `Only for runs that are ${a.from.join(", ")}`,
          onclick: () => act(run, name),
        },
        a.label,
      ),
    ),
    el("span", { class: "hint" }, "Actions need a token with the admin scope."),
  );

  const parent = run.parent_run_id
    ? el("span", {}, `${run.parent_workflow} `, runLink(run.parent_run_id))
    : undefined;
  const summary = dl([
    ["Run id", el("span", { class: "mono", id: "run-id" }, run.run_id)],
    ["Workflow", el("a", { href: `#/workflows/${encodeURIComponent(run.workflow)}` }, run.workflow)],
    ["Foreign id", el("span", { id: "foreign-id" }, run.foreign_id)],
    ["Status", el("span", { id: "status" }, `${run.status_name} (${run.status})`)],
    ["Run state", stateBadge(run)],
    ["Version", String(run.version)],
    ["Attempt", String(run.attempt)],
    ["Retry at", run.retry_at ? time(run.retry_at) : undefined],
    ["Paused by", run.paused_by || undefined],
    ["Reason", run.reason ? el("span", { id: "reason" }, run.reason) : undefined],
    ["Parent", parent],
    ["Created", time(run.created_at)],
    ["Updated", time(run.updated_at)],
  ]);

  const history = el(
    "ol",
    { id: "history", class: "timeline" },
    run.history.map((v) =>
      el(
        "li",
        { dataset: { version: v.version } },
        el(
          "div",
          { class: "head" },
          el("span", { class: "version" }, `v${v.version}`),
          el("strong", { class: "status" }, v.status_name),
          el("span", { class: `badge state-${v.run_state_name.toLowerCase().replace(/ /g, "-")}` }, v.run_state_name),
          time(v.updated_at),
        ),
        v.reason ? el("p", { class: "reason" }, v.reason) : null,
        v.changes.length
          ? el(
              "table",
              { class: "changes" },
              el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Field"), el("th", { scope: "col" }, "Before"), el("th", { scope: "col" }, "After"))),
              el(
                "tbody",
                {},
                v.changes.map((c) =>
                  el(
                    "tr",
                    { dataset: { path: c.path } },
                    el("td", { class: "mono" }, c.path),
                    el("td", { class: "before" }, json(c.before)),
                    el("td", { class: "after" }, json(c.after)),
                  ),
                ),
              ),
            )
          : el("p", { class: "sub" }, "No change to the object."),
      ),
    ),
  );

  return el(
    "section",
    { class: "view", id: "run-view", dataset: { runId: run.run_id } },
    el(
      "div",
      { class: "heading" },
      el("h1", {}, "Run ", el("span", { class: "mono" }, shortId(run.run_id))),
      el("a", { href: state.lastList, class: "button quiet", id: "back" }, "← Back to the list"),
      el("button", { type: "button", class: "quiet", id: "refresh", onclick: () => render() }, "Refresh"),
    ),
    banner,
    actions,
    el(
      "div",
      { class: "columns" },
      el("div", { class: "card" }, el("h2", {}, "Summary"), summary),
      el("div", { class: "card" }, el("h2", {}, "Object"), el("pre", { id: "object", class: "json" }, JSON.stringify(run.object, null, 2))),
    ),
    el("div", { class: "card" }, el("h2", {}, `History (${run.history.length} version${run.history.length === 1 ? "" : "s"})`), history),
    info
      ? el("div", { class: "card" }, el("h2", {}, `Graph of ${run.workflow}`), drawGraph(info, run.status))
      : null,
  );
}

async function act(run, name) {
  const a = ACTIONS[name];
  const answer = await confirmAction({
    title: a.title,
    text: `${a.text} Run ${run.run_id} (${run.workflow}, foreign id ${run.foreign_id}).`,
    button: a.label,
    reason: a.reason,
    danger: a.danger,
  });
  if (!answer) return;
  await guarded(async () => {
    const body = a.reason && answer.reason ? { reason: answer.reason } : {};
    const after = await call(`api/runs/${encodeURIComponent(run.run_id)}/${name}`, { method: "POST", body });
    await render();
    flash(`${a.done}: the run is ${after.run_state_name} (version ${after.version}).`, "ok");
  });
}

// -- dead letters -------------------------------------------------------------------------------

async function deadView(q) {
  const wfs = await workflows();
  const workflow = q.get("workflow") || "";
  const reason = q.get("paused_by") || "retries exhausted"; // "any": every paused run
  const pausedBy = reason === "any" ? "" : reason;
  const limit = intParam(q, "limit", 50, 1, 1000);
  const offset = intParam(q, "offset", 0, 0, Number.MAX_SAFE_INTEGER);
  state.lastList = location.hash || "#/dead";
  const page = await call("api/runs", {
    query: { run_state: "paused", paused_by: pausedBy, workflow, limit, offset, order: "asc" },
  });

  const workflowSel = select("d-workflow", [["", "All"], ...[...wfs.keys()].map((n) => [n, n])], workflow);
  const reasonSel = select("d-paused-by", [["any", "Any (every paused run)"], ...PAUSED_BY.map((p) => [p, p])], reason);
  const filters = el(
    "form",
    {
      id: "dead-filters",
      class: "filters card",
      onsubmit: (event) => {
        event.preventDefault();
        const by = reasonSel.value === "retries exhausted" ? "" : reasonSel.value;
        go(hashFor("dead", { workflow: workflowSel.value, paused_by: by }));
      },
    },
    field("Workflow", workflowSel),
    field("Paused by", reasonSel),
    el("div", { class: "field buttons" }, el("button", { type: "submit", class: "primary", id: "d-apply" }, "Apply")),
  );

  const picks = page.runs.map((r) => el("input", { type: "checkbox", class: "pick", value: r.run_id, "aria-label": `Select run ${r.run_id}` }));
  const all = el("input", { type: "checkbox", id: "select-all", "aria-label": "Select every run shown" });
  const selectedButton = el("button", { type: "button", id: "resume-selected", class: "primary", disabled: true }, "Resume selected (0)");
  const chosen = () => picks.filter((p) => p.checked).map((p) => p.value);
  const update = () => {
    const n = chosen().length;
    selectedButton.textContent = `Resume selected (${n})`;
    selectedButton.disabled = n === 0;
    all.checked = n > 0 && n === picks.length;
    all.indeterminate = n > 0 && n < picks.length;
  };
  for (const p of picks) p.addEventListener("change", update);
  all.addEventListener("change", () => {
    for (const p of picks) p.checked = all.checked;
    update();
  });
  selectedButton.addEventListener("click", () => resumeSelected(chosen()));

  const bulkLimit = el("input", { id: "resume-limit", type: "number", min: "1", max: "10000", value: "1000" });
  const bulk = el(
    "button",
    {
      type: "button",
      id: "resume-all",
      onclick: () => resumeAll(workflow, pausedBy, Number.parseInt(bulkLimit.value, 10)),
    },
    "Resume all matching…",
  );

  const table = page.runs.length
    ? el(
        "table",
        { id: "dead", class: "grid" },
        el(
          "thead",
          {},
          el("tr", {}, el("th", { scope: "col" }, all), ["Run", "Workflow", "Foreign id", "Status", "Paused by", "Reason", "Attempt", "Paused at"].map((h) => el("th", { scope: "col" }, h))),
        ),
        el(
          "tbody",
          {},
          page.runs.map((r, i) =>
            el(
              "tr",
              { dataset: { runId: r.run_id } },
              el("td", {}, picks[i]),
              el("td", {}, runLink(r.run_id)),
              el("td", {}, r.workflow),
              el("td", { class: "foreign" }, r.foreign_id),
              el("td", {}, r.status_name),
              el("td", {}, r.paused_by),
              el("td", { class: "reason" }, r.reason),
              el("td", { class: "num" }, r.attempt),
              el("td", {}, time(r.updated_at)),
            ),
          ),
        ),
      )
    : el("p", { id: "dead-empty", class: "empty" }, "No paused runs match: nothing to resume.");

  const here = Object.fromEntries(q.entries());
  const pager = el(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    el("button", { type: "button", id: "prev", disabled: offset === 0, onclick: () => go(hashFor("dead", { ...here, offset: Math.max(0, offset - limit) || "" })) }, "‹ Previous"),
    el("span", { id: "page-info" }, page.runs.length ? `Runs ${offset + 1}–${offset + page.runs.length}` : ""),
    el("button", { type: "button", id: "next", disabled: page.next_offset === null, onclick: () => go(hashFor("dead", { ...here, offset: page.next_offset })) }, "Next ›"),
  );

  return el(
    "section",
    { class: "view", id: "dead-view" },
    el("div", { class: "heading" }, el("h1", {}, "Dead letters"), el("button", { type: "button", class: "quiet", onclick: () => render() }, "Refresh")),
    el(
      "p",
      { class: "hint" },
      "Paused runs: a step that used up its retries or failed for good, a saga whose compensation failed. " +
        "Fix the cause, then resume them: each goes back to its status and runs again.",
    ),
    filters,
    el("div", { class: "actions" }, selectedButton, el("span", { class: "sep" }), el("label", { for: "resume-limit" }, "Up to"), bulkLimit, bulk),
    table,
    pager,
  );
}

async function resumeSelected(ids) {
  if (!ids.length) return;
  const answer = await confirmAction({
    title: `Resume ${ids.length} run${ids.length === 1 ? "" : "s"}?`,
    text: "Each run goes back to its status and its step runs again.",
    button: "Resume",
  });
  if (!answer) return;
  const refused = [];
  let resumed = 0;
  for (const id of ids) {
    try {
      await call(`api/runs/${encodeURIComponent(id)}/resume`, { method: "POST", body: {} });
      resumed += 1;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        signOut(describe(err));
        return;
      }
      refused.push(`${shortId(id)}: ${describe(err)}`);
      if (err instanceof ApiError && err.status === 403) break; // the same for every run
    }
  }
  await render();
  const text = `Resumed ${resumed} of ${ids.length} run${ids.length === 1 ? "" : "s"}.`;
  flash(refused.length ? `${text} ${refused.join(" ")}` : text, refused.length ? "error" : "ok");
}

async function resumeAll(workflow, pausedBy, limit) {
  if (!Number.isFinite(limit) || limit < 1 || limit > 10000) {
    flash("The number of runs to resume is between 1 and 10000.", "error");
    return;
  }
  const what = [
    `up to ${limit} paused run${limit === 1 ? "" : "s"}`,
    workflow ? ` of workflow ${workflow}` : " of every workflow",
    pausedBy ? ` paused for “${pausedBy}”` : " whatever paused them (operators' pauses too)",
  ].join("");
  const answer = await confirmAction({
    title: "Resume all matching runs?",
    text: `This resumes ${what}, oldest first, including runs not shown on this page.`,
    button: "Resume all",
    danger: true,
  });
  if (!answer) return;
  await guarded(async () => {
    const body = { limit };
    if (workflow) body.workflow = workflow;
    if (pausedBy) body.paused_by = pausedBy;
    const result = await call("api/runs/resume", { method: "POST", body });
    await render();
    flash(`Resumed ${result.count} run${result.count === 1 ? "" : "s"}.`, "ok");
  });
}

// -- workflows and their graphs -------------------------------------------------------------

async function workflowsView(only) {
  const wfs = await workflows();
  const shown = only ? [wfs.get(only)].filter(Boolean) : [...wfs.values()];
  if (only && !shown.length) throw new ApiError(404, "not_found", `no workflow ${JSON.stringify(only)} is served here`);
  return el(
    "section",
    { class: "view", id: "workflows-view" },
    el("div", { class: "heading" }, el("h1", {}, only ? `Workflow ${only}` : "Workflows"), only ? el("a", { href: "#/workflows", class: "button quiet" }, "All workflows") : null),
    shown.map((w) => {
      const inGraph = new Set(w.nodes.map((n) => n.value));
      const outside = w.statuses.filter((s) => !inGraph.has(s.value));
      return el(
        "article",
        { class: "card workflow", dataset: { workflow: w.name } },
        el(
          "div",
          { class: "heading" },
          el("h2", {}, w.name),
          el("a", { href: hashFor("runs", { workflow: w.name }), class: "button quiet" }, "Runs"),
          el("a", { href: hashFor("dead", { workflow: w.name }), class: "button quiet" }, "Dead letters"),
        ),
        drawGraph(w),
        el(
          "p",
          { class: "sub" },
          `${w.nodes.length} status${w.nodes.length === 1 ? "" : "es"}, ${w.edges.length} arrow${w.edges.length === 1 ? "" : "s"}.`,
          outside.length ? ` Not in the graph: ${outside.map((s) => `${s.name} (${s.value})`).join(", ")}.` : "",
        ),
        el("details", {}, el("summary", {}, "Mermaid text"), el("pre", { class: "mermaid-text" }, w.mermaid)),
      );
    }),
  );
}

// The graph: a layered drawing (Sugiyama-style, small): arrows that close a cycle (found by a
// depth-first search from the start) are turned around for the layout, each status gets the
// layer of its longest path from a source, long arrows get a waypoint in every layer they
// cross, layers are ordered by barycentres (the order with the fewest crossings kept), and
// then drawn left to right. Turned-around arrows are drawn as arcs under the nodes.

let graphSeq = 0;
let measureCtx = null;

function textWidth(text, font) {
  measureCtx ??= document.createElement("canvas").getContext("2d");
  if (!measureCtx) return text.length * 8;
  measureCtx.font = font;
  return measureCtx.measureText(text).width;
}

function layout(nodes, edges) {
  const ids = nodes.map((n) => n.value);
  const known = new Set(ids);
  const list = edges.filter((e) => known.has(e.source) && known.has(e.target));
  const succ = new Map(ids.map((i) => [i, []]));
  for (const e of list) if (e.source !== e.target) succ.get(e.source).push(e.target);

  // 1. arrows closing a cycle
  const start = nodes.find((n) => n.start)?.value ?? ids[0];
  const mark = new Map();
  const back = new Set();
  const visit = (u) => {
    mark.set(u, 1);
    for (const v of succ.get(u)) {
      if (mark.get(v) === 1) back.add(`${u}>${v}`);
      else if (!mark.has(v)) visit(v);
    }
    mark.set(u, 2);
  };
  for (const u of [start, ...ids]) if (!mark.has(u)) visit(u);
  const isBack = (e) => back.has(`${e.source}>${e.target}`);

  // 2. layers: the longest path over the forward arrows
  const forward = list.filter((e) => e.source !== e.target && !isBack(e));
  const indeg = new Map(ids.map((i) => [i, 0]));
  for (const e of forward) indeg.set(e.target, indeg.get(e.target) + 1);
  const rank = new Map(ids.map((i) => [i, 0]));
  const queue = ids.filter((i) => indeg.get(i) === 0);
  while (queue.length) {
    const u = queue.shift();
    for (const e of forward) {
      if (e.source !== u) continue;
      rank.set(e.target, Math.max(rank.get(e.target), rank.get(u) + 1));
      indeg.set(e.target, indeg.get(e.target) - 1);
      if (indeg.get(e.target) === 0) queue.push(e.target);
    }
  }
  const depth = Math.max(0, ...rank.values()) + 1;
  const layers = Array.from({ length: depth }, () => []);
  for (const i of ids) layers[rank.get(i)].push(i);

  // 3. waypoints for long arrows (a turned-around one too); segments between adjacent layers
  const segments = [];
  const routes = [];
  let dummy = 0;
  for (const e of list) {
    if (e.source === e.target) continue;
    const reversed = isBack(e);
    const [from, to] = reversed ? [e.target, e.source] : [e.source, e.target];
    const chain = [from];
    for (let r = rank.get(from) + 1; r < rank.get(to); r++) {
      const d = `d${dummy++}`;
      rank.set(d, r);
      layers[r].push(d);
      chain.push(d);
    }
    chain.push(to);
    for (let k = 0; k + 1 < chain.length; k++) segments.push([chain[k], chain[k + 1]]);
    routes.push({ edge: e, chain: reversed ? chain.reverse() : chain, reversed });
  }

  // 4. order within layers: barycentre sweeps, keeping the order with the fewest crossings
  const crossings = () => {
    const pos = new Map();
    for (const layer of layers) layer.forEach((n, i) => pos.set(n, i));
    let count = 0;
    for (let a = 0; a < segments.length; a++) {
      for (let b = a + 1; b < segments.length; b++) {
        const [u1, v1] = segments[a];
        const [u2, v2] = segments[b];
        if (rank.get(u1) !== rank.get(u2)) continue;
        const du = pos.get(u1) - pos.get(u2);
        const dv = pos.get(v1) - pos.get(v2);
        if (du * dv < 0) count++;
      }
    }
    return count;
  };
  let best = layers.map((l) => [...l]);
  let bestCount = crossings();
  for (let it = 0; it < 8 && bestCount > 0; it++) {
    const down = it % 2 === 0;
    const order = down ? [...Array(depth).keys()].slice(1) : [...Array(depth).keys()].reverse().slice(1);
    for (const r of order) {
      const ref = layers[down ? r - 1 : r + 1];
      const pos = new Map(ref.map((n, i) => [n, i]));
      const bary = new Map();
      layers[r].forEach((n, i) => {
        const near = segments.filter(([u, v]) => (down ? v === n : u === n)).map(([u, v]) => pos.get(down ? u : v));
        bary.set(n, near.length ? near.reduce((s, x) => s + x, 0) / near.length : i);
      });
      layers[r].sort((x, y) => bary.get(x) - bary.get(y));
    }
    const c = crossings();
    if (c < bestCount) {
      bestCount = c;
      best = layers.map((l) => [...l]);
    }
  }
  return { layers: best, rank, routes, loops: list.filter((e) => e.source === e.target) };
}

function drawGraph(info, current) {
  const id = ++graphSeq;
  const FONT = "13px system-ui, sans-serif";
  const LABEL_FONT = "11px system-ui, sans-serif";
  const NODE_H = 34;
  const DUMMY_H = 14;
  const GAP_X = 90;
  const GAP_Y = 26;
  const PAD = 16;
  const START_ROOM = 40;

  const byValue = new Map(info.nodes.map((n) => [n.value, n]));
  const { layers, rank, routes, loops } = layout(info.nodes, info.edges);
  const size = new Map();
  for (const layer of layers) {
    for (const n of layer) {
      const node = byValue.get(n);
      size.set(n, node ? { w: Math.max(72, textWidth(node.name, FONT) + 28), h: NODE_H } : { w: 0, h: DUMMY_H });
    }
  }
  const layerW = layers.map((l) => Math.max(0, ...l.map((n) => size.get(n).w)));
  const layerH = layers.map((l) => l.reduce((s, n) => s + size.get(n).h, 0) + GAP_Y * Math.max(0, l.length - 1));
  const height = Math.max(NODE_H, ...layerH);
  // room for a label between two layers: it sits in the middle of its arrow
  const gap = layers.map(() => GAP_X);
  for (const { edge, chain } of routes) {
    if (!edge.label) continue;
    const mid = Math.floor((chain.length - 1) / 2);
    const r = Math.min(rank.get(chain[mid]), rank.get(chain[mid + 1]));
    gap[r] = Math.max(gap[r], textWidth(edge.label, LABEL_FONT) + 40);
  }
  const pos = new Map();
  let x = PAD + START_ROOM;
  layers.forEach((layer, r) => {
    let y = PAD + (height - layerH[r]) / 2;
    for (const n of layer) {
      const s = size.get(n);
      pos.set(n, { cx: x + layerW[r] / 2, cy: y + s.h / 2, w: s.w, h: s.h });
      y += s.h + GAP_Y;
    }
    x += layerW[r] + gap[r];
  });
  let maxX = x - gap[layers.length - 1] + PAD;
  let maxY = PAD + height + PAD;

  const marker = `arrow-${id}`;
  const edgesG = svg("g", { class: "edges" });
  const labelsG = svg("g", { class: "labels" });
  const nodesG = svg("g", { class: "nodes" });
  const label = (text, lx, ly) => {
    if (!text) return;
    const w = textWidth(text, LABEL_FONT) + 8;
    labelsG.append(
      svg(
        "g",
        { class: "edge-label" },
        svg("rect", { x: lx - w / 2, y: ly - 9, width: w, height: 16, rx: 3 }),
        svg("text", { x: lx, y: ly + 3, "text-anchor": "middle" }, text),
      ),
    );
    maxX = Math.max(maxX, lx + w / 2 + PAD);
    maxY = Math.max(maxY, ly + 16 + PAD);
  };
  const edgeG = (e, d) =>
    svg("path", { d, class: e.label ? "edge saga" : "edge", "marker-end": `url(#${marker})`, dataset: { source: e.source, target: e.target } });

  // an arrow and one back between the same two statuses: drawn apart
  const pairs = new Set(routes.map(({ edge }) => `${edge.source}>${edge.target}`));
  for (const { edge, chain, reversed } of routes) {
    const twin = pairs.has(`${edge.target}>${edge.source}`);
    const dy = twin ? (reversed ? 6 : -6) : reversed ? 4 : 0;
    const side = reversed ? -1 : 1; // leave from the right, arrive on the left; or the other way
    const pts = chain.map((n, k) => {
      const p = pos.get(n);
      if (k === 0) return [p.cx + (side * p.w) / 2, p.cy + dy];
      if (k === chain.length - 1) return [p.cx - side * (p.w / 2 + 2), p.cy + dy];
      return [p.cx, p.cy];
    });
    let d = `M${pts[0][0]},${pts[0][1]}`;
    for (let k = 1; k < pts.length; k++) {
      const [x0, y0] = pts[k - 1];
      const [x1, y1] = pts[k];
      const mx = (x0 + x1) / 2;
      d += ` C${mx},${y0} ${mx},${y1} ${x1},${y1}`;
    }
    edgesG.append(edgeG(edge, d));
    const mid = Math.floor((pts.length - 1) / 2);
    const ly = (pts[mid][1] + pts[mid + 1][1]) / 2 + (reversed ? 14 : 0);
    label(edge.label, (pts[mid][0] + pts[mid + 1][0]) / 2, ly);
  }
  for (const edge of loops) {
    const p = pos.get(edge.source);
    const top = p.cy - p.h / 2;
    edgesG.append(edgeG(edge, `M${p.cx - 10},${top} C${p.cx - 26},${top - 34} ${p.cx + 26},${top - 34} ${p.cx + 10},${top - 2}`));
    label(edge.label, p.cx, top - 30);
  }

  for (const node of info.nodes) {
    const p = pos.get(node.value);
    const classes = ["node"];
    if (node.start) classes.push("start");
    if (node.terminal) classes.push("terminal");
    if (current !== undefined && node.value === current) classes.push("current");
    const what = [node.start ? "start" : "", node.terminal ? "terminal" : "", node.value === current ? "this run is here" : ""].filter(Boolean);
    const g = svg(
      "g",
      { class: classes.join(" "), dataset: { status: node.value, name: node.name } },
      svg("title", {}, `${node.name} (${node.value})${what.length ? ` — ${what.join(", ")}` : ""}`),
      node.terminal ? svg("rect", { class: "outer", x: p.cx - p.w / 2 - 3, y: p.cy - p.h / 2 - 3, width: p.w + 6, height: p.h + 6, rx: 9 }) : null,
      svg("rect", { x: p.cx - p.w / 2, y: p.cy - p.h / 2, width: p.w, height: p.h, rx: 6 }),
      svg("text", { x: p.cx, y: p.cy + 4.5, "text-anchor": "middle" }, node.name),
    );
    nodesG.append(g);
    if (node.start) {
      const sx = p.cx - p.w / 2 - START_ROOM + 8;
      nodesG.append(
        svg("circle", { class: "start-dot", cx: sx, cy: p.cy, r: 6 }),
        svg("path", { class: "edge", d: `M${sx + 6},${p.cy} L${p.cx - p.w / 2 - 2},${p.cy}`, "marker-end": `url(#${marker})` }),
      );
    }
  }

  return svg(
    "svg",
    {
      class: "graph",
      role: "img",
      "aria-label": `Status graph of ${info.name}`,
      viewBox: `0 0 ${Math.ceil(maxX)} ${Math.ceil(maxY)}`,
      width: Math.ceil(maxX),
      height: Math.ceil(maxY),
      dataset: { workflow: info.name },
    },
    svg(
      "defs",
      {},
      svg(
        "marker",
        { id: marker, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
        svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }),
      ),
    ),
    edgesG,
    nodesG,
    labelsG,
  );
}

// -- start ---------------------------------------------------------------------------------------

function start() {
  $("#signout").addEventListener("click", () => {
    signOut("Signed out.");
  });
  window.addEventListener("hashchange", () => {
    clearFlash();
    render();
  });
  render();
}

start();
